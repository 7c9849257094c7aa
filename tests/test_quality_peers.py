"""Peers, per-user metrics and the champion chosen on validation (training.model_selection)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from wenlv.errors import WenlvError
from wenlv.training import evaluation, recommenders, user_metrics
from wenlv.training.model_selection import Dataset, Window, choose_champion, evaluate, tune_peers


def _random(seed, users=60, items=15, density=0.2):
    rng = np.random.default_rng(seed)
    m = sp.random(users, items, density=density, random_state=rng, format="csr")
    m.data[:] = rng.integers(1, 4, m.nnz)
    return m


@pytest.mark.parametrize("exclude", [False, True])
def test_per_user_means_equal_the_recommenders_definitions(exclude):
    rng = np.random.default_rng(3)
    history, truth = _random(1), _random(2, density=0.15)
    scores = rng.normal(size=history.shape)
    scores[:, 4] = scores[:, 5]  # a tie: broken by item position in both
    ex = history if exclude else None
    v = user_metrics.per_user(lambda rows: scores[rows], truth, 10, exclude=ex)
    users, items = np.arange(history.shape[0]), np.arange(history.shape[1])
    recs = evaluation.top_k(scores, users, items, 10, exclude=ex)
    t = sp.csr_matrix(truth)
    if exclude:
        t = t - t.multiply(history > 0)
        t.eliminate_zeros()
    coo = t.tocoo()
    frame = pd.DataFrame({"user": coo.row, "item": coo.col})
    assert v["ndcg"].mean() == pytest.approx(evaluation.ndcg_at_k(frame, recs, 10))
    assert v["recall"].mean() == pytest.approx(evaluation.recall_at_k(frame, recs, 10))
    lo, hi = user_metrics.summary(v)["ci95"]["ndcg@10"]
    assert lo < v["ndcg"].mean() < hi


def test_weighting_keeps_the_pattern_and_refuses_unknown_schemes():
    m = _random(4)
    for scheme in recommenders.WEIGHTINGS:
        w = recommenders.weight(m, scheme, 2.0)
        assert (w > 0).toarray().tolist() == (m > 0).toarray().tolist()
    assert recommenders.weight(m, "log", 3.0).data == pytest.approx(3.0 * np.log1p(m.data))
    with pytest.raises(Exception, match="weighting must be one of"):
        recommenders.weight(m, "sqrt")


def test_ease_is_the_closed_form():
    X = (_random(5) > 0).astype(float)
    lam = 5.0
    fitted = recommenders.ease(X, X.shape[1], lam)
    P = np.linalg.inv((X.T @ X).toarray() + lam * np.eye(X.shape[1]))
    B = np.eye(X.shape[1]) - P / np.diag(P)  # Steck's B: zero diagonal
    assert np.diag(B) == pytest.approx(0.0)
    assert fitted.scores(np.arange(3), X) == pytest.approx(X[:3].toarray() @ B)


def test_personal_popularity_ranks_own_visits_then_popular_pois():
    X = sp.csr_matrix(np.array([[0, 2, 0, 0], [1, 0, 0, 0], [1, 0, 1, 0], [1, 0, 0, 0]], dtype=float))
    s = recommenders.personal_popularity(X, 4, weight=10.0).scores(np.arange(4), X)
    assert list(np.argsort(-s[0], kind="stable")[:2]) == [1, 0]  # its own POI, then the most visited
    assert s[1].argmax() == 0 and s[1, 2] > s[1, 3]  # POI 2 has a visitor, POI 3 none
    zero = recommenders.personal_popularity(X, 4, weight=0.0).scores(np.arange(4), X)
    assert np.all(zero == zero[0])  # weight 0 is popularity: one list for everyone
    with pytest.raises(WenlvError, match="weight must be"):
        recommenders.personal_popularity(X, 4, weight=-1.0)


def _themed(seed, users=150, items=20, themes=4):
    """Users like one theme; visits fall in it."""
    rng = np.random.default_rng(seed)
    theme = rng.integers(0, themes, users)
    rows, cols = [], []
    for u in range(users):
        for j in rng.choice(np.flatnonzero(np.arange(items) % themes == theme[u]), size=3):
            rows.append(u)
            cols.append(j)
    m = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(users, items))
    m.sum_duplicates()
    return m


def test_champion_is_chosen_on_validation_only(tmp_path):
    fit, val, full, test = _themed(1), _themed(2), _themed(3), _themed(4)
    data = Dataset("toy", 20, validation=Window(fit, val, None), test=Window(full, test, None))
    peers = tune_peers(data, als_trials=2, bpr_trials=1)
    chosen = choose_champion(data, peers)
    assert chosen["candidates"] == 7 + 6 * 3 + 36  # peers, two-way and three-way blends: none may read the test
    planted = test.copy().tolil()
    planted[:, 0] = 1.0  # every test user visits item 0: only the test window says so
    data2 = Dataset("toy", 20, validation=data.validation, test=Window(full, sp.csr_matrix(planted), None))
    assert choose_champion(data2, tune_peers(data2, als_trials=2, bpr_trials=1))["model"] == chosen["model"]
    result = evaluate(data, als_trials=2, bpr_trials=1)
    assert set(result["peers"]) == {"popularity", "personal_popularity", "item_knn", "item_knn_bm25", "ease", "bpr",
                                    "als"}
    champ = result["champion"]
    assert champ["model"] == chosen["model"] and champ["users"] > 0
    assert champ["ndcg@10"] > result["peers"]["popularity"]["ndcg@10"]  # themes beat popularity here

    from wenlv.bench import charts
    from wenlv.bench.quality import run

    no_revisits = {**result, "peers": {n: v for n, v in result["peers"].items() if n != "personal_popularity"}}
    png = charts.draw({"bench": "quality", "datasets": {"toy": result, "seen-excluded": no_revisits}},
                      tmp_path / "q.png")
    assert png.stat().st_size > 1000
    with pytest.raises(WenlvError, match="unknown"):
        run(("Atlantis",))
