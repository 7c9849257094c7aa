"""Corrupt model versions are refused at load (issue 13, item 4), and champion loads leave no temporary copies.

Against a real MLflow (SQLite store + file artifact store): a version is registered the way
training registers it (digests recorded), then its files are damaged in the artifact store the
way a hostile or failing disk would. The server must keep the version it has (or not become
ready), say why in /readyz, and never write to the registry.
"""
import json
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from wenlv.bench.serving_fixtures import synthetic_bundle
from wenlv.errors import WenlvError
from wenlv.serving.app import create_app
from wenlv.serving.auth import KeyStore
from wenlv.serving.lifecycle import ChampionFollower, model_from_registry
from wenlv.serving.model import ServingModel
from wenlv.serving.runtime import build_app
from wenlv.serving.state import ServingState
from wenlv.training import digests, registry, tracking
from wenlv.training.bundle import FACTOR_BOUND, ModelBundle

VALIDATION = {"validation_ndcg@10": 0.2, "validation_popularity_ndcg@10": 0.1}  # the gate: beats popularity
PASSED = {f"{registry.CHECK_PREFIX}{k}": "passed" for k in registry.REQUIRED_CHECKS}


def _with_tower(bundle: ModelBundle, folder) -> ModelBundle:
    """Give the bundle a small TorchScript cold-start tower (as training exports one)."""
    towers = folder / "towers-src"
    towers.mkdir(parents=True)
    torch.manual_seed(0)
    features = ["home_distance_km", "trip_days"]
    torch.jit.script(torch.nn.Linear(len(features), bundle.factors)).save(str(towers / "user_tower.pt"))
    (towers / "spec.json").write_text(json.dumps({"user_tower": "user_tower.pt", "user_features": features}))
    bundle.towers_dir = towers
    return bundle


def _bundles(tmp_path):
    v1 = _with_tower(synthetic_bundle(n_pois=60, n_users=40, factors=8, seed=11, version="1"), tmp_path / "t1")
    v2 = _with_tower(synthetic_bundle(n_pois=60, n_users=40, factors=8, seed=12, version="2"), tmp_path / "t2")
    return v1, v2


def _register(tmp_path, bundle) -> tuple[str, int, str]:
    """Log and register the bundle as training does; returns (tracking uri, version, run id)."""
    uri = tracking.store_for_dir(tmp_path / "mlflow")[0]
    folder = bundle.save(tmp_path / f"bundle-{bundle.meta['version']}")
    logged = tracking.log_run(params={}, metrics={"ndcg@10": 0.5, **VALIDATION}, tags=PASSED, artifacts={"bundle": folder},
                              tracking_uri=uri)
    return uri, registry.register_version(logged["run_id"], uri), logged["run_id"]


def _artifact_dir(uri, run_id):
    return Path(urlparse(tracking.client(uri).get_run(run_id).info.artifact_uri).path)


def _replace_in_store(uri, run_id, name: str, write) -> None:
    """Overwrite one file of the run's bundle/ artifact in the artifact store (as a damaged disk or an attacker)."""
    target = _artifact_dir(uri, run_id) / "bundle" / name
    write(target)


def _snapshot(folder) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _follower_serving_v1(tmp_path):
    """A follower serving registered v1, plus v2 registered in the same store; returns (uri, follower, v2, run2)."""
    v1, v2 = _bundles(tmp_path)
    uri, n1, _ = _register(tmp_path, v1)
    _, n2, run2 = _register(tmp_path, v2)
    assert registry.promote(n1, uri).passed
    state = ServingState(None)
    follower = ChampionFollower(state, tracking_uri=uri,
                                build=lambda b, v: model_from_registry(b, v, None, tracking_uri=uri, index_cache=None))
    assert follower.check_once() and state.model.version == str(n1)
    return uri, follower, n2, run2


def _readyz(state) -> dict:
    """/readyz as an admin sees it (the refusal's details); anyone else is told only that a version was refused."""
    keys = KeyStore(tempfile.mktemp(suffix=".sqlite"))
    admin = keys.create("admin", "ops")
    with TestClient(create_app(state, keys)) as client:
        anonymous = client.get("/readyz").json()
        seen = client.get("/readyz", headers={"Authorization": f"Bearer {admin}"}).json()
    if seen.get("load_error"):
        assert anonymous["load_error"] and anonymous["load_error"] != seen["load_error"]
        assert ".npy" not in anonymous["load_error"] and ".pt" not in anonymous["load_error"]
    return seen


