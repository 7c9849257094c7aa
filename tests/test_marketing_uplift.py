"""Qini coefficient and uplift@k against small examples computed by hand."""
from __future__ import annotations

import numpy as np
import pytest

from wenlv.marketing import uplift

Y = [1, 0, 1, 0]
T = [1, 1, 0, 0]


def test_qini_curve_by_hand():
    # order 0, 3, 2, 1 -> Q = Y_t - Y_c * N_t / N_c: 0 (no control yet), 1 - 0, 1 - 1*1/2, 1 - 1*2/2
    x, q = uplift.qini_curve(Y, T, [0.4, 0.1, 0.2, 0.3])
    assert x.tolist() == [0, 1, 2, 3, 4]
    assert q.tolist() == [0, 0, 1, 0.5, 0]


def test_qini_coefficient_by_hand():
    # the curve above has area 1.5 above the (flat) random line; the perfect ranking's curve
    # (scores y*t - y*(1-t) = 1, 0, -1, 0: ties 1 and 3 grouped) is 0, 0 @1, 1 @3, 0 @4: area 1.5 too
    assert uplift.qini_coefficient(Y, T, [0.4, 0.1, 0.2, 0.3]) == pytest.approx(1.0)
    # order 0, 1, 2, 3: Q = 0, 0, 1 - 1*2/1 = -1, 0 -> area -1 -> -1 / 1.5
    assert uplift.qini_coefficient(Y, T, [0.4, 0.3, 0.2, 0.1]) == pytest.approx(-2 / 3)


def test_qini_of_a_random_ranking_is_near_zero_and_of_the_truth_is_high():
    rng = np.random.default_rng(0)
    n = 20_000
    t = rng.integers(0, 2, n)
    effect = rng.random(n) * 0.3
    y = (rng.random(n) < 0.1 + t * effect).astype(int)
    assert abs(uplift.qini_coefficient(y, t, rng.random(n))) < 0.05
    assert uplift.qini_coefficient(y, t, effect) > 0.15


def test_uplift_at_k_by_hand():
    # top half: person 0 (treated, came) and person 3 (control, did not) -> 1 - 0
    assert uplift.uplift_at_k(Y, T, [0.4, 0.1, 0.2, 0.3], k=0.5) == pytest.approx(1.0)
    assert np.isnan(uplift.uplift_at_k(Y, T, [0.4, 0.3, 0.2, 0.1], k=0.5))  # no control in the top half


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="same non-zero length"):
        uplift.qini_curve([1, 0], [1], [0.1, 0.2])
