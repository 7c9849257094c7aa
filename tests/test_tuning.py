"""The hyperparameter search: nested MLflow runs, the best trial registered, the test window never read."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from wenlv.training import tracking, tuning
from wenlv.training.blocks import FeatureBlocks, build_matrices
from wenlv.training.flickr_eval import tune_central
from wenlv.training.pipeline import TrainConfig, train
from wenlv.errors import WenlvError
from tests.support.toy_blocks import write_toy_blocks

ALS_PARAMS = ("factors", "regularization", "alpha", "weighting", "iterations")


def _with_poi(blocks: FeatureBlocks) -> FeatureBlocks:
    """One more POI in the POI table, nobody's training visit."""
    poi = blocks["tourism/poi_features"]
    planted = poi.iloc[[0]].assign(poi_id="poi999", popularity=0.0)
    return FeatureBlocks(root=blocks.root, manifest=blocks.manifest,
                         tables={**blocks.tables, "tourism/poi_features": pd.concat([poi, planted], ignore_index=True)})


def _plant_test_only_poi(blocks: FeatureBlocks) -> FeatureBlocks:
    """Every test-window visit goes to the POI nobody visits in training."""
    tables = dict(blocks.tables)
    test = tables["tourism/test_interactions"].copy()
    test["poi_id"] = "poi999"
    tables["tourism/test_interactions"] = test.drop_duplicates(["token", "poi_id"]).reset_index(drop=True)
    return FeatureBlocks(root=blocks.root, manifest=blocks.manifest, tables=tables)


def test_block_search_never_reads_the_test_window(tmp_path):
    features = write_toy_blocks(tmp_path / "f", n_users=200, seed=5)
    base = _with_poi(FeatureBlocks.load(features))
    planted = _plant_test_only_poi(base)
    assert not planted["tourism/test_interactions"].equals(base["tourism/test_interactions"])
    config = TrainConfig(mode="central", factors=4, iterations=3, towers=False, shapley=False, progress=False)
    results = [tuning.tune_blocks(b, build_matrices(b), config, 4, log_runs=False) for b in (base, planted)]
    assert results[0].best_params == results[1].best_params
    assert [t["metrics"]["objective"] for t in results[0].trials] == [t["metrics"]["objective"] for t in results[1].trials]
    # the validation window is a real, non-empty cut of the training pairs
    _, truth = tuning.validation_split(base, build_matrices(base), 0.2)
    assert truth.nnz > 0


def test_flickr_search_never_reads_the_test_window():
    rng = np.random.default_rng(0)
    n = 3000
    users = rng.integers(0, 150, n)
    visits = pd.DataFrame({"visitor_id": [f"u{u}" for u in users],
                           "poi_id": [f"p{(u % 5) * 3 + rng.integers(0, 3)}" for u in users],
                           "arrived_at": pd.Timestamp("2015-01-01") + pd.to_timedelta(rng.integers(0, 10**7, n), "s")})
    split = pd.to_datetime(visits["arrived_at"]).quantile(0.8)
    train = visits[visits["arrived_at"] < split]
    planted = visits.copy()
    planted.loc[planted["arrived_at"] >= split, "poi_id"] = "planted"
    chosen = []
    for frame in (visits, planted):
        inner = frame[frame["arrived_at"] < split]
        pd.testing.assert_frame_equal(inner, train)
        chosen.append(tune_central(inner, 3, seed=1).best_params)
    assert chosen[0] == chosen[1]


def test_train_tune_logs_nested_trials_and_registers_the_best(tmp_path):
    features = write_toy_blocks(tmp_path / "f", n_users=200, seed=7)
    uri = tracking.store_for_dir(tmp_path / "mlflow")[0]
    out = train(features, TrainConfig(factors=4, iterations=3, tower_epochs=3, shapley=False, tune=3, progress=False),
                tracking_uri=uri, work_dir=tmp_path / "work")
    c = tracking.client(uri)
    parent = out["tuning"]["parent_run_id"]
    trials = c.search_runs([c.get_experiment_by_name(tracking.EXPERIMENT).experiment_id],
                           filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    trial_runs = [r for r in trials if r.data.tags.get(tuning.ROLE_TAG) == "tuning-trial"]
    assert len(trial_runs) == 3
    for r in trial_runs:
        assert set(ALS_PARAMS) | {"tower_epochs", "tower_lr", "tower_hidden"} <= set(r.data.params)
        assert {"objective", "validation_ndcg_at_10", "validation_popularity_ndcg_at_10"} <= set(r.data.metrics)
    best = max(trial_runs, key=lambda r: r.data.metrics["objective"])
    model_run = c.get_run(out["run_id"])
    assert model_run.data.tags[tuning.PARENT_TAG] == parent
    assert model_run.data.tags[tuning.BEST_TRIAL_TAG] == best.info.run_id == out["tuning"]["best_run_id"]
    for p in ALS_PARAMS + ("tower_epochs", "tower_lr", "tower_hidden"):
        assert model_run.data.params[p] == best.data.params[p], p
    version = c.get_model_version("wenlv-recommender", str(out["model_version"]))
    assert version.run_id == out["run_id"]
    assert model_run.data.metrics["validation_objective"] == pytest.approx(best.data.metrics["objective"])
    beats = best.data.metrics["validation_ndcg_at_10"] > best.data.metrics["validation_popularity_ndcg_at_10"]
    assert version.tags["gate.beats_popularity_on_validation"] == ("passed" if beats else "failed")
    assert out["promoted"] == beats


def test_search_refuses_no_trials():
    with pytest.raises(WenlvError, match="at least one trial"):
        tuning.search(lambda p: {"objective": 0.0}, lambda t: {}, 0)


def test_tune_with_party_services_is_refused_clearly(tmp_path, capsys):
    from wenlv.cli import main

    assert main(["train", "--features", str(tmp_path), "--parties", "tourism=https://127.0.0.1:9", "--tune", "2"]) == 2
    assert "--tune" in capsys.readouterr().err