# ---------------------------------------------------------------- registry versions
def test_registration_records_the_digest_of_every_bundle_file(tmp_path):
    v1, _ = _bundles(tmp_path)
    uri, version, run_id = _register(tmp_path, v1)
    mv = tracking.client(uri).get_model_version(registry.MODEL_NAME, str(version))
    files = json.loads(mv.tags[digests.FILES_TAG])
    assert {"poi_factors.npy", "user_factors.npy", "bundle.json", "towers/user_tower.pt"} <= set(files)
    assert files["poi_factors.npy"] == digests.file_sha256(tmp_path / "bundle-1" / "poi_factors.npy")
    assert mv.tags[digests.REGISTERED_TAG] == digests.manifest_sha256(digests.read_manifest(tmp_path / "bundle-1"))
    assert tracking.client(uri).get_run(run_id).data.tags[digests.REGISTERED_TAG] == mv.tags[digests.REGISTERED_TAG]


def test_plausible_random_poi_factors_are_refused_and_the_registry_is_not_written(tmp_path):
    uri, follower, n2, run2 = _follower_serving_v1(tmp_path)
    # v2 is served once elsewhere, which stores its (good) indexes in its run
    model_from_registry(registry.load_version_bundle(n2, uri), str(n2), None, tracking_uri=uri, index_cache=None)
    indexes_before = _snapshot(_artifact_dir(uri, run2) / "indexes")
    assert set(indexes_before) == {"manifest.json", "pois.faiss", "users.faiss"}
    rng = np.random.default_rng(3)
    _replace_in_store(uri, run2, "poi_factors.npy",
                      lambda p: np.save(p, rng.normal(size=np.load(p).shape).astype(np.float32)))
    tags_before = tracking.client(uri).get_model_version(registry.MODEL_NAME, str(n2)).tags

    assert registry.promote(n2, uri).passed
    assert not follower.check_once()
    assert follower.state.model.version != str(n2), "the damaged version must not be served"
    assert "poi_factors.npy does not match its recorded sha256" in follower.state.load_error
    ready = _readyz(follower.state)
    assert ready["status"] == "ready" and ready["model_version"] == follower.state.model.version
    assert "poi_factors.npy does not match" in ready["load_error"]
    # nothing written back: the stored indexes are byte-identical, the version's tags unchanged
    assert _snapshot(_artifact_dir(uri, run2) / "indexes") == indexes_before
    c = tracking.client(uri)
    promoted = {k: v for k, v in c.get_model_version(registry.MODEL_NAME, str(n2)).tags.items()
                if not k.startswith("gate.")}  # what `promote` (training's side) records about its gate
    assert promoted == {**tags_before, "quality_gate": "passed"}


def test_a_rewritten_manifest_does_not_pass_for_the_registered_one(tmp_path):
    uri, follower, n2, run2 = _follower_serving_v1(tmp_path)
    folder = _artifact_dir(uri, run2) / "bundle"
    factors = np.load(folder / "poi_factors.npy")
    np.save(folder / "poi_factors.npy", factors[::-1].copy())  # same values, other POIs
    digests.write_manifest(folder)
    registry.promote(n2, uri)
    assert not follower.check_once() and follower.state.model.version != str(n2)
    assert "not the one recorded at registration" in follower.state.load_error


def _reseal(uri, run_id, version, change) -> None:
    """Damage a bundle file, rewrite digests.json and the registered digest to match (so only the content checks can catch it)."""
    folder = _artifact_dir(uri, run_id) / "bundle"
    change(folder)
    manifest = digests.write_manifest(folder)
    tracking.client(uri).set_model_version_tag(registry.MODEL_NAME, str(version), digests.REGISTERED_TAG,
                                               digests.manifest_sha256(manifest))


def _poke(name, row, value):
    def change(folder):
        array = np.load(folder / name)
        array[row, 0] = value
        np.save(folder / name, array)
    return change


def _random_bytes(folder):
    (folder / "towers" / "user_tower.pt").write_bytes(np.random.default_rng(5).bytes(4096))


@pytest.mark.parametrize("change,why", [
    (_poke("poi_factors.npy", 7, np.nan), "poi_factors: 1 values are NaN or infinite (first in row 7)"),
    (_poke("user_factors.npy", 3, 3e38), "user_factors: a value of magnitude 3e+38 (row 3) exceeds the bound"),
    (_random_bytes, "the cold-start user tower does not load or run"),
], ids=["nan_poi_factors", "3e38_user_factors", "random_bytes_user_tower"])
def test_a_version_with_sealed_but_broken_content_is_refused(tmp_path, change, why):
    uri, follower, n2, run2 = _follower_serving_v1(tmp_path)
    _reseal(uri, run2, n2, change)
    registry.promote(n2, uri)
    assert not follower.check_once()
    assert follower.state.model.version != str(n2)
    assert why in follower.state.load_error and why in _readyz(follower.state)["load_error"]
    assert not (_artifact_dir(uri, run2) / "indexes").exists(), "no index is built or stored for a refused version"


