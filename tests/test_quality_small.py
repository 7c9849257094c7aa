"""The synthetic `small` data of `bench quality`: its test window and the validation cut that mirrors it."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from wenlv.bench.als import confidence, synthesize, visit_counts
from wenlv.bench.quality import hold_out_visits
from wenlv.training import recommenders, user_metrics


@pytest.fixture(scope="module")
def synthetic():
    return synthesize(users=4000, pois=120, areas=60, topics=20, seed=2)


def _ndcg(model, matrix, truth, exclude):
    return user_metrics.per_user(lambda rows: model.scores(rows, matrix), truth, 10, exclude=exclude)["ndcg"].mean()


def test_synthetic_test_visits_follow_the_training_tastes(synthetic):
    """A taste-blind test window (fresh POI themes) let popularity beat every personalised model."""
    blocks, test = synthetic
    tourism = blocks["tourism"]
    knn = recommenders.item_knn(tourism, tourism.shape[1], "cosine", 20)
    pop = recommenders.popularity(tourism, tourism.shape[1])
    assert _ndcg(knn, tourism, test, tourism) > 1.3 * _ndcg(pop, tourism, test, tourism)


def test_counts_round_trip_the_generators_confidence(synthetic):
    tourism = synthetic[0]["tourism"]
    counts = visit_counts(tourism)
    assert counts.data.min() == 1 and np.all(counts.data == np.round(counts.data))
    assert confidence(counts).data == pytest.approx(tourism.data)


def test_held_out_visits_are_new_pois_drawn_by_visit_count():
    counts = sp.csr_matrix(np.array([[3, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1], [0, 2, 0, 0]], dtype=float))
    rng = np.random.default_rng(0)
    seen_truth = np.zeros(4)
    for _ in range(400):
        kept, truth = hold_out_visits(counts, np.array([0, 1, 2, 3]), 2, rng)
        kept_d, truth_d = kept.toarray(), truth.toarray()
        assert np.all(kept_d <= counts.toarray()) and np.all((kept_d > 0).sum(axis=1) >= 1)  # one visit stays
        assert counts.sum() - kept.sum() == 2 + 0 + 2 + 1  # two draws, fewer where a user has under three visits
        assert truth_d[1].sum() == 0 and truth_d[3].sum() == 0  # a lone visit stays; a repeat POI is not new
        assert np.all(truth_d * kept_d == 0)  # truth only where no visit is left: new POIs
        seen_truth += truth_d[0]
    # user 0 (POI 0 ×3, POI 1 ×1): two of four visits never empty POI 0, so it is never new;
    # POI 1 is new exactly when its one visit is drawn (P = 1/2)
    assert seen_truth[0] == 0
    assert 0.4 < seen_truth[1] / 400 < 0.6
