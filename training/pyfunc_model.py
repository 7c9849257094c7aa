"""Each registered version as an MLflow pyfunc model, so MLflow's own tools load and serve it.

    mlflow.pyfunc.load_model("models:/wenlv-recommender@champion").predict(frame)
    mlflow models serve -m models:/wenlv-recommender@champion --env-manager local -h 127.0.0.1

At registration `log_model_for_run` reads the run's `bundle/` artifact, builds the POI
index serving would build for it (`training.vector_index`), and logs the run's `model/`
artifact: an MLflow model folder (MLmodel with a signature and an input example) whose
artifacts are the bundle and the FAISS index, its code `pyfunc_entry.py` (models from code:
nothing is unpickled at load). The registered version's source is that folder. Serving does not use it: it keeps loading the run's `bundle/` and `indexes/`.

Integrity: that folder is a second copy of the bundle, so it is checked like the first. At
registration the copy must match the digest registration records (`training.digests`), the index
folder gets its own digests.json, and both manifests' digests go in the model's `model_config`
(in MLmodel). `load_context` refuses a copy whose files do not match its digests.json (naming the
file) or whose digests.json is not the recorded one.

Input, one row per request: `token` (a visitor token, 32 lowercase hex), optional `k`
(1–100, default 10), optional filters `category` and `city`, optional `exclude_visited`
and `personalized` (both default true). Output, one row per request: `token`, `poi_ids`
and `scores` (best first) and `strategy` (`als`: the visitor's own factors; `popularity`:
a token the model never saw, or `personalized` false). Ranking goes through
`training.ranking.BundleRanker`, the scoring serving uses, so for the same token and
filters the top-k equals serving's answer without an online store.
"""
from __future__ import annotations

import json
import tempfile
from importlib.metadata import PackageNotFoundError, version as package_version
from pathlib import Path

import faiss
import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import Array, ColSpec, Schema

from wenlv.errors import WenlvError
from wenlv.privacy.tokens import VISITOR_TOKEN_PATTERN, is_visitor_token
from wenlv.training import digests
from wenlv.training.bundle import ModelBundle
from wenlv.training.poi_filters import Filters
from wenlv.training.ranking import STRATEGY_ALS, STRATEGY_POPULARITY, BundleRanker
from wenlv.training.vector_index import VectorIndex, build_bundle_indexes, index_params, vectors_sha256

ARTIFACT_PATH = "model"     # the run's artifact folder holding the MLflow model
ENTRY = Path(__file__).with_name("pyfunc_entry.py")  # the model's code (no pickle)
BUNDLE_ARTIFACT = "bundle"  # the run's bundle, as training logged it (registry.BUNDLE_ARTIFACT)
POI_INDEX_FILE = "pois.faiss"
INDEX_MANIFEST = "manifest.json"
DEFAULT_K, MAX_K = 10, 100
EXAMPLE_TOKEN = "0" * 32    # an unknown visitor: answered by popularity
BUNDLE_DIGEST = "bundle_sha256"    # model_config keys: the digests of the copies' manifests, recorded at registration
INDEXES_DIGEST = "indexes_sha256"
REQUIREMENTS = ("mlflow", "faiss-cpu", "numpy", "pandas", "pyarrow", "pydantic-settings")

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "token"), ColSpec("long", "k", required=False),
                   ColSpec("string", "category", required=False), ColSpec("string", "city", required=False),
                   ColSpec("boolean", "exclude_visited", required=False),
                   ColSpec("boolean", "personalized", required=False)]),
    outputs=Schema([ColSpec("string", "token"), ColSpec(Array("string"), "poi_ids"),
                    ColSpec(Array("double"), "scores"), ColSpec("string", "strategy")]))


# ---------------------------------------------------------------- the model MLflow loads
def _present(value) -> bool:
    """A cell that holds a value (not None / NaN / pd.NA)."""
    return value is not None and not (np.isscalar(value) and pd.isna(value))


def _flag(row: dict, name: str, i: int) -> bool:
    value = row.get(name)
    if not _present(value):
        return True
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise WenlvError(f"row {i}: {name} must be true or false, got {value!r}")


