"""Learning curves: loss and test-window NDCG per ALS iteration, the same fit with or without them."""
import numpy as np
import pytest

from wenlv.training import curves, evaluation, factors
from wenlv.training.blocks import FeatureBlocks, build_matrices
from tests.support.toy_blocks import write_toy_blocks

ITERATIONS = 4


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    blocks = FeatureBlocks.load(write_toy_blocks(tmp_path_factory.mktemp("curves") / "f", n_users=200, seed=5))
    return blocks, build_matrices(blocks)


@pytest.mark.parametrize("mode", ["federated", "central"])
def test_every_iteration_is_measured_without_changing_the_fit(toy, mode):
    blocks, matrices = toy
    kwargs = dict(mode=mode, factors=6, iterations=ITERATIONS, regularization=1.0, seed=3)
    curve = curves.AlsCurve(blocks, matrices, regularization=1.0, k=10)
    watched = factors.fit(matrices, on_iteration=curve, **kwargs)
    plain = factors.fit(matrices, **kwargs)
    assert np.array_equal(watched.user_factors, plain.user_factors)
    assert np.array_equal(watched.poi_factors, plain.poi_factors)

    steps = curve.steps()
    assert [s for s, _ in steps[curves.ALS_LOSS]] == list(range(ITERATIONS))
    losses = [v for _, v in steps[curves.ALS_LOSS]]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    ndcg = [v for _, v in steps["als_test_ndcg_at_10"]]
    final = evaluation.evaluate_scores(blocks, matrices, watched.user_factors @ watched.poi_factors.T, k=10)
    assert ndcg[-1] == pytest.approx(final["ndcg@10"], abs=1e-9), "the last point is the run's ndcg@10"
    assert ndcg[-1] > ndcg[0] or ndcg[0] > 0.2  # learning, or already good after one iteration


def test_tower_steps_are_epochs():
    assert curves.tower_steps([0.9, 0.5, 0.4]) == {"tower_loss": [(0, 0.9), (1, 0.5), (2, 0.4)]}
