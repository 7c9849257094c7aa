"""`wenlv train --parties name=https://…`: federated ALS over the party services, logged to MLflow
and registered like an in-process run.

The coordinator is the tourism organisation: besides the masked sums it reads only its own
feature folder (the tourism blocks, the carrier's user token list and the run's manifest,
as `wenlv features --parties` leaves them), never another party's block. From the fit it
keeps the user factors and the POI factors; the carrier's and the internet platform's item
factors stay on their own disks (the run records where, on their side). The split towers then
train over the same services (training.remote_towers): each of those two parties trains its
bottom tower on its own side features and keeps it on its own disk; the coordinator sees masked
sums of embeddings, and at the end receives the trained towers for the served user tower
(`towers/` in the bundle, as an in-process version).

The registered version records how it was trained, not data: each party's endpoint and the
SHA-256 fingerprint of the certificate the coordinator pinned for it, the bytes that
crossed per party, the rounds aborted, and the secure-aggregation scheme. The bundle holds
what an in-process version holds (POIs, POI factors, user tokens and factors, the tourism
history); it is scanned for private shapes before it is logged.

What a remote coordinator cannot check: that federated equals centralised ALS (it holds no
other block; tests/test_party_namespaces.py checks that equality for the deployment). The
check is therefore recorded as not run, and the quality gate (which requires it) does not
promote a remote version on its own: `wenlv promote` after the check has been run elsewhere.
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from wenlv.features import contracts
from wenlv.privacy import leak_scan, secure_agg, tls
from wenlv.training import evaluation, registry, tracking
from wenlv.training.als_data import load_party_block, load_users
from wenlv.training.blocks import FeatureBlocks, Matrices
from wenlv.training.factors import COMPUTE_DTYPE
from wenlv.training.federated_als import FederatedALS
from wenlv.training.party_api import TOWER_PARTIES
from wenlv.training.pipeline import TrainConfig, build_bundle, fit_cold_start_towers, model_card, poi_table
from wenlv.training.remote import RemoteParty, WireStats
from wenlv.training.remote_towers import RemoteTowerParty
from wenlv.errors import WenlvError

log = logging.getLogger(__name__)

TOURISM_TABLES = ("interactions", "test_interactions", "poi_features")
DEPLOYMENT_TAG = "party-services"


def tourism_view(features_dir: str | Path) -> tuple[FeatureBlocks, Matrices]:
    """The coordinator's own blocks as FeatureBlocks/Matrices with the tourism columns only.

    `is_prospect` is computed here as the carrier computes it (a user with no tourism
    interaction before the split), from tourism's own block."""
    root = Path(features_dir)
    manifest_file = root / "manifest.json"
    if not manifest_file.is_file():
        raise WenlvError(f"{root}: manifest.json is missing (the tourism party's folder after `wenlv features`)")
    manifest = json.loads(manifest_file.read_text())
    tokens = load_users(root)
    tables = {}
    for name in TOURISM_TABLES:
        table = contracts.table(f"tourism.{name}")
        path = root / "tourism" / f"{name}.parquet"
        if not path.exists():
            raise WenlvError(f"{root}: feature block tourism/{name} is missing ({path})")
        tables[f"tourism/{name}"] = pd.read_parquet(path)[list(table.columns)]
    block = load_party_block(root, "tourism", tokens)
    history = set(tables["tourism/interactions"]["token"].astype(str))
    is_prospect = np.array([t not in history for t in tokens], dtype=bool)
    tables["carrier/users"] = pd.DataFrame({"token": tokens, "is_prospect": is_prospect})
    blocks = FeatureBlocks(root=root, manifest=manifest, tables=tables)
    return blocks, Matrices(tokens=tokens, is_prospect=is_prospect, items={"tourism": block.items},
                            blocks={"tourism": block.matrix})


class _Fit:
    """What the bundle and the model card need of a fit (training.factors.FactorModel's fields)."""

    def __init__(self, user_factors, poi_factors, params):
        self.user_factors, self.poi_factors, self.params = user_factors, poi_factors, params
        self.item_factors = {"tourism": poi_factors}


