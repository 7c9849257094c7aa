"""`wenlv train`: feature blocks → federated ALS + towers → evaluation → MLflow run → registry.

One call does the whole flow of DESIGN §2's training box:
1. load and check the feature blocks (training.blocks);
2. fit the joint ALS factors (federated by default; compared with the central fit);
3. evaluate on the temporal split, beside popularity (training.evaluation);
4. train the split towers for cold start through masked sums (training.towers);
5. value each data source by Shapley over coalitions (training.shapley);
6. write the model bundle and the model card, scan them for leaks (privacy.leak_scan);
7. log the MLflow run, register a version and promote it if the quality gate passes.
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from wenlv.features import contracts
from wenlv.privacy import leak_scan, secure_agg
from wenlv.training import curves, evaluation, evaluation_run, factors, recommenders, registry, tracking, tuning
from wenlv.training.blocks import FeatureBlocks, Matrices, build_matrices
from wenlv.training.bundle import ModelBundle
from wenlv.errors import WenlvError

log = logging.getLogger(__name__)

RELATIVE_TOLERANCE = 1e-4  # federated vs implicit, per iteration: max |Δ| / max |user factor|


@dataclass
class TrainConfig:
    mode: str = "federated"
    parties: tuple[str, ...] = contracts.PARTIES
    factors: int = 16
    iterations: int = 10
    regularization: float = 1.0
    seed: int = 0
    k: int = 10
    fixed_point_bits: int = 32
    towers: bool = True
    tower_epochs: int = 30
    tower_noise_multiplier: float = 0.0
    tower_grad_noise_multiplier: float = 0.0
    tower_lr: float = 0.01
    tower_hidden: int = 32
    weighting: str = "none"   # confidence scaling each party applies to its own block (training.recommenders)
    alpha: float = 1.0
    validation_fraction: float = 0.2  # most recent share of the training pairs: the validation window
    tune: int = 0                     # trials of the hyperparameter search (0: use the settings as given)
    tune_minutes: float | None = None  # time budget of the search
    shapley: bool = True
    gate_tolerance: float | None = None  # None: WENLV_GATE_TOLERANCE
    promote: bool = True
    progress: bool = True  # tqdm bars on stderr

    def __post_init__(self):
        self.parties = tuple(self.parties)
        if self.mode not in factors.MODES:
            raise WenlvError(f"--mode must be one of {factors.MODES}, got {self.mode!r}")
        unknown = set(self.parties) - set(contracts.PARTIES)
        if unknown:
            raise WenlvError(f"--parties: unknown {sorted(unknown)}; known: {', '.join(contracts.PARTIES)}")
        if "tourism" not in self.parties:
            raise WenlvError("--parties must include tourism (the coordinator owns the POIs)")
        if self.factors < 1 or self.iterations < 1:
            raise WenlvError("--factors and --iterations must be at least 1")
        if self.weighting not in recommenders.WEIGHTINGS:
            raise WenlvError(f"--weighting must be one of {recommenders.WEIGHTINGS}, got {self.weighting!r}")
        if self.alpha <= 0:
            raise WenlvError(f"--alpha must be positive, got {self.alpha}")
        if self.tune < 0 or (self.tune_minutes is not None and self.tune_minutes <= 0):
            raise WenlvError("--tune must be at least 0 and --tune-minutes positive")
        if not 0 < self.validation_fraction < 1:
            raise WenlvError(f"validation fraction must be between 0 and 1, got {self.validation_fraction}")


# ---------------------------------------------------------------- steps
def fit_and_evaluate(blocks: FeatureBlocks, matrices: Matrices, config: TrainConfig, parties=None, curve=None):
    """ALS on `parties` (default: the config's), then metrics on the temporal split; `curve` sees each iteration."""
    model = factors.fit(tuning.weighted(matrices, config.weighting, config.alpha), parties or config.parties,
                        mode=config.mode, factors=config.factors,
                        iterations=config.iterations, regularization=config.regularization, seed=config.seed,
                        fixed_point_bits=config.fixed_point_bits, progress=config.progress, on_iteration=curve)
    metrics = evaluation.evaluate_scores(blocks, matrices, model.user_factors @ model.poi_factors.T, k=config.k)
    return model, metrics


def federated_check(model: factors.FactorModel, config: TrainConfig) -> tuple[bool, dict]:
    """Did every federated iteration equal implicit's? A central-mode run has nothing federated: fails."""
    diff = model.checks.get("federated_vs_central_max_abs_diff")
    if config.mode != "federated" or diff is None:
        return False, {}
    scale = max(float(np.max(np.abs(model.user_factors))), 1e-12)
    rel = diff / scale
    return bool(rel <= RELATIVE_TOLERANCE), {**model.checks, "federated_vs_central_max_rel_diff": rel}


def train_cold_start_towers(blocks, matrices, model, config: TrainConfig, out_dir: Path):
    """The towers in process: one TowerSide per party over its own user_features block."""
    from wenlv.training import towers  # lazy: torch loads only when towers are trained
    from wenlv.training.tower_party import TowerSide  # lazy: torch, as above

    parties = tuple(p for p in towers.TOWER_PARTIES if p in config.parties)
    if not parties:
        return None, {}
    frames = towers.side_frames(blocks, matrices.tokens, parties)
    return fit_cold_start_towers({p: TowerSide(p, frames[p]) for p in parties}, blocks, matrices,
                                 model.poi_factors, config, out_dir)


def fit_cold_start_towers(parties: dict, blocks, matrices, poi_factors, config: TrainConfig, out_dir: Path):
    """Train the towers through `parties` (training.party_api.TowerParty, in process or remote) on the
    known users' training-window POIs, export them to `out_dir`, and score prospects with the masked
    sum of their embeddings. Returns (TowerResult, metrics)."""
    from wenlv.training import towers  # lazy: torch loads only when towers are trained

    known = np.flatnonzero(~matrices.is_prospect)
    targets = (matrices.blocks["tourism"][known] > 0).astype(np.float32)
    result = towers.fit_tower_parties(parties, known, targets, poi_factors, epochs=config.tower_epochs,
                                      lr=config.tower_lr, hidden=config.tower_hidden,
                                      noise_multiplier=config.tower_noise_multiplier, seed=config.seed,
                                      grad_noise_multiplier=config.tower_grad_noise_multiplier,
                                      frac_bits=config.fixed_point_bits, progress=config.progress,
                                      eval_rows=np.arange(len(matrices.tokens)))
    towers.export_towers(result, out_dir)
    scores = result.embeddings @ poi_factors.T
    metrics = evaluation.evaluate_scores(blocks, matrices, scores, k=config.k, prefix="tower_")
    keep = {k: v for k, v in metrics.items() if "prospect" in k and "popularity" not in k}
    keep["tower_loss_first_epoch"], keep["tower_loss_last_epoch"] = result.losses[0], result.losses[-1]
    if result.epsilon is not None:
        keep["tower_dp_epsilon"] = result.epsilon
    if result.epsilon_labels is not None:
        keep["tower_dp_epsilon_labels"] = result.epsilon_labels
    return result, keep


def poi_table(blocks: FeatureBlocks, data_dir: str | Path | None) -> tuple[pd.DataFrame, str]:
    """POI metadata for the bundle (row order = the POI factor rows), and where it came from.

    The feature blocks carry only POI features; names, places and hours come from the
    tourism party's own `pois` table: `<features>/tourism/pois.parquet` if the feature job
    copied it, else `<data>/tourism/pois.(parquet|csv)`. Without either, the bundle still
    works for ranking but names are the ids, places unknown and hours 00:00–00:00, which
    serving's filters read as open all day (logged, marked in bundle.json).
    """
    features = blocks["tourism/poi_features"].sort_values("poi_id").reset_index(drop=True)
    candidates = [blocks.root / "tourism" / "pois.parquet"]
    if data_dir:
        candidates += [Path(data_dir) / "tourism" / "pois.parquet", Path(data_dir) / "tourism" / "pois.csv"]
    for path in candidates:
        if path.exists():
            raw = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
            missing = [c for c in contracts.POI_BUNDLE_COLUMNS if c not in raw.columns]
            if missing:
                raise WenlvError(f"{path}: POI table lacks column(s) {missing}")
            raw = raw[list(contracts.POI_BUNDLE_COLUMNS)].drop(columns=["category"])
            merged = features[["poi_id", "category", "popularity"]].merge(raw, on="poi_id", how="left")
            absent = merged["name"].isna().sum()
            if absent:
                raise WenlvError(f"{path}: {absent} POIs of the feature blocks are not in the POI table")
            return merged[list(contracts.POI_BUNDLE_COLUMNS) + ["popularity"]], str(path)
    log.warning("no POI table found (looked at %s); the bundle names POIs by id, without places or hours",
                ", ".join(str(p) for p in candidates))
    out = pd.DataFrame({"poi_id": features["poi_id"], "name": features["poi_id"], "category": features["category"],
                        "city": "", "lat": np.nan, "lon": np.nan, "open_time": "00:00", "close_time": "00:00",
                        "visit_minutes": 60, "price_cny": 0.0, "popularity": features["popularity"]})
    return out, "missing"


def build_bundle(blocks, matrices, model, pois: pd.DataFrame, meta: dict, towers_dir: Path | None) -> ModelBundle:
    if list(pois["poi_id"]) != list(matrices.items["tourism"]):
        raise WenlvError("internal: POI table and POI factors are not in the same order")
    history = blocks["tourism/interactions"][["token", "poi_id"]].drop_duplicates().reset_index(drop=True)
    users = pd.DataFrame({"token": matrices.tokens, "is_prospect": matrices.is_prospect})
    return ModelBundle(pois=pois.reset_index(drop=True), poi_factors=model.poi_factors, users=users,
                       user_factors=model.user_factors, history=history, meta=meta, towers_dir=towers_dir)


def model_card(blocks: FeatureBlocks, config: TrainConfig, metrics: dict, checks: dict, params: dict,
               shapley: dict | None) -> str:
    m = blocks.manifest
    k = config.k
    rows = "\n".join(f"| `{t}` | {v.get('rows', '?')} |" for t, v in sorted(m.get("tables", {}).items()))

    def fmt(name):
        v = metrics.get(name)
        return "n/a" if v is None else f"{v:.4f}"

    quality = "\n".join(
        f"| {label} | {fmt(f'{g}ndcg@{k}')} | {fmt(f'{g}recall@{k}')} | {fmt(f'{g}precision@{k}')} | "
        f"{fmt(f'{g}map@{k}')} | {fmt(f'popularity_{g}ndcg@{k}')} |"
        for label, g in (("all test users", ""), ("known visitors", "known_"), ("prospects", "prospect_"),
                         ("all, new POIs only (visited ones excluded)", "new_")))
    checks_md = "\n".join(f"- {name}: **{'passed' if ok else 'FAILED'}**" for name, ok in checks.items())
    shap = ("\n".join(f"- {p}: {v:+.4f} {shapley['metric']}" for p, v in shapley["values"].items())
            if shapley else "- not computed for this run")
    eps = metrics.get("tower_dp_epsilon")
    return f"""# Model card — wenlv-recommender

## Intended use
Ranking points of interest for visitors of the destination (known visitors: federated ALS
factors; cold-start visitors and prospects: split towers over carrier and internet side
features) and scoring audiences for the tourism group's campaigns. Not for decisions with
legal or similarly significant effects on a person; a non-personalised ranking must stay
available (PIPL art. 24). Scores are relative, not probabilities.

## Data
Feature blocks (schema {m.get('schema_version', '?')}) of the parties {', '.join(config.parties)},
keyed by PSI tokens. Training window {m.get('train_window', '?')}, test window {m.get('test_window', '?')}
(split {m.get('split_date', '?')}). No phone number or raw party statistic is part of this model.

| block | rows |
|---|---|
{rows}

## Quality (temporal split, k = {k}; Microsoft Recommenders definitions)
| users | NDCG | recall | precision | MAP | popularity NDCG |
|---|---|---|---|---|---|
{quality}

Catalog coverage {fmt(f'coverage@{k}')}, novelty {fmt(f'novelty@{k}')}.
Prospect audiences (top {metrics.get('prospect_audience_size', 'n/a')}): precision {fmt('prospect_audience_precision')},
lift over random {fmt('prospect_lift_vs_random')}, over popularity targeting {fmt('prospect_lift_vs_popularity')}.
Cold-start towers on prospects: NDCG {fmt(f'tower_prospect_ndcg@{k}')}, audience lift over random {fmt('tower_prospect_lift_vs_random')}.

## Value of each data source (Shapley split of the {shapley['metric'] if shapley else 'NDCG'} lift over tourism-only)
{shap}

## Privacy
- Training mode: **{config.mode}** (ALS user factors from masked sums of per-party statistics; item
  factors stay with their party; only the tourism POI factors are published).
- Secure aggregation: X25519 pairwise masks, AES-256-CTR streams, fixed point with {config.fixed_point_bits} fractional bits on Z_2^64.
- Federated vs central max |Δ factor|: {fmt('federated_vs_central_max_abs_diff')} (relative {fmt('federated_vs_central_max_rel_diff')}).
- Towers: coordinator sees only masked sums of embeddings; DP noise multiplier on the parties' embeddings
  {config.tower_noise_multiplier} (ε = {'n/a (no noise)' if eps is None else f'{eps:.3g}'}), on the returned
  gradients {config.tower_grad_noise_multiplier} (labels' ε = {fmt('tower_dp_epsilon_labels')}),
  δ = {params.get('tower_delta', 'n/a')}.
{checks_md}

## Parameters
```json
{json.dumps({k_: v for k_, v in params.items() if not k_.startswith('audit')}, indent=2, default=str)}
```
"""


# ---------------------------------------------------------------- the whole flow
def train(features_dir: str | Path, config: TrainConfig | None = None, *, tracking_uri: str | None = None,
          data_dir: str | Path | None = None, work_dir: str | Path | None = None) -> dict:
    """Train, evaluate, log, register and (gate permitting) promote one model version."""
    from wenlv.training import shapley as shapley_mod

    config = config or TrainConfig()
    started = time.perf_counter()
    blocks = FeatureBlocks.load(features_dir)
    matrices = build_matrices(blocks)
    work = Path(work_dir or tempfile.mkdtemp(prefix="wenlv-train-"))
    bundle_dir, card_dir = work / "bundle", work / "card"
    log.info("training %s ALS on %s: %d users, %s items", config.mode, ", ".join(config.parties),
             len(matrices.tokens), {p: matrices.blocks[p].shape[1] for p in config.parties})

    search = None
    if config.tune:
        search = tuning.tune_blocks(blocks, matrices, config, config.tune, tracking_uri=tracking_uri,
                                    timeout_s=None if config.tune_minutes is None else 60 * config.tune_minutes)
        config = replace(config, **search.best_params)
        validation = {k: v for k, v in search.best_metrics.items() if k != "trial_seconds"}
        log.info("search: best of %d trials is trial %d (objective %.4f): %s", len(search.trials),
                 search.best_trial, validation["objective"], search.best_params)
    else:
        validation = tuning.evaluate_on_validation(blocks, matrices, config)
    als_curve = curves.AlsCurve(blocks, matrices, config.regularization, config.k)
    model, metrics = fit_and_evaluate(blocks, matrices, config, curve=als_curve)
    metrics.update({f"{k}" if k.startswith("validation") else f"validation_{k}": v for k, v in validation.items()})
    fed_ok, fed_metrics = federated_check(model, config)
    metrics.update(fed_metrics)

    towers_dir = work / "towers"
    tower_result, tower_metrics = (train_cold_start_towers(blocks, matrices, model, config, towers_dir)
                                   if config.towers else (None, {}))
    metrics.update(tower_metrics)

    shapley = None
    if config.shapley and set(config.parties) == set(contracts.PARTIES):
        shapley = shapley_mod.data_source_values(fit_and_evaluate, blocks, matrices, config, full_metrics=metrics)
        metrics.update(shapley_mod.as_metrics(shapley))

    params = {**{k: v for k, v in asdict(config).items() if k != "progress"},
              **{f"als_{k}": v for k, v in model.params.items()},
              **(tower_result.params if tower_result else {}),
              "features_dir": str(Path(features_dir).resolve()), "secure_aggregation": secure_agg.SCHEME,
              "n_users": len(matrices.tokens), "n_pois": len(matrices.items["tourism"])}
    params["parties"] = ",".join(config.parties)
    if tower_result is not None:
        params["tower_delta"] = tower_result.params["tower_delta"]

    pois, poi_source = poi_table(blocks, data_dir)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    meta = {"created_at": created, "mode": config.mode, "parties": list(config.parties), "k": config.k,
            "metrics": evaluation.finite({k: v for k, v in metrics.items() if not k.startswith("shapley")}),
            "shapley": shapley, "poi_metadata": "ok" if poi_source != "missing" else "missing",
            "split_date": blocks.manifest.get("split_date"), "test_window": blocks.manifest.get("test_window")}
    bundle = build_bundle(blocks, matrices, model, pois, meta,
                          towers_dir if tower_result is not None else None)
    bundle.save(bundle_dir)

    checks = {"federated_matches_central": fed_ok}
    card_dir.mkdir(parents=True, exist_ok=True)
    card = model_card(blocks, config, metrics, {**checks, "artifacts_clean": True}, params, shapley)
    (card_dir / "model_card.md").write_text(card)
    if shapley:
        (card_dir / "shapley.json").write_text(json.dumps(shapley, indent=2))
    private_shapes = [matrices.blocks[p].shape for p in config.parties if p != "tourism"]
    private_shapes += [model.item_factors[p].shape for p in config.parties if p != "tourism"]
    scans = [leak_scan.scan_folder(d, forbidden_shapes=private_shapes) for d in (bundle_dir, card_dir)]
    findings = [f for s in scans for f in s.findings]
    checks["artifacts_clean"] = not findings
    if findings:
        log.error("privacy scan of the artifacts failed: %s", "; ".join(findings[:5]))
        card = model_card(blocks, config, metrics, checks, params, shapley)
        (card_dir / "model_card.md").write_text(card)

    tags = {f"{registry.CHECK_PREFIX}{k}": "passed" if v else "failed" for k, v in checks.items()}
    tags.update({"wenlv.mode": config.mode, "wenlv.parties": ",".join(config.parties), tuning.ROLE_TAG: "model"})
    if search is not None:
        tags.update({tuning.PARENT_TAG: search.parent_run_id, tuning.BEST_TRIAL_TAG: search.best_run_id,
                     "wenlv.best_trial": search.best_trial})
        params.update({"tune_trials": len(search.trials), "tune_parent_run_id": search.parent_run_id})
    metrics["train_seconds"] = time.perf_counter() - started
    logged = tracking.log_run(params=params, metrics=metrics, tags=tags,
                              artifacts={"bundle": bundle_dir, "": card_dir},
                              manifest_frame=blocks.manifest_frame(), features_dir=str(blocks.root),
                              tracking_uri=tracking_uri, run_name=f"{config.mode}-{created}",
                              steps={**als_curve.steps(), **(curves.tower_steps(tower_result.losses) if tower_result else {})})
    version = registry.register_version(logged["run_id"], logged["tracking_uri"])
    decision = (registry.promote(version, logged["tracking_uri"], config.gate_tolerance)
                if config.promote else None)
    return {"run_id": logged["run_id"], "model_version": version, "tracking_uri": logged["tracking_uri"],
            "artifact_uri": logged["artifact_uri"], "bundle_dir": str(bundle_dir), "metrics": metrics,
            "checks": checks, "privacy_findings": findings, "shapley": shapley,
            "promoted": bool(decision and decision.passed),
            "gate": decision.as_dict() if decision else None,
            "tuning": None if search is None else {"parent_run_id": search.parent_run_id, "trials": len(search.trials),
                                                   "best_trial": search.best_trial, "best_params": search.best_params,
                                                   "best_run_id": search.best_run_id},
            "champion_version": registry.champion_version(logged["tracking_uri"])}


def evaluate_version(features_dir: str | Path, version: int | None = None, tracking_uri: str | None = None,
                     k: int = 10, log: bool = True) -> dict:
    """Score a registered version's bundle (default: the champion) on a feature folder's test window.

    With `log`, the result is an MLflow evaluation run linked to the version (training.evaluation_run)."""
    if version is None:
        bundle, version = registry.load_champion_bundle(tracking_uri)
    else:
        bundle = registry.load_version_bundle(version, tracking_uri)
    blocks = FeatureBlocks.load(features_dir)
    matrices = build_matrices(blocks)
    user_row = pd.Series(np.arange(len(bundle.users)), index=bundle.users["token"].to_numpy())
    poi_col = pd.Series(np.arange(len(bundle.pois)), index=bundle.pois["poi_id"].to_numpy())
    if not set(matrices.items["tourism"]) <= set(poi_col.index):
        raise WenlvError(f"version {version} does not know every POI of {features_dir}")
    poi_factors = bundle.poi_factors[poi_col[matrices.items["tourism"]].to_numpy()]
    users = np.zeros((len(matrices.tokens), bundle.factors), dtype=np.float32)
    rows = user_row.reindex(matrices.tokens)
    known = rows.notna().to_numpy()
    users[known] = bundle.user_factors[rows[known].astype(int).to_numpy()]
    scores = users @ poi_factors.T
    metrics = {**evaluation.evaluate_scores(blocks, matrices, scores, k=k),
               **evaluation_run.user_intervals(blocks, matrices, scores, k)}
    out = {"model_version": version, "users_known_to_model": int(known.sum()), "metrics": evaluation.finite(metrics)}
    if log:
        out["evaluation_run_id"] = evaluation_run.log_evaluation(
            version, Path(features_dir).resolve(), {**metrics, "users_known_to_model": out["users_known_to_model"]},
            manifest_frame=blocks.manifest_frame(), params={"k": k, "test_window": blocks.manifest.get("test_window")},
            tracking_uri=tracking_uri)
    return out
