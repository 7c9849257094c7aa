"""A registered model version's FAISS indexes, kept as the `indexes/` artifact of its MLflow run.

Layout of the artifact (one per run, so one per model version):

    indexes/manifest.json   {"format", "model_version", "bundle_version", "run_id",
                             "indexes": {name: {"file", "file_sha256", "vectors_sha256",
                                                "shape", "params", "info"}}}
    indexes/pois.faiss      faiss.write_index of the POI index (queried by user vectors)
    indexes/users.faiss     the user index (queried by POI vectors), when serving audiences

`indexes_for_version` downloads and uses the artifact only when the manifest names this
version, run and bundle, every wanted index was built from exactly the bundle's vectors
(sha256) with the parameters serving would use now, and each file is intact (sha256, then
`faiss.read_index`, then size, dimension and metric). Anything else is refused with a log
line saying why, and the indexes are built and uploaded again, so a stale, foreign or
corrupt index is never served. An upload that fails is logged; the built indexes serve.

Building and uploading happen only for a bundle whose files were verified against the digests
recorded at registration (`bundle.digests`, checked by `lifecycle.model_from_registry`): the
vectors are then the registered ones, so a rebuilt index is a faithful one. A bundle with
unchecked files is refused here (BundleIntegrityError) and nothing is written to the registry.
"""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import faiss
import mlflow
from mlflow import MlflowClient

from wenlv.serving.indexes import (DEFAULT_CACHE, EXACT_BELOW, TARGET_RECALL, BundleIndexes, VectorIndex,
                             build_bundle_indexes, bundle_index_inputs, index_params, vectors_sha256)
from wenlv.training.digests import REMEDY, BundleIntegrityError, file_sha256
from wenlv.training.tracking import resolve_tracking_uri

log = logging.getLogger(__name__)

ARTIFACT_DIR = "indexes"
MANIFEST = "manifest.json"
FORMAT = 1
_INDEX_TYPES = {"flat": faiss.IndexFlat, "ivf": faiss.IndexIVF, "hnsw": faiss.IndexHNSW}


class IndexArtifactRefused(Exception):
    """The stored indexes do not belong to (or do not faithfully index) the bundle being served."""


_file_sha256 = file_sha256  # one definition (training.digests); the name tests and callers use


def _bundle_version(bundle) -> str | None:
    value = bundle.meta.get("version")
    return None if value in (None, "") else str(value)


def expected_manifest(bundle, version: str, run_id: str, *, with_users: bool = True,
                      exact_below: int = EXACT_BELOW, target_recall: float = TARGET_RECALL) -> dict:
    """The manifest a valid artifact for this bundle and version must carry (without file digests)."""
    indexes = {}
    for name, (vectors, _) in bundle_index_inputs(bundle, with_users=with_users).items():
        indexes[name] = {"file": f"{name}.faiss", "vectors_sha256": vectors_sha256(vectors), "shape": list(vectors.shape),
                         "params": index_params(len(vectors), exact_below=exact_below, target_recall=target_recall)}
    return {"format": FORMAT, "model_version": str(version), "bundle_version": _bundle_version(bundle),
            "run_id": run_id, "indexes": indexes}


def check_manifest(found: dict, expected: dict) -> None:
    """Raise IndexArtifactRefused naming the first thing that does not match."""
    for key in ("format", "model_version", "bundle_version", "run_id"):
        if found.get(key) != expected[key]:
            raise IndexArtifactRefused(f"manifest {key} is {found.get(key)!r}, expected {expected[key]!r}")
    stored = found.get("indexes") or {}
    for name, want in expected["indexes"].items():
        got = stored.get(name)
        if got is None:
            raise IndexArtifactRefused(f"no {name} index in the artifact")
        for key in ("file", "vectors_sha256", "shape", "params"):
            if got.get(key) != want[key]:
                raise IndexArtifactRefused(f"{name} index {key} is {got.get(key)!r}, expected {want[key]!r}")


def read_indexes(local_dir: Path, expected: dict, bundle) -> BundleIndexes:
    """The indexes in a downloaded artifact directory, each verified against the bundle's vectors."""
    manifest_path = Path(local_dir) / MANIFEST
    try:
        found = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise IndexArtifactRefused(f"unreadable manifest ({type(exc).__name__}: {exc})") from exc
    check_manifest(found, expected)
    loaded = {}
    inputs = bundle_index_inputs(bundle, with_users="users" in expected["indexes"])
    for name, want in expected["indexes"].items():
        entry = found["indexes"][name]
        path = Path(local_dir) / want["file"]
        if not path.exists():
            raise IndexArtifactRefused(f"{want['file']} is missing")
        if _file_sha256(path) != entry.get("file_sha256"):
            raise IndexArtifactRefused(f"{want['file']} does not match its recorded sha256")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise IndexArtifactRefused(f"{want['file']} is not a readable FAISS index ({exc})") from exc
        n, d = want["shape"]
        kind = want["params"]["kind"]
        if (index.ntotal != n or index.d != d or index.metric_type != faiss.METRIC_INNER_PRODUCT
                or not isinstance(index, _INDEX_TYPES[kind])):
            raise IndexArtifactRefused(f"{want['file']} holds a {type(index).__name__} of {index.ntotal}×{index.d}, "
                                       f"expected an inner-product {kind} index of {n}×{d}")
        loaded[name] = VectorIndex(index, inputs[name][0], dict(entry.get("info") or {}))
    return BundleIndexes(pois=loaded["pois"], users=loaded.get("users"), source="mlflow")


