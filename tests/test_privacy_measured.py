"""The coordinator's view of a masked message is uniform and independent of the party's input;
the interaction-inference probe runs and has power (its figures go to docs/privacy.md).

Statistical tests with fresh keys: a false failure has probability < 1e-4 per assertion."""
from __future__ import annotations

import numpy as np
import pytest

from wenlv.bench.als import synthesize
from wenlv.bench.privacy import attack, masked_view, two_sample, uniformity
from wenlv.privacy.secure_agg import encode_fixed
from wenlv.training.federated_als import init_factors, sparse_residual


@pytest.fixture(scope="module")
def real():
    blocks, _ = synthesize(users=800, pois=40, areas=20, topics=10, seed=3)
    X0, Y0 = init_factors(800, {p: m.shape[1] for p, m in blocks.items()}, 8, 3, np.float64)
    return sparse_residual(blocks["carrier"], Y0["carrier"], X0)


@pytest.mark.parametrize("ring,frac", [(64, 32), (32, 24)])
def test_masked_view_is_uniform_and_independent_of_the_input(real, ring, frac):
    masked = uniformity(masked_view(real, ring, frac, "t"), ring)
    assert masked["chi2_bytes_min_p_bonferroni"] > 1e-4 and masked["ks_uniform_p"] > 1e-4
    plain = encode_fixed(real, frac).reshape(-1)
    control = uniformity(plain if ring == 64 else plain.astype(np.uint32), ring)
    assert control["chi2_bytes_min_p_bonferroni"] < 1e-10 and control["ks_uniform_p"] < 1e-10
    two = two_sample(real, runs=40, per_run=64, ring_bits=ring, frac_bits=frac)
    assert two["ks_two_sample_p"] > 1e-4 and two["control_plain_ks_p"] < 1e-10


def test_interaction_inference_probe_has_power_and_reports_an_interval():
    out = attack(users=600, factors=4, iterations=2, targets=4, boot=50)
    f = out["features"]
    assert f["model_view"]["auc"] > 0.6                       # the probe is not blind
    for v in f.values():
        assert v["ci95"][0] <= v["auc"] <= v["ci95"][1]
    lo, hi = out["protocol_minus_model_auc"]["ci95"]
    assert lo <= out["protocol_minus_model_auc"]["estimate"] <= hi
