"""Each registered version is an MLflow pyfunc model: loaded by `models:/…@champion`, served by
`mlflow models serve`, and ranking exactly as the serving path ranks."""
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import mlflow.tracking._model_registry.utils as registry_utils
import mlflow.tracking._tracking_service.utils as tracking_utils
import numpy as np
import pandas as pd
import pytest
from mlflow.models import Model
from mlflow.models.utils import load_serving_example

from wenlv.errors import WenlvError
from wenlv.features import contracts
from wenlv.serving.filters import Filters
from wenlv.serving.lifecycle import model_from_registry
from wenlv.training import digests, pyfunc_model, registry, tracking
from wenlv.training.blocks import FeatureBlocks
from wenlv.training.bundle import ModelBundle
from wenlv.training.pipeline import poi_table
from wenlv.training.poi_filters import PoiTable
from tests.support.toy_blocks import write_toy_blocks

ROOT = Path(__file__).resolve().parents[1]
URI_NAME = f"models:/{registry.MODEL_NAME}@{registry.ALIAS}"
VALIDATION = {"validation_ndcg@10": 0.2, "validation_popularity_ndcg@10": 0.1}  # the gate: beats popularity
PASSED = {f"{registry.CHECK_PREFIX}{c}": "passed" for c in registry.REQUIRED_CHECKS}