def write_indexes(indexes: BundleIndexes, expected: dict, local_dir: Path) -> dict:
    """Write the index files and their manifest into `local_dir`; returns the manifest."""
    local_dir = Path(local_dir)
    local_dir.mkdir(parents=True, exist_ok=True)
    manifest = json.loads(json.dumps(expected))
    for name, entry in manifest["indexes"].items():
        index: VectorIndex = getattr(indexes, name)
        path = local_dir / entry["file"]
        faiss.write_index(index.index, str(path))
        entry["file_sha256"] = _file_sha256(path)
        entry["info"] = index.info
    (local_dir / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def registry_uri(tracking_uri: str | None) -> str | None:
    """The same store the loader reads (training.tracking's default) when no URI is given."""
    if tracking_uri:
        return tracking_uri
    return resolve_tracking_uri(None)


def fetch_indexes(client, run_id: str, expected: dict, bundle, tracking_uri: str | None) -> BundleIndexes | None:
    """The run's stored indexes if valid; None when the run has none. Raises IndexArtifactRefused."""
    if not client.list_artifacts(run_id, ARTIFACT_DIR):
        return None
    with tempfile.TemporaryDirectory(prefix="wenlv-indexes-") as tmp:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=ARTIFACT_DIR, dst_path=tmp,
                                                    tracking_uri=tracking_uri)
        return read_indexes(Path(local), expected, bundle)  # read_index copies into memory


def publish_indexes(client, run_id: str, indexes: BundleIndexes, expected: dict) -> dict:
    """Upload the indexes and manifest as the run's `indexes/` artifact (replacing what was there)."""
    with tempfile.TemporaryDirectory(prefix="wenlv-indexes-") as tmp:
        manifest = write_indexes(indexes, expected, Path(tmp))
        client.log_artifacts(run_id, tmp, ARTIFACT_DIR)
    return manifest


def indexes_for_version(bundle, version: str, run_id: str, *, tracking_uri: str | None = None,
                        with_users: bool = True, cache_dir: Path | None = DEFAULT_CACHE,
                        exact_below: int = EXACT_BELOW) -> BundleIndexes:
    """The model version's indexes: its MLflow artifact when valid, else built here and uploaded.

    `bundle` must have been loaded from files verified against the version's registered digests.
    """
    if getattr(bundle, "digests", None) is None:
        raise BundleIntegrityError(f"model version {version}: its bundle was not loaded from files checked against "
                                   f"their digests, so no index is built or stored for it; {REMEDY}")
    tracking_uri = registry_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    expected = expected_manifest(bundle, version, run_id, with_users=with_users, exact_below=exact_below)
    try:
        stored = fetch_indexes(client, run_id, expected, bundle, tracking_uri)
    except IndexArtifactRefused as exc:
        log.warning("refusing the stored indexes of model version %s (run %s): %s; rebuilding them", version, run_id, exc)
        stored = None
    except Exception as exc:  # noqa: BLE001 - the artifact store may be unreachable; building still works
        log.warning("could not read the stored indexes of model version %s (run %s): %s: %s; rebuilding them",
                    version, run_id, type(exc).__name__, exc)
        stored = None
    if stored is not None:
        log.info("model version %s: indexes from MLflow run %s", version, run_id)
        return stored
    built = build_bundle_indexes(bundle, with_users=with_users, cache_dir=cache_dir, exact_below=exact_below)
    try:
        publish_indexes(client, run_id, built, expected)
        log.info("model version %s: built indexes uploaded to MLflow run %s under %s/", version, run_id, ARTIFACT_DIR)
    except Exception as exc:  # noqa: BLE001 - serve the valid indexes we built; the next load retries
        log.warning("could not upload the indexes of model version %s to run %s: %s: %s",
                    version, run_id, type(exc).__name__, exc)
    return built


def version_run_id(version: str, *, tracking_uri: str | None = None, model_name: str) -> str:
    """The MLflow run a registered model version was created from."""
    return MlflowClient(tracking_uri=registry_uri(tracking_uri)).get_model_version(model_name, str(version)).run_id

