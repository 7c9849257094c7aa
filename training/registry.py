"""Registered model `wenlv-recommender`: versions, the `champion` alias, the quality gate.

A version becomes champion only through `promote`, which runs the quality gate:

* quality (training.gate) — the candidate beats popularity on its validation window, and
  its gate metric (NDCG@10 on the temporal split) is not worse than the current
  champion's by more than `tolerance` (absolute; `WENLV_GATE_TOLERANCE`); both checks are
  recorded on the version (tags `gate.*`) and its run (metrics `gate_*`);
* privacy — every privacy check recorded on the candidate's run passed: federated ALS
  matched the centralised fit within tolerance (so a `--mode central` run, which pools
  the raw blocks, never becomes champion), and the published artifacts were scanned
  clean of phone numbers and raw per-party statistics.

Each run records its checks as tags `privacy_check.<name>` = passed|failed. The registered
model's tag `champion_history` (JSON list of versions) lets `rollback` restore the
previous champion. Serving calls `load_champion_bundle`.

Integrity: `register_version` checks the run's bundle against its digests.json and records
the manifest's digest on the version and the run (`training.digests`); `load_version_bundle`
refuses a bundle whose files or manifest differ from what was registered. The registry is
only ever written here, by training and the promote/rollback commands, never by serving.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from wenlv.training import digests, gate, tracking
from wenlv.training.bundle import ModelBundle
from wenlv.errors import WenlvError

log = logging.getLogger(__name__)

MODEL_NAME = "wenlv-recommender"
ALIAS = "champion"
GATE_METRIC = "ndcg@10"
DEFAULT_TOLERANCE = 0.01  # the default of WENLV_GATE_TOLERANCE (training.gate.default_tolerance)
CHECK_PREFIX = "privacy_check."
REQUIRED_CHECKS = ("federated_matches_central", "artifacts_clean")
BUNDLE_ARTIFACT = "bundle"  # the run's bundle folder, what serving loads (the version's source is the pyfunc model)


@dataclass
class GateDecision:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    candidate: float | None = None
    champion: float | None = None
    quality: gate.QualityChecks | None = None

    def as_dict(self) -> dict:
        return {"passed": self.passed, "reasons": self.reasons, "candidate": self.candidate, "champion": self.champion,
                "quality_checks": None if self.quality is None else self.quality.checks}


def quality_gate(candidate_metrics: dict, checks: dict, champion_metrics: dict | None,
                 tolerance: float | None = None, metric: str = GATE_METRIC) -> GateDecision:
    """Pure decision: may a candidate with these metrics and privacy checks replace the champion?"""
    tolerance = gate.default_tolerance() if tolerance is None else tolerance
    reasons = []
    for name in REQUIRED_CHECKS:
        if checks.get(name) is not True:
            state = "missing" if name not in checks else "failed"
            reasons.append(f"privacy check {name} {state}")
    for name, ok in checks.items():
        if name not in REQUIRED_CHECKS and ok is not True:
            reasons.append(f"privacy check {name} failed")
    quality = gate.quality_checks(candidate_metrics, champion_metrics, tolerance, metric)
    reasons += quality.reasons
    return GateDecision(passed=not reasons, reasons=reasons, candidate=candidate_metrics.get(metric),
                        champion=None if champion_metrics is None else champion_metrics.get(metric), quality=quality)


# ---------------------------------------------------------------- registry operations
def _client(tracking_uri: str | None):
    return tracking.client(tracking_uri)


def _ensure_model(c) -> None:
    try:
        c.get_registered_model(MODEL_NAME)
    except MlflowException:
        c.create_registered_model(MODEL_NAME, description="Wenlv POI recommender: federated ALS factors, "
                                                          "cold-start towers, model card (see the run).")


def register_version(run_id: str, tracking_uri: str | None = None) -> int:
    """A new version of `wenlv-recommender`: the run's bundle as an MLflow pyfunc model (`model/`)."""
    # lazy: pyfunc_model loads FAISS, whose OpenMP OpenBLAS, once loaded, makes implicit's ALS
    # in the same process see 2 BLAS threads and warn; a training run registers after its fits
    from wenlv.training import pyfunc_model

    c = _client(tracking_uri)
    _ensure_model(c)
    run = c.get_run(run_id)
    integrity = bundle_digest_tags(c, run_id)  # before anything is registered: a mismatch registers nothing
    source = pyfunc_model.log_model_for_run(c, run_id, integrity[digests.REGISTERED_TAG])
    mv = c.create_model_version(MODEL_NAME, source=source, run_id=run_id,
                                tags={"ndcg_at_10": str(run.data.metrics.get("ndcg_at_10", "")), **integrity})
    return int(mv.version)


def bundle_digest_tags(c, run_id: str) -> dict[str, str]:
    """Check the run's `bundle/` artifact against its digests.json; record the manifest's digest on the run.

    Returns the tags to put on the model version. Raises BundleIntegrityError (nothing is registered)
    when the uploaded files do not match the manifest or there is none.
    """
    with tempfile.TemporaryDirectory(prefix="wenlv-register-") as tmp:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=BUNDLE_ARTIFACT, dst_path=tmp,
                                                    tracking_uri=c.tracking_uri)
        manifest = digests.verify_folder(local)
    tags = digests.registration_tags(manifest)
    c.set_tag(run_id, digests.REGISTERED_TAG, tags[digests.REGISTERED_TAG])
    return tags