def toy_bundle(seed: int = 3, n_users: int = 80, n_pois: int = 48, f: int = 8) -> ModelBundle:
    """A bundle with real-shaped POI metadata (two cities, four categories, hours) and visits."""
    rng = np.random.default_rng(seed)
    tokens = [hashlib.sha256(f"pyfunc-{seed}-{i}".encode()).hexdigest()[:32] for i in range(n_users)]
    pois = pd.DataFrame({
        "poi_id": [f"p{j:03d}" for j in range(n_pois)], "name": [f"POI {j}" for j in range(n_pois)],
        "category": [contracts.POI_CATEGORIES[j % 4] for j in range(n_pois)],
        "city": ["hangzhou" if j % 3 else "suzhou" for j in range(n_pois)],
        "lat": rng.uniform(30, 31, n_pois), "lon": rng.uniform(120, 121, n_pois),
        "open_time": ["08:00"] * n_pois, "close_time": ["18:00"] * n_pois, "visit_minutes": [60] * n_pois,
        "price_cny": [50.0] * n_pois, "popularity": rng.integers(0, 200, n_pois).astype(float)})
    visits = pd.DataFrame({"token": rng.choice(tokens, 240), "poi_id": rng.choice(pois.poi_id, 240)}).drop_duplicates()
    return ModelBundle(pois=pois, poi_factors=rng.normal(size=(n_pois, f)).astype(np.float32),
                       users=pd.DataFrame({"token": tokens, "is_prospect": [False] * n_users}),
                       user_factors=rng.normal(size=(n_users, f)).astype(np.float32),
                       history=visits.reset_index(drop=True), meta={"version": "1"})


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    """A registered, promoted version in a fresh SQLite store; MLflow's fluent API pointed at it."""
    root = tmp_path_factory.mktemp("pyfunc")
    uri = tracking.store_for_dir(root / "mlflow")[0]
    bundle = toy_bundle()
    folder = bundle.save(root / "bundle")
    logged = tracking.log_run(params={"toy": 1}, metrics={"ndcg@10": 0.3, **VALIDATION}, tags=PASSED, artifacts={"bundle": folder},
                              tracking_uri=uri)
    version = registry.register_version(logged["run_id"], uri)
    assert registry.promote(version, uri).passed
    # MLflow keeps these in module globals and exports them to the environment; restoring through the public
    # setters would pin the registry to a resolved URI for every later test, so the raw values are put back
    saved = (registry_utils._registry_uri, tracking_utils._tracking_uri,
             {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")})
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield {"uri": uri, "version": version, "run_id": logged["run_id"], "bundle": bundle, "root": root}
    registry_utils._registry_uri, tracking_utils._tracking_uri = saved[0], saved[1]
    for name, value in saved[2].items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def test_the_champion_loads_as_a_pyfunc_and_ranks_like_serving(champion):
    model = mlflow.pyfunc.load_model(URI_NAME)
    bundle, version = registry.load_champion_bundle(champion["uri"], champion["root"] / "served")
    served = model_from_registry(bundle, str(version), None, tracking_uri=champion["uri"], index_cache=None)
    unknown = "f" * 32
    requests = [(t, k, cat, city, excl, pers) for t in list(bundle.users.token[:12]) + [unknown]
                for k, cat, city, excl, pers in ((10, None, None, True, True), (5, "museum", None, True, True),
                                                 (7, None, "suzhou", False, True), (4, None, None, True, False))]
    frame = pd.DataFrame(requests, columns=["token", "k", "category", "city", "exclude_visited", "personalized"])
    got = model.predict(frame)
    assert len(got) == len(requests)
    strategies = set()
    for (token, k, cat, city, excl, pers), answer in zip(requests, got.to_dict("records")):
        rec = served.recommend(token, k=k, filters=Filters(category=cat, city=city), exclude_visited=excl,
                               personalized=pers)
        assert answer["token"] == token and answer["strategy"] == rec.strategy
        assert list(answer["poi_ids"]) == served.table.poi_ids[rec.ids].tolist()
        assert np.allclose(answer["scores"], rec.scores, atol=1e-6)
        assert len(answer["poi_ids"]) == k
        if cat:
            assert set(bundle.pois.set_index("poi_id").loc[list(answer["poi_ids"]), "category"]) == {cat}
        strategies.add(answer["strategy"])
    assert strategies == {"als", "popularity"}


def test_signature_and_input_example_are_recorded_and_valid(champion):
    info = mlflow.models.get_model_info(URI_NAME)
    inputs = {c["name"]: c for c in info.signature.inputs.to_dict()}
    outputs = {c["name"] for c in info.signature.outputs.to_dict()}
    assert inputs["token"]["required"] and not inputs["k"]["required"] and not inputs["category"]["required"]
    assert outputs == {"token", "poi_ids", "scores", "strategy"}
    local = Path(mlflow.artifacts.download_artifacts(URI_NAME, dst_path=str(champion["root"] / "m")))
    example = Model.load(str(local)).load_input_example(str(local))
    assert set(example.columns) <= set(inputs) and len(example) == 2
    answer = mlflow.pyfunc.load_model(str(local)).predict(example)
    assert [len(ids) for ids in answer["poi_ids"]] == list(example["k"])
    assert answer["strategy"].tolist() == ["als", "popularity"]  # a known visitor, and a new one
    assert load_serving_example(str(local))  # what `mlflow models serve` documents as a request
    assert (local / "artifacts" / "indexes" / "pois.faiss").exists() and (local / "artifacts" / "bundle" / "bundle.json").exists()
    assert (local / "pyfunc_entry.py").exists() and not list(local.glob("*.pkl")), "models from code: nothing to unpickle"


def test_bad_requests_are_named(champion):
    model = mlflow.pyfunc.load_model(URI_NAME)
    token = champion["bundle"].users.token[0]
    with pytest.raises(Exception, match="token must match"):
        model.predict(pd.DataFrame({"token": ["13800138000"]}))
    with pytest.raises(WenlvError, match="row 1: k must be a whole number"):
        pyfunc_model.recommend_frame(model.unwrap_python_model().ranker,
                                     pd.DataFrame({"token": [token, token], "k": [3, 500]}))


def test_a_carried_index_of_other_vectors_is_refused(champion, tmp_path):
    bundle = champion["bundle"]
    pyfunc_model.write_poi_index(toy_bundle(seed=9), tmp_path)
    with pytest.raises(WenlvError, match="not built from this bundle"):
        pyfunc_model.read_poi_index(tmp_path, bundle)


def _pyfunc_copy(tmp_path) -> Path:
    """The champion's MLflow model folder, downloaded to change its files as a damaged disk or an attacker would."""
    return Path(mlflow.artifacts.download_artifacts(URI_NAME, dst_path=str(tmp_path / "copy")))


def test_the_pyfunc_model_records_the_registered_bundle_digest(champion, tmp_path):
    local = _pyfunc_copy(tmp_path)
    model = mlflow.pyfunc.load_model(str(local))
    recorded = model.model_config  # MLmodel's python_function flavor, `config`
    version = mlflow.MlflowClient(champion["uri"]).get_model_version(registry.MODEL_NAME, champion["version"])
    assert recorded[pyfunc_model.BUNDLE_DIGEST] == version.tags[digests.REGISTERED_TAG]
    assert recorded[pyfunc_model.INDEXES_DIGEST] == digests.manifest_sha256(
        digests.read_manifest(local / "artifacts" / "indexes"))
    assert len(model.predict(pd.DataFrame({"token": [pyfunc_model.EXAMPLE_TOKEN]}))) == 1


def test_a_resealed_bundle_copy_is_refused(champion, tmp_path):
    """Regression: the copy was checked only against its own digests.json, so rewriting that too passed."""
    local = _pyfunc_copy(tmp_path)
    copy = local / "artifacts" / "bundle"
    factors = np.load(copy / "poi_factors.npy")
    np.save(copy / "poi_factors.npy", factors[::-1].copy())  # sane values, other rankings
    with pytest.raises(digests.BundleIntegrityError, match="poi_factors.npy does not match its recorded sha256"):
        mlflow.pyfunc.load_model(str(local))
    digests.write_manifest(copy)
    with pytest.raises(digests.BundleIntegrityError, match="bundle copy .*not the one recorded at registration"):
        mlflow.pyfunc.load_model(str(local))


def test_a_replaced_poi_index_in_the_pyfunc_copy_is_refused(champion, tmp_path):
    """Regression: the FAISS file was not digested; an index of other vectors of the same shape loaded and ranked."""
    local = _pyfunc_copy(tmp_path)
    other = tmp_path / "other"
    pyfunc_model.write_poi_index(toy_bundle(seed=9), other)
    (local / "artifacts" / "indexes" / pyfunc_model.POI_INDEX_FILE).write_bytes(
        (other / pyfunc_model.POI_INDEX_FILE).read_bytes())
    with pytest.raises(digests.BundleIntegrityError, match="POI index .*pois.faiss does not match its recorded sha256"):
        mlflow.pyfunc.load_model(str(local))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_models_serve_answers_invocations(champion):
    port = _free_port()
    env = dict(os.environ, MLFLOW_TRACKING_URI=champion["uri"], MLFLOW_REGISTRY_URI=champion["uri"],
               PATH=os.pathsep.join((str(Path(sys.executable).parent), os.environ.get("PATH", ""))),  # its uvicorn
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", URI_NAME, "--env-manager", "local",
                             "-h", "127.0.0.1", "-p", str(port), "-w", "1"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "mlflow models serve did not come up"
            time.sleep(0.5)
        token = champion["bundle"].users.token[5]
        body = json.dumps({"dataframe_records": [{"token": token, "k": 3, "category": "museum"}]}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            answer = json.loads(r.read())["predictions"][0]
        local = mlflow.pyfunc.load_model(URI_NAME).predict(pd.DataFrame([{"token": token, "k": 3, "category": "museum"}]))
        assert answer["poi_ids"] == list(local["poi_ids"][0]) and answer["strategy"] == "als"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_a_bundle_without_a_poi_table_can_still_be_ranked(tmp_path):
    """Without `pois.parquet` the bundle's hours were '' and every ranker (serving's too) refused it."""
    pois, source = poi_table(FeatureBlocks.load(write_toy_blocks(tmp_path / "features", n_users=40)), None)
    assert source == "missing"
    table = PoiTable(pois)
    assert table.open_mask(3 * 60).all(), "unknown hours must not filter POIs out"
