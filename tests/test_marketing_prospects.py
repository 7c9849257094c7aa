"""Prospect-quality arithmetic: top-share selection, precision, lifts and their bootstrap intervals."""
from __future__ import annotations

import numpy as np
import pytest

from wenlv.marketing.prospects import Lifts, top_mask


def test_top_mask_takes_the_share_by_score_and_breaks_ties_without_row_order():
    scores = np.array([0.1, 0.9, 0.5, 0.7, 0.3, 0.2, 0.8, 0.4, 0.6, 0.0])
    assert np.flatnonzero(top_mask(scores, 0.3)).tolist() == [1, 3, 6]
    tied = top_mask(np.zeros(1000), 0.1)
    assert tied.sum() == 100 and tied[:100].sum() < 100  # not simply the first rows


def test_lifts_against_known_precisions():
    label = np.zeros(1000, dtype=bool)
    label[:50] = True                                      # base rate 5%
    perfect = np.where(label, 1.0, 0.0) + np.linspace(0, 1e-3, 1000)
    half = np.where(np.arange(1000) < 25, 1.0, 0.0)        # top 50 holds 25 positives (+ ties at 0)
    half[900:925] = 0.5
    lifts = Lifts({"perfect": perfect, "half": half}, label, share=0.05, reps=200)
    assert lifts.point["perfect"] == 1.0 and lifts.point["half"] == 0.5 and lifts.point["random"] == 0.05
    point, (low, high) = lifts.ratio("perfect")
    assert point == 20.0 and low <= point <= high
    point, (low, high) = lifts.ratio("perfect", "half")
    assert point == 2.0 and low < 2.0 < high
    assert high < 3.0                                      # a resample cannot make half as good as perfect


def test_an_interval_comes_from_every_resample():
    label = np.random.default_rng(1).random(400) < 0.1
    lifts = Lifts({"noise": np.random.default_rng(2).random(400)}, label, share=0.1, reps=50)
    assert len(lifts.draws) == 50
    _, (low, high) = lifts.ratio("noise")
    assert low < 1.0 < high
    with pytest.raises(KeyError):
        lifts.ratio("missing")
