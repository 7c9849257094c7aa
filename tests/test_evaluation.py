"""Metric definitions (Microsoft Recommenders) on hand-computed examples."""
import math

import numpy as np
import pandas as pd
import pytest

from wenlv.training import evaluation as ev
from wenlv.training.evaluation_run import mean_interval


def frame(rows, cols=("user", "item")):
    return pd.DataFrame(rows, columns=list(cols))


TRUTH = frame([("u1", "a"), ("u1", "b"), ("u1", "c"), ("u2", "d"), ("u3", "x")])  # u3 has no recs
RECS = frame([("u1", "a", 1), ("u1", "z", 2), ("u1", "b", 3),
              ("u2", "y", 1), ("u2", "z", 2), ("u2", "w", 3)], ("user", "item", "rank"))


def test_precision_recall_over_common_users():
    assert ev.precision_at_k(TRUTH, RECS, 3) == pytest.approx((2 / 3) / 2)
    assert ev.recall_at_k(TRUTH, RECS, 3) == pytest.approx((2 / 3) / 2)
    # k = 1: only u1's first item, a hit
    assert ev.precision_at_k(TRUTH, RECS, 1) == pytest.approx(0.5)
    assert ev.recall_at_k(TRUTH, RECS, 1) == pytest.approx((1 / 3) / 2)


def test_ndcg_binary_gain():
    dcg = 1 / math.log(2) + 1 / math.log(4)
    idcg = 1 / math.log(2) + 1 / math.log(3) + 1 / math.log(4)
    assert ev.ndcg_at_k(TRUTH, RECS, 3) == pytest.approx(dcg / idcg / 2)
    # ideal DCG is cut at k: at k=2 u1 has 1 hit at rank 1, ideal has two hits
    assert ev.ndcg_at_k(TRUTH, RECS, 2) == pytest.approx((1 / math.log(2)) / (1 / math.log(2) + 1 / math.log(3)) / 2)


def test_map_divides_by_min_relevant_k():
    assert ev.map_at_k(TRUTH, RECS, 3) == pytest.approx((1 / 1 + 2 / 3) / 3 / 2)
    assert ev.map_at_k(TRUTH, RECS, 2) == pytest.approx((1 / 1) / 2 / 2)


def test_k_larger_than_recommended_items():
    assert ev.precision_at_k(TRUTH, RECS, 5) == pytest.approx((2 / 5) / 2)  # still divides by k
    assert ev.recall_at_k(TRUTH, RECS, 5) == pytest.approx((2 / 3) / 2)
    assert ev.ndcg_at_k(TRUTH, RECS, 5) == pytest.approx(ev.ndcg_at_k(TRUTH, RECS, 3))
    assert ev.map_at_k(TRUTH, RECS, 5) == pytest.approx((1 + 2 / 3) / 3 / 2)


def test_no_relevant_items_and_no_common_users():
    other = frame([("u9", "a")])
    for fn in (ev.precision_at_k, ev.recall_at_k, ev.ndcg_at_k, ev.map_at_k):
        assert fn(other, RECS, 3) == 0.0
        assert fn(frame([]), RECS, 3) == 0.0
    misses = frame([("u1", "q"), ("u2", "q")])
    assert ev.ndcg_at_k(misses, RECS, 3) == 0.0
    with pytest.raises(ValueError, match="k must be"):
        ev.precision_at_k(TRUTH, RECS, 0)
    with pytest.raises(ValueError, match="rank"):
        ev.precision_at_k(TRUTH, RECS[["user", "item"]], 3)


