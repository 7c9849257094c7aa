"""The federated propensity network: learns a planted signal split across two parties, scores through
the masked sum exactly as the plain sum would, and (with the arm as input) recovers a planted uplift."""
from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest
import torch

from wenlv.errors import WenlvError
from wenlv.features.signal import auc
from wenlv.marketing import propensity


def planted(n: int = 3000, seed: int = 0, treated=None) -> propensity.PropensityData:
    """Visits need both parties' signals: carrier column 0 and internet column 0 (an interaction)."""
    rng = np.random.default_rng(seed)
    carrier, internet = rng.normal(size=(n, 3)).astype(np.float32), rng.normal(size=(n, 2)).astype(np.float32)
    logit = -3 + 1.5 * (carrier[:, 0] > 0) * (internet[:, 0] > 0) * 3
    if treated is not None:
        logit = logit + 2.0 * treated * (carrier[:, 1] > 0)   # the contact works only where carrier col 1 > 0
    label = rng.random(n) < 1 / (1 + np.exp(-logit))
    return propensity.PropensityData(date(2025, 12, 1), np.array([f"p{i}" for i in range(n)], dtype=object),
                                     {"carrier": carrier, "internet": internet},
                                     {"carrier": ["c0", "c1", "c2"], "internet": ["i0", "i1"]},
                                     np.array(["Hangzhou"] * n, dtype=object), np.ones(n, bool), label, pd.DataFrame())


def test_learns_a_signal_that_needs_both_parties_and_scores_through_the_masked_sum():
    data, fresh = planted(seed=0), planted(seed=1)
    model = propensity.train(data, epochs=15, seed=0)
    assert model.losses[-1] < model.losses[0]
    assert auc(fresh.label, model.score(fresh)) > 0.85
    with torch.no_grad():  # the same computation without masks: equal to fixed-point precision
        summed = sum(model.bottoms[p](torch.from_numpy(fresh.frames[p])) for p in propensity.PARTIES)
        plain = model.top(summed).numpy()
    np.testing.assert_allclose(model.score(fresh), plain, atol=1e-5)


def test_with_the_arm_as_input_it_recovers_where_the_contact_works():
    rng = np.random.default_rng(2)
    treated = (rng.random(6000) < 0.5).astype(np.float32)
    data = planted(n=6000, seed=2, treated=treated)
    model = propensity.train(data, epochs=15, seed=0, treated=treated)
    effect = model.uplift(planted(n=2000, seed=3))
    works = planted(n=2000, seed=3).frames["carrier"][:, 1] > 0
    assert effect[works].mean() > effect[~works].mean() + 0.03
    with pytest.raises(WenlvError, match="scores with treated=0 or 1"):
        model.score(data)


def test_too_few_positives_are_refused():
    data = planted(n=200, seed=4)
    data.label[:] = False
    with pytest.raises(WenlvError, match="at least 10 people who visited"):
        propensity.train(data)