def run_checks(c, run_id: str) -> dict:
    tags = c.get_run(run_id).data.tags
    return {k[len(CHECK_PREFIX):]: v == "passed" for k, v in tags.items() if k.startswith(CHECK_PREFIX)}


def champion_version(tracking_uri: str | None = None) -> int | None:
    c = _client(tracking_uri)
    try:
        return int(c.get_model_version_by_alias(MODEL_NAME, ALIAS).version)
    except MlflowException:
        return None


def _history(c) -> list[int]:
    raw = c.get_registered_model(MODEL_NAME).tags.get("champion_history", "[]")
    return [int(v) for v in json.loads(raw)]


def _set_champion(c, version: int, history: list[int]) -> None:
    c.set_registered_model_alias(MODEL_NAME, ALIAS, str(version))
    c.set_registered_model_tag(MODEL_NAME, "champion_history", json.dumps(history))


def gate_version(version: int, tracking_uri: str | None = None, tolerance: float | None = None) -> GateDecision:
    c = _client(tracking_uri)
    mv = _model_version(c, version)
    candidate = tracking.run_metrics(c, mv.run_id)
    current = champion_version(tracking_uri)
    champion = None
    if current is not None and current != int(version):
        champion = tracking.run_metrics(c, _model_version(c, current).run_id)
    return quality_gate(candidate, run_checks(c, mv.run_id), champion, tolerance)


def promote(version: int, tracking_uri: str | None = None, tolerance: float | None = None) -> GateDecision:
    """Make `version` champion if it passes the quality gate; the decision is recorded on the version."""
    c = _client(tracking_uri)
    decision = gate_version(version, tracking_uri, tolerance)
    gate.record(c, MODEL_NAME, int(version), _model_version(c, version).run_id, decision.quality)
    c.set_model_version_tag(MODEL_NAME, str(version), "quality_gate", "passed" if decision.passed else "refused")
    if decision.reasons:
        c.set_model_version_tag(MODEL_NAME, str(version), "quality_gate_reasons", "; ".join(decision.reasons)[:5000])
    if decision.passed:
        history = [v for v in _history(c) if v != int(version)] + [int(version)]
        _set_champion(c, int(version), history)
        log.info("version %s is now %s", version, ALIAS)
    else:
        log.warning("version %s refused by the quality gate: %s", version, "; ".join(decision.reasons))
    return decision


def rollback(tracking_uri: str | None = None) -> int:
    """Point `champion` back at the previous champion; returns that version."""
    c = _client(tracking_uri)
    try:
        history = _history(c)
    except Exception as exc:  # noqa: BLE001 - no registered model yet
        raise WenlvError(f"nothing to roll back: no registered model {MODEL_NAME!r}") from exc
    current = champion_version(tracking_uri)
    if current is not None and history and history[-1] == current:
        history = history[:-1]
    if not history:
        raise WenlvError("nothing to roll back to: there is no earlier champion")
    previous = history[-1]
    _set_champion(c, previous, history)
    if current is not None:
        c.set_model_version_tag(MODEL_NAME, str(current), "rolled_back", "true")
    log.info("rolled back %s from version %s to %s", ALIAS, current, previous)
    return previous


def _model_version(c, version: int):
    try:
        return c.get_model_version(MODEL_NAME, str(int(version)))
    except MlflowException as exc:
        raise WenlvError(f"{MODEL_NAME} has no version {version}") from exc


def download_bundle(version: int, tracking_uri: str | None = None, dst: str | Path | None = None) -> Path:
    """The version's bundle files in `dst` (default: a new temporary folder, removed again if the download fails)."""
    c = _client(tracking_uri)
    mv = _model_version(c, version)
    temporary = dst is None
    dst = Path(dst or tempfile.mkdtemp(prefix=f"wenlv-bundle-v{version}-"))
    try:
        path = mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path=BUNDLE_ARTIFACT,
                                                   dst_path=str(dst), tracking_uri=c.tracking_uri)
    except BaseException:
        if temporary:
            shutil.rmtree(dst, ignore_errors=True)
        raise
    return Path(path)


def load_version_bundle(version: int, tracking_uri: str | None = None, dst: str | Path | None = None) -> ModelBundle:
    """A registered version's bundle, refused (BundleIntegrityError) unless its files are the ones registered.

    Without `dst` the files go to a temporary folder the bundle owns: `bundle.release()` (or
    dropping the bundle) removes it.
    """
    c = _client(tracking_uri)
    mv = _model_version(c, version)
    owned = None if dst is not None else Path(tempfile.mkdtemp(prefix=f"wenlv-bundle-v{int(version)}-"))
    try:
        bundle = ModelBundle.load(download_bundle(version, tracking_uri, dst or owned))
        digests.check_registered(bundle.digests, mv.tags.get(digests.REGISTERED_TAG), f"{MODEL_NAME} version {version}")
    except BaseException:
        if owned is not None:
            shutil.rmtree(owned, ignore_errors=True)
        raise
    if owned is not None:
        bundle.own_folder(owned)
    return bundle


def load_champion_bundle(tracking_uri: str | None = None, dst: str | Path | None = None) -> tuple[ModelBundle, int]:
    """(bundle, version) of the current champion — what serving loads. Raises WenlvError if none."""
    version = champion_version(tracking_uri)
    if version is None:
        raise WenlvError(f"no {ALIAS} version of {MODEL_NAME} in {tracking.resolve_tracking_uri(tracking_uri)}; "
                         f"train one with `wenlv train`")
    return load_version_bundle(version, tracking_uri, dst), version