def test_perfect_ranking_scores_one():
    recs = frame([("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3)], ("user", "item", "rank"))
    truth = TRUTH[TRUTH.user == "u1"]
    for fn in (ev.recall_at_k, ev.ndcg_at_k, ev.map_at_k, ev.precision_at_k):
        assert fn(truth, recs, 3) == pytest.approx(1.0)


def test_coverage_and_novelty():
    train = frame([("u1", "a"), ("u2", "a"), ("u1", "b"), ("u3", "c")])
    recs = frame([("u1", "a", 1), ("u1", "b", 2), ("u2", "a", 1), ("u2", "c", 2)], ("user", "item", "rank"))
    assert ev.catalog_coverage(train, recs) == pytest.approx(1.0)
    assert ev.catalog_coverage(train, recs[recs.item == "a"]) == pytest.approx(1 / 3)
    # novelty: a = -log2(2/4) = 1, b = c = -log2(1/4) = 2 → (1 + 2 + 1 + 2) / 4
    assert ev.novelty(train, recs) == pytest.approx(1.5)


def test_top_k_excludes_seen_items_and_handles_k_beyond_catalog():
    from scipy.sparse import csr_matrix

    scores = np.array([[0.9, 0.5, 0.1], [0.2, 0.8, 0.3]])
    seen = csr_matrix(np.array([[1, 0, 0], [0, 0, 0]]))
    recs = ev.top_k(scores, ["u1", "u2"], ["a", "b", "c"], k=5, exclude=seen)
    assert recs[recs.user == "u1"].item.tolist() == ["b", "c"]
    assert recs[recs.user == "u2"].item.tolist() == ["b", "c", "a"]
    assert recs[recs.user == "u2"]["rank"].tolist() == [1, 2, 3]


def test_popularity_baseline_counts_distinct_users():
    train = frame([("u1", "a"), ("u1", "a"), ("u2", "a"), ("u2", "b")])
    assert ev.popularity_scores(train, ["b", "a", "c"]).tolist() == [1.0, 2.0, 0.0]


def test_audience_precision_and_lift():
    visited = np.array([[1, 0], [1, 0], [0, 0], [0, 1], [0, 0], [0, 0], [0, 0], [0, 0], [0, 0], [0, 0]], bool)
    model = np.array([[9, 0], [8, 0], [0, 0], [0, 9], [0, 0], [0, 0], [0, 0], [0, 0], [0, 0], [0, 0]], float)
    activity = np.arange(10, dtype=float)  # most active users visit nothing
    out = ev.audience_lift(model, activity, visited, ["p1", "p2"], audience_fraction=0.2)
    assert out["audience_size"] == 2
    assert out["audience_precision"] == pytest.approx((1.0 + 0.5) / 2)
    assert out["random_precision"] == pytest.approx((0.2 + 0.1) / 2)
    assert out["popularity_precision"] == 0.0
    assert out["lift_vs_random"] == pytest.approx(0.75 / 0.15)
    assert ev.audience_precision(np.array([3.0, 2.0, 1.0]), np.array([0, 1, 1]), 2) == pytest.approx(0.5)


# ---------------------------------------------------------------- real data: Flickr, tourism party only
def test_flickr_temporal_split_against_popularity(shared_data):
    from wenlv.features.flickr import build
    from wenlv.training.flickr_eval import temporal_split_eval

    tables, _ = build("Osak", shared_data / "flickr")
    grid = {"factors": (2, 8), "alpha": (1.0,), "regularization": (10.0,)}
    out = temporal_split_eval(tables["visits"], grid=grid)
    assert out["chosen"]["factors"] in (2, 8) and out["test_users"] > 10
    assert out["train_visits"] > 3 * out["test_visits"] > 0
    for name in ("als_ndcg@10", "popularity_ndcg@10", "als_new_ndcg@10", "popularity_recall@10"):
        assert 0.0 < out[name] <= 1.0
    assert out["als_ndcg@10"] != out["popularity_ndcg@10"]
    with pytest.raises(Exception, match="test_fraction"):
        temporal_split_eval(tables["visits"], test_fraction=1.5)


def test_per_user_ndcg_recall_average_to_the_metrics_and_get_an_interval():
    per_user = ev.per_user_ndcg_recall(TRUTH, RECS, k=3)
    assert sorted(per_user.index) == ["u1", "u2"]  # common users only, as the means count them
    assert per_user["ndcg"].mean() == pytest.approx(ev.ndcg_at_k(TRUTH, RECS, 3))
    assert per_user["recall"].mean() == pytest.approx(ev.recall_at_k(TRUTH, RECS, 3))
    mean, low, high = mean_interval([0.0, 1.0, 0.5, 0.5])
    assert mean == 0.5 and low == pytest.approx(0.5 - 1.959964 * math.sqrt(1 / 6) / 2) and high == pytest.approx(1 - low)
    assert all(math.isnan(v) for v in mean_interval([]))