def _k(row: dict, i: int) -> int:
    value = row.get("k")
    if not _present(value):
        return DEFAULT_K
    whole = isinstance(value, (int, np.integer)) or (isinstance(value, (float, np.floating)) and float(value).is_integer())
    if isinstance(value, (bool, np.bool_)) or not whole or not 1 <= int(value) <= MAX_K:
        raise WenlvError(f"row {i}: k must be a whole number from 1 to {MAX_K}, got {value!r}")
    return int(value)


def _text(row: dict, name: str, i: int) -> str | None:
    value = row.get(name)
    if not _present(value):
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise WenlvError(f"row {i}: {name} must be a string of at most 64 characters, got {str(value)[:40]!r}")
    return value


def recommend_frame(ranker: BundleRanker, frame: pd.DataFrame) -> pd.DataFrame:
    """One output row (token, poi_ids, scores, strategy) per request row of `frame`."""
    if not isinstance(frame, pd.DataFrame) or "token" not in frame.columns:
        raise WenlvError("the input needs a `token` column (one visitor token per row)")
    out = []
    for i, row in enumerate(frame.to_dict("records")):  # plain dicts: a Series per row costs ~8 ms
        token = row.get("token")
        if not is_visitor_token(token):  # never echo it: it may be a phone number
            raise WenlvError(f"row {i}: token must match {VISITOR_TOKEN_PATTERN} (a pseudonymous visitor token)")
        k, personalized = _k(row, i), _flag(row, "personalized", i)
        filters = Filters(category=_text(row, "category", i), city=_text(row, "city", i))
        bundle_row = ranker.bundle_row(token) if personalized else None
        vector = None if bundle_row is None else ranker.user_factors[bundle_row]
        visited = ranker.visited(bundle_row) if bundle_row is not None else np.empty(0, dtype=np.int64)
        ids, scores = ranker.top_k(vector, k, filters, visited if _flag(row, "exclude_visited", i) else None)
        out.append({"token": token, "poi_ids": ranker.table.poi_ids[ids].tolist(),
                    "scores": [float(s) for s in scores],
                    "strategy": STRATEGY_ALS if vector is not None else STRATEGY_POPULARITY})
    return pd.DataFrame(out, columns=["token", "poi_ids", "scores", "strategy"])


def read_poi_index(folder: Path, bundle: ModelBundle) -> VectorIndex:
    """The carried POI index, refused unless it was built from exactly the bundle's POI vectors."""
    manifest = json.loads((folder / INDEX_MANIFEST).read_text())
    vectors = np.ascontiguousarray(bundle.poi_factors, dtype=np.float32)
    if manifest.get("vectors_sha256") != vectors_sha256(vectors):
        raise WenlvError(f"{folder}: the POI index was not built from this bundle's POI factors")
    index = faiss.read_index(str(folder / POI_INDEX_FILE))
    if index.ntotal != len(vectors) or index.d != vectors.shape[1]:
        raise WenlvError(f"{folder}: the POI index holds {index.ntotal}×{index.d} vectors, "
                         f"the bundle {vectors.shape[0]}×{vectors.shape[1]}")
    return VectorIndex(index, vectors, dict(manifest.get("info") or {}))


class RecommenderModel(mlflow.pyfunc.PythonModel):
    """A registered version of wenlv-recommender: its bundle and POI index, ranked like serving ranks."""

    def load_context(self, context) -> None:
        recorded = context.model_config or {}
        bundle_dir, index_dir = Path(context.artifacts["bundle"]), Path(context.artifacts["indexes"])
        what = f"the pyfunc model's bundle copy ({bundle_dir})"
        try:
            bundle = ModelBundle.load(bundle_dir)  # checks every file against the copy's digests.json
        except digests.BundleIntegrityError as exc:
            raise digests.BundleIntegrityError(f"{what}: {exc}") from exc
        digests.check_registered(bundle.digests, recorded.get(BUNDLE_DIGEST), what)
        check_copy(index_dir, recorded.get(INDEXES_DIGEST), f"the pyfunc model's POI index ({index_dir})")
        self.ranker = BundleRanker(bundle, read_poi_index(index_dir, bundle))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return recommend_frame(self.ranker, model_input)


