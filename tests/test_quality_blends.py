"""Blends of more than two peers and the rule that picks among the candidates (training.model_selection)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from wenlv.errors import WenlvError
from wenlv.training import model_selection, recommenders
from wenlv.training.model_selection import Dataset, Window, choose_champion, pick, simplex


def _fixed(name, scores):
    return recommenders.Fitted(name, scores.shape[1], lambda rows, X: scores[rows])


def test_a_three_way_blend_at_a_corner_is_the_two_way_blend():
    rng = np.random.default_rng(0)
    a, b, c = (_fixed(n, rng.normal(size=(20, 9)) * s) for n, s in (("a", 1.0), ("b", 5.0), ("c", 0.1)))
    rows, X = np.arange(20), sp.csr_matrix((20, 9))
    three = recommenders.blend_many([a, b, c], [0.3, 0.7, 0.0]).scores(rows, X)
    assert three == pytest.approx(recommenders.blend(a, b, 0.3).scores(rows, X))
    assert recommenders.blend_many([a, b, c], [0.0, 0.0, 1.0]).scores(rows, X) == pytest.approx(
        recommenders._standardise(c.scores(rows, X)))
    with pytest.raises(WenlvError, match="one weight per model"):
        recommenders.blend_many([a, b], [1.0])


def test_simplex_grid_is_on_the_simplex_without_zero_weights():
    grid = simplex(3, 0.1)
    assert len(grid) == 36 and len(set(grid)) == 36  # a + b + c = 10 tenths, each ≥ 1: C(9, 2)
    assert all(sum(w) == pytest.approx(1.0) and min(w) >= 0.1 - 1e-12 for w in grid)
    assert simplex(2, 0.25) == [(0.25, 0.75), (0.5, 0.5), (0.75, 0.25)]


def _cand(size, pooled, windows):
    return {"components": [(f"m{i}", 1.0 / size) for i in range(size)],
            "validation": {"ndcg@10": pooled, "recall@10": 0.5},
            "windows": [{"ndcg@10": w, "recall@10": 0.5} for w in windows]}


def test_a_larger_blend_must_win_pooled_and_in_every_window():
    base = {"single": _cand(1, 0.50, [0.52, 0.48]), "weak": _cand(1, 0.40, [0.40, 0.40])}
    one_window = {**base, "pair": _cand(2, 0.52, [0.58, 0.47])}  # pooled gain from one window only
    assert pick(one_window) == "single"
    both = {**one_window, "triple": _cand(3, 0.51, [0.53, 0.49])}  # above the single in both windows
    assert pick(both) == "triple"
    assert pick({**base, "pair": _cand(2, 0.51, [0.53, 0.49]), "triple": _cand(3, 0.515, [0.54, 0.48])}) == "pair"


def _grouped(users, items, seed):
    """Each user has one relevant item; users fall into three groups of equal size."""
    rng = np.random.default_rng(seed)
    truth_items = rng.integers(0, items, users)
    truth = sp.csr_matrix((np.ones(users), (np.arange(users), truth_items)), shape=(users, items))
    return truth, truth_items, np.arange(users) % 3


def test_the_planted_three_way_blend_is_chosen(monkeypatch):
    """Peer g sees the relevant item of group g only: every group is found only by blending all three."""
    items = 60
    windows = {n: _grouped(n, items, seed) for n, seed in ((90, 1), (120, 2))}

    def fake(group):
        def build(matrix, n_targets):
            _, truth_items, groups = windows[matrix.shape[0]]
            s = np.random.default_rng(matrix.shape[0] * 10 + group).normal(size=(matrix.shape[0], n_targets))
            hit = np.flatnonzero(groups == group) if group >= 0 else np.array([], dtype=int)
            s[hit, truth_items[hit]] += 6.0
            return _fixed(f"g{group}", s)
        return build

    for g in (0, 1, 2, -1):  # -1: noise, the weakest peer, left out of the three-way blends
        monkeypatch.setitem(recommenders.BUILDERS, f"g{g}", fake(g))
    win = {n: Window(sp.csr_matrix((n, items)), windows[n][0], None) for n in windows}
    data = Dataset("toy", items, validation=win[90], test=win[90], extra_validation=(win[120],))
    peers = {f"g{g}": (f"g{g}", {}, model_selection._val(
        lambda w, g=g: recommenders.build(f"g{g}", w.matrix, items), data, 10)) for g in (0, 1, 2, -1)}
    chosen = choose_champion(data, peers)
    assert {n for n, _ in chosen["components"]} == {"g0", "g1", "g2"}
    assert chosen["candidates"] == 4 + 3 * 3 + 36
    assert all(w["ndcg@10"] > 0.8 for w in chosen["validation_windows"])  # all three groups found
    pairs = [c["ndcg@10"] for c in chosen["validation_ranking"] if c["candidate"].count("+") == 1]
    assert all(p < chosen["validation"]["ndcg@10"] - 0.1 for p in pairs)  # a pair finds two groups at best


def test_recency_weighted_personal_popularity_puts_the_recent_revisit_first():
    """Two POIs visited once each: the one visited 10 days ago comes first, the 3-year-old visit falls behind
    the most popular POI."""
    X = sp.csr_matrix(np.array([[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0]], dtype=float))
    w = Window(X, sp.csr_matrix((3, 4)), None, visits=(np.array([0, 0, 1, 2]), np.array([0, 1, 2, 2]),
                                                       np.array([1000.0, 10.0, 5.0, 5.0])))
    assert w.recent(365.0).toarray()[0] == pytest.approx([np.exp(-1000 / 365), np.exp(-10 / 365), 0, 0])
    plain = model_selection._fit("personal_popularity", {"weight": 10.0, "recency_days": None}, w, 4, 0)
    recent = model_selection._fit("personal_popularity", {"weight": 10.0, "recency_days": 365.0}, w, 4, 0)
    assert plain.scores(np.arange(1), X)[0, 0] == plain.scores(np.arange(1), X)[0, 1]  # counts alone: a tie
    s = recent.scores(np.arange(1), X)[0]
    assert s[1] > s[2] > s[0] > s[3]  # recent revisit, the popular POI, the old revisit, the unvisited