def _remote_towers(parties: dict[str, str], tls_dir, blocks, matrices, fit: _Fit, config: TrainConfig, out_dir: Path,
                   timeout: float, retries: int):
    """The split towers over the carrier's and the internet platform's services (training.towers'
    driver with RemoteTowerParty handles); (result, metrics, wire stats), or (None, {}, stats) when
    the run has no towers."""
    stats = WireStats()
    names = [p for p in TOWER_PARTIES if p in parties]
    if not config.towers or not names:
        return None, {}, stats
    handles = {p: RemoteTowerParty(p, parties[p], tls_dir, timeout=timeout, retries=retries, stats=stats)
               for p in names}
    try:
        result, metrics = fit_cold_start_towers(handles, blocks, matrices, fit.poi_factors, config, out_dir)
    finally:
        for h in handles.values():
            h.close()
    return result, metrics, stats


def train_remote(features_dir: str | Path, parties: dict[str, str], tls_dir: str | Path, config: TrainConfig, *,
                 timeout: float = 300.0, retries: int = 4, tracking_uri: str | None = None,
                 data_dir: str | Path | None = None, work_dir: str | Path | None = None) -> dict:
    """Fit over the party services, evaluate on tourism's test window, log, register (no promotion)."""
    if "tourism" not in parties:
        raise WenlvError("the tourism party (owner of the POI block) must take part")
    started = time.perf_counter()
    blocks, matrices = tourism_view(features_dir)
    work = Path(work_dir or tempfile.mkdtemp(prefix="wenlv-train-remote-"))
    bundle_dir, card_dir = work / "bundle", work / "card"
    stats = WireStats()
    handles = {p: RemoteParty(p, url, tls_dir, timeout=timeout, retries=retries, stats=stats)
               for p, url in parties.items()}
    try:
        model = FederatedALS(factors=config.factors, iterations=config.iterations,
                             regularization=config.regularization, random_state=config.seed, dtype=COMPUTE_DTYPE,
                             fixed_point_bits=config.fixed_point_bits, collect_items=("tourism",),
                             show_progress=config.progress,
                             audit_path=work / "audit.jsonl")
        model.fit_parties(handles)
    finally:
        for h in handles.values():
            h.close()
    if model.user_factors.shape[0] != len(matrices.tokens):
        raise WenlvError(f"the parties trained on {model.user_factors.shape[0]} users, the coordinator's folder "
                         f"has {len(matrices.tokens)}: not the same feature run")
    fit = _Fit(np.asarray(model.user_factors, np.float32), np.asarray(model.item_factors["tourism"], np.float32),
               {"factors": config.factors, "iterations": config.iterations, "regularization": config.regularization,
                "fixed_point_bits": config.fixed_point_bits, "cg_steps": model.cg_steps})
    tower_result, tower_metrics, tower_stats = _remote_towers(parties, tls_dir, blocks, matrices, fit, config,
                                                              work / "towers", timeout, retries)
    metrics = evaluation.evaluate_scores(blocks, matrices, fit.user_factors @ fit.poi_factors.T, k=config.k)
    # "popularity targeting" ranks prospects by their activity in the partners' blocks, which a
    # remote coordinator does not hold: that baseline is not measured here
    metrics = {k: v for k, v in metrics.items() if k not in ("prospect_popularity_precision",
                                                             "prospect_lift_vs_popularity")}
    metrics.update({"rounds_aborted": model.rounds_aborted_, "fit_seconds": model.timings_["wall_seconds"]})
    metrics.update(tower_metrics)
    for p in parties:
        metrics[f"wire_bytes_sent_{p}"] = stats.sent.get(p, 0)
        metrics[f"wire_bytes_received_{p}"] = stats.received.get(p, 0)
    for p in tower_stats.sent:
        metrics[f"tower_wire_bytes_sent_{p}"] = tower_stats.sent[p]
        metrics[f"tower_wire_bytes_received_{p}"] = tower_stats.received.get(p, 0)

    pins = {p: tls.fingerprint(Path(tls_dir) / f"{p}.pem") for p in parties}
    params = {**{k: v for k, v in vars(config).items() if k != "progress"},
              **{f"als_{k}": v for k, v in fit.params.items()},
              "parties": ",".join(parties), "deployment": DEPLOYMENT_TAG, "secure_aggregation": secure_agg.SCHEME,
              "features_dir": str(Path(features_dir).resolve()), "federated_run_id": model.run_id_,
              "n_users": len(matrices.tokens), "n_pois": len(matrices.items["tourism"]),
              "coordinator_cert_sha256": tls.fingerprint(Path(tls_dir) / f"{tls.COORDINATOR}.pem"),
              **{f"party_{p}_url": url for p, url in parties.items()},
              **{f"party_{p}_cert_sha256": pins[p] for p in parties},
              **{f"party_{p}_kept_factors_at": model.saved_.get(p, "") for p in parties if p != "tourism"},
              **(tower_result.params if tower_result else {}),
              **({f"party_{p}_kept_tower_at": path for p, path in tower_result.saved.items()} if tower_result else {})}

    pois, poi_source = poi_table(blocks, data_dir)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    meta = {"created_at": created, "mode": config.mode, "deployment": DEPLOYMENT_TAG, "parties": list(parties),
            "k": config.k, "metrics": evaluation.finite(metrics), "shapley": None,
            "poi_metadata": "ok" if poi_source != "missing" else "missing",
            "split_date": blocks.manifest.get("split_date"), "test_window": blocks.manifest.get("test_window")}
    build_bundle(blocks, matrices, fit, pois, meta, work / "towers" if tower_result else None).save(bundle_dir)

    checks = {"artifacts_clean": True}
    card_dir.mkdir(parents=True, exist_ok=True)
    (card_dir / "model_card.md").write_text(model_card(blocks, config, metrics, checks, params, None))
    (card_dir / "deployment.json").write_text(json.dumps(
        {"parties": {p: {"url": parties[p], "cert_sha256": pins[p]} for p in parties},
         "wire_bytes": {p: {"sent": stats.sent.get(p, 0), "received": stats.received.get(p, 0)} for p in parties},
         "tower_wire_bytes": {p: {"sent": tower_stats.sent[p], "received": tower_stats.received.get(p, 0)}
                              for p in tower_stats.sent},
         "federated_vs_central": "not checked by a remote coordinator (it holds no other block)"}, indent=2))
    scans = [leak_scan.scan_folder(d) for d in (bundle_dir, card_dir)]  # it never held another party's block
    findings = [f for s in scans for f in s.findings]
    checks["artifacts_clean"] = not findings
    if findings:
        log.error("privacy scan of the artifacts failed: %s", "; ".join(findings[:5]))

    tags = {f"{registry.CHECK_PREFIX}{k}": "passed" if v else "failed" for k, v in checks.items()}
    tags.update({"wenlv.mode": config.mode, "wenlv.parties": ",".join(parties), "wenlv.deployment": DEPLOYMENT_TAG})
    metrics["train_seconds"] = time.perf_counter() - started
    logged = tracking.log_run(params=params, metrics=metrics, tags=tags,
                              artifacts={"bundle": bundle_dir, "": card_dir},
                              manifest_frame=blocks.manifest_frame(), features_dir=str(blocks.root),
                              tracking_uri=tracking_uri, run_name=f"{config.mode}-parties-{created}")
    version = registry.register_version(logged["run_id"], logged["tracking_uri"])
    return {"run_id": logged["run_id"], "model_version": version, "tracking_uri": logged["tracking_uri"],
            "artifact_uri": logged["artifact_uri"], "bundle_dir": str(bundle_dir), "metrics": metrics,
            "checks": checks, "privacy_findings": findings, "parties": params["parties"],
            "pins": pins, "kept_by_parties": model.saved_, "rounds_aborted": model.rounds_aborted_,
            "towers_kept_by_parties": tower_result.saved if tower_result else {},
            "promoted": False, "champion_version": registry.champion_version(logged["tracking_uri"])}