@pytest.mark.parametrize("change,why", [
    (_poke("poi_factors.npy", 2, np.inf), "NaN or infinite"),
    (_poke("user_factors.npy", 1, 3e38), "exceeds the bound"),
    (_random_bytes, "user tower does not load"),
], ids=["inf_poi_factors", "3e38_user_factors", "random_bytes_user_tower"])
def test_a_broken_bundle_directory_does_not_become_ready(tmp_path, change, why):
    v1, _ = _bundles(tmp_path)
    folder = v1.save(tmp_path / "bundle")
    change(folder)
    digests.write_manifest(folder)  # sealed: the content checks alone must refuse it
    with pytest.raises(WenlvError, match=why):
        build_app(bundle_dir=folder, sqlite_path=tmp_path / "online.sqlite", keys_path=tmp_path / "keys.sqlite")


def test_a_bundle_without_digests_is_refused_with_the_remedy(tmp_path):
    v1, _ = _bundles(tmp_path)
    folder = v1.save(tmp_path / "bundle")
    (folder / digests.MANIFEST).unlink()
    with pytest.raises(WenlvError, match=r"no digests.json.*re-register"):
        ModelBundle.load(folder)
    with pytest.raises(WenlvError, match="re-register"):
        build_app(bundle_dir=folder, sqlite_path=tmp_path / "online.sqlite", keys_path=tmp_path / "keys.sqlite")


def test_an_unregistered_bundle_builds_no_index_and_writes_nothing(tmp_path):
    """The old path: the stored indexes were 'refused', rebuilt from whatever vectors came, and uploaded."""
    v1, v2 = _bundles(tmp_path)
    uri, n1, run1 = _register(tmp_path, v1)
    model_from_registry(registry.load_version_bundle(n1, uri), str(n1), None, tracking_uri=uri, index_cache=None)
    before = _snapshot(_artifact_dir(uri, run1))
    impostor = synthetic_bundle(n_pois=60, n_users=40, factors=8, seed=99, version="1")  # never saved nor checked
    with pytest.raises(WenlvError, match="not loaded from checked files"):
        model_from_registry(impostor, str(n1), None, tracking_uri=uri, index_cache=None)
    v2.save(tmp_path / "other")  # checked files, but not the ones registered as version n1
    with pytest.raises(WenlvError, match="not the one recorded at registration"):
        model_from_registry(v2, str(n1), None, tracking_uri=uri, index_cache=None)
    assert _snapshot(_artifact_dir(uri, run1)) == before


def test_a_tower_answering_out_of_bounds_falls_back_to_popularity(tmp_path):
    v1, _ = _bundles(tmp_path)
    model = ServingModel(v1, "1", None, index_cache=None)
    assert model.tower.embed({"home_distance_km": 10.0}) is not None
    assert model.tower.embed({"home_distance_km": FACTOR_BOUND * 1e30}) is None  # ~1e35 out: beyond the bound


# ---------------------------------------------------------------- temporary copies
def _bundle_copies(folder) -> list:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("wenlv-bundle-v"))


def test_repeated_champion_loads_leave_no_temporary_copies(tmp_path, monkeypatch):
    temp = tmp_path / "systemp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    v1, v2 = _bundles(tmp_path)
    uri, n1, _ = _register(tmp_path, v1)
    _, n2, _ = _register(tmp_path, v2)
    registry.promote(n1, uri)
    follower = ChampionFollower(ServingState(None), tracking_uri=uri,
                                build=lambda b, v: model_from_registry(b, v, None, tracking_uri=uri, index_cache=None))
    for version in [n1, n2] * 4:
        registry.promote(version, uri)
        assert follower.check_once() and follower.state.model.version == str(version)
        assert len(_bundle_copies(temp)) == 1, _bundle_copies(temp)  # only the served version's copy
    # a refused load leaves nothing behind either
    _replace_in_store(uri, tracking.client(uri).get_model_version(registry.MODEL_NAME, str(n1)).run_id,
                      "user_factors.npy", lambda p: p.write_bytes(p.read_bytes()[:-4] + b"\0\0\0\1"))
    registry.promote(n1, uri)
    assert not follower.check_once() and len(_bundle_copies(temp)) == 1
    follower.stop()  # shutdown
    assert _bundle_copies(temp) == []