def check_copy(folder: Path, recorded: str | None, what: str) -> None:
    """Refuse a folder whose files do not match its digests.json, or whose digests.json is not the `recorded` one."""
    try:
        manifest = digests.verify_folder(folder)
    except digests.BundleIntegrityError as exc:
        raise digests.BundleIntegrityError(f"{what}: {exc}") from exc
    digests.check_registered(manifest, recorded, what)


# ---------------------------------------------------------------- writing it at registration
def write_poi_index(bundle: ModelBundle, folder: Path) -> dict:
    """Build the POI index as serving would (type by size) and write it with its manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    built = build_bundle_indexes(bundle, with_users=False, cache_dir=None).pois
    faiss.write_index(built.index, str(folder / POI_INDEX_FILE))
    manifest = {"vectors_sha256": vectors_sha256(built.vectors), "shape": list(built.vectors.shape),
                "params": index_params(len(built.vectors)), "info": built.info}
    (folder / INDEX_MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def input_example(bundle: ModelBundle) -> pd.DataFrame:
    """Two requests: a visitor the model knows (when the bundle holds a valid token) and a new one, filtered."""
    known = next((t for t in bundle.users["token"].astype(str) if is_visitor_token(t)), EXAMPLE_TOKEN)
    category = str(bundle.pois["category"].iloc[0]) if len(bundle.pois) else None
    return pd.DataFrame({"token": [known, EXAMPLE_TOKEN], "k": [DEFAULT_K, 5], "category": [None, category]})


def _requirements() -> list[str]:
    pinned = []
    for name in REQUIREMENTS:
        try:
            pinned.append(f"{name}=={package_version(name)}")
        except PackageNotFoundError:
            pinned.append(name)
    return pinned


def save_model(bundle_dir: Path, out: Path, registered_sha256: str) -> Path:
    """The MLflow model folder for one bundle (bundle and POI index as their artifacts), refused unless the bundle's
    digests.json is the one registration recorded (`registered_sha256`)."""
    bundle = ModelBundle.load(bundle_dir)
    digests.check_registered(bundle.digests, registered_sha256, f"the bundle copied into the pyfunc model ({bundle_dir})")
    index_dir = out.parent / "indexes"
    write_poi_index(bundle, index_dir)
    recorded = {BUNDLE_DIGEST: registered_sha256,
                INDEXES_DIGEST: digests.manifest_sha256(digests.write_manifest(index_dir))}
    mlflow.pyfunc.save_model(
        str(out), python_model=str(ENTRY), model_config=recorded,
        artifacts={"bundle": str(bundle_dir), "indexes": str(index_dir)},
        signature=SIGNATURE, input_example=input_example(bundle), pip_requirements=_requirements(),
        metadata={"wenlv_bundle_version": bundle.meta.get("version"), "needs": "the wenlv package installed"})
    return out


def log_model_for_run(client, run_id: str, registered_sha256: str) -> str:
    """Log the run's bundle as an MLflow model under `model/`; returns the source URI to register.

    `registered_sha256` is the bundle digest registration records (registry.bundle_digest_tags): the downloaded copy
    must match it, and the model carries it so its loader can check the copy again."""
    run = client.get_run(run_id)
    with tempfile.TemporaryDirectory(prefix="wenlv-pyfunc-") as tmp:
        bundle_dir = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=BUNDLE_ARTIFACT,
                                                         dst_path=str(Path(tmp) / "download"),
                                                         tracking_uri=client.tracking_uri)
        model_dir = save_model(Path(bundle_dir), Path(tmp) / "build" / ARTIFACT_PATH, registered_sha256)
        client.log_artifacts(run_id, str(model_dir), ARTIFACT_PATH)
    return f"{run.info.artifact_uri}/{ARTIFACT_PATH}"
