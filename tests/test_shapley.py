"""Shapley split of the data-source lift."""
import pytest

from wenlv.training import shapley
from wenlv.training.blocks import FeatureBlocks, build_matrices
from wenlv.training.pipeline import TrainConfig, fit_and_evaluate
from tests.support.toy_blocks import write_toy_blocks

F = frozenset


def test_two_player_values_by_hand():
    v = {F(): 0.20, F({"carrier"}): 0.30, F({"internet"}): 0.25, F({"carrier", "internet"}): 0.40}
    out = shapley.shapley_values(v)
    assert out["carrier"] == pytest.approx(0.5 * 0.10 + 0.5 * 0.15)
    assert out["internet"] == pytest.approx(0.5 * 0.05 + 0.5 * 0.10)
    assert sum(out.values()) == pytest.approx(0.40 - 0.20)  # efficiency


def test_null_and_symmetric_players():
    v = {F(): 1.0, F({"a"}): 1.0, F({"b"}): 2.0, F({"c"}): 2.0, F({"a", "b"}): 2.0, F({"a", "c"}): 2.0,
         F({"b", "c"}): 4.0, F({"a", "b", "c"}): 4.0}
    out = shapley.shapley_values(v, players=("a", "b", "c"))
    assert out["a"] == pytest.approx(0.0)
    assert out["b"] == pytest.approx(out["c"]) == pytest.approx(1.5)


def test_data_source_values_on_coalition_retrains(tmp_path):
    blocks = FeatureBlocks.load(write_toy_blocks(tmp_path / "f", seed=5))
    matrices = build_matrices(blocks)
    config = TrainConfig(mode="central", factors=8, iterations=6)
    out = shapley.data_source_values(fit_and_evaluate, blocks, matrices, config)
    assert set(out["coalitions"]) == {"tourism", "tourism+carrier", "tourism+internet", "tourism+carrier+internet"}
    assert sum(out["values"].values()) == pytest.approx(out["lift"])
    # on the toy data both sources carry taste signal, the prospects' especially
    assert out["lift"] > 0 and out["values"]["carrier"] > 0 and out["values"]["internet"] > 0
    metrics = shapley.as_metrics(out)
    assert set(metrics) == {"shapley_carrier", "shapley_internet", "shapley_total_lift"}
