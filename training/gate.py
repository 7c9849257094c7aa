"""The quality half of the gate: does a candidate beat popularity on validation, and does it
hold up against the current champion?

Two checks, both recorded on the model version (tags `gate.<check>` = passed|failed, with
the numbers they compared) and on its run (metrics `gate_*`):

* `beats_popularity_on_validation` — the candidate's validation NDCG@10 (a fit on the
  training window minus its most recent part, scored on that part: training.tuning) is
  strictly above popularity's on the same window. A version without validation metrics
  cannot show it and is refused.
* `within_tolerance_of_champion` — its NDCG@10 is not below the current champion's by more
  than the tolerance (`WENLV_GATE_TOLERANCE`, absolute). Passes when there is no champion.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from wenlv.settings import get_settings
from wenlv.training import tracking

METRIC = "ndcg@10"
VALIDATION = f"validation_{METRIC}"
VALIDATION_POPULARITY = f"validation_popularity_{METRIC}"
BEATS_POPULARITY = "beats_popularity_on_validation"
WITHIN_TOLERANCE = "within_tolerance_of_champion"
TAG_PREFIX = "gate."


def default_tolerance() -> float:
    return get_settings().gate_tolerance


@dataclass
class QualityChecks:
    checks: dict[str, bool] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    numbers: dict[str, float] = field(default_factory=dict)


def quality_checks(candidate: dict, champion: dict | None, tolerance: float, metric: str = METRIC) -> QualityChecks:
    out = QualityChecks()
    val, pop = candidate.get(VALIDATION), candidate.get(VALIDATION_POPULARITY)
    if val is None or pop is None:
        out.checks[BEATS_POPULARITY] = False
        out.reasons.append(f"candidate has no validation metrics ({VALIDATION}, {VALIDATION_POPULARITY}): "
                           f"it cannot show that it beats popularity")
    else:
        out.checks[BEATS_POPULARITY] = bool(val > pop)
        out.numbers.update({VALIDATION: float(val), VALIDATION_POPULARITY: float(pop),
                            "margin_vs_popularity": float(val - pop)})
        if not val > pop:
            out.reasons.append(f"validation {metric} {val:.4f} does not beat popularity's {pop:.4f}")
    cand = candidate.get(metric)
    champ = None if champion is None else champion.get(metric)
    out.numbers["tolerance"] = float(tolerance)
    if cand is None:
        out.checks[WITHIN_TOLERANCE] = False
        out.reasons.append(f"candidate has no {metric}")
    else:
        out.numbers[metric] = float(cand)
        ok = champ is None or cand >= champ - tolerance
        out.checks[WITHIN_TOLERANCE] = bool(ok)
        if champ is not None:
            out.numbers[f"champion_{metric}"] = float(champ)
            out.numbers["margin_vs_champion"] = float(cand - champ)
        if not ok:
            out.reasons.append(f"{metric} {cand:.4f} is worse than the champion's {champ:.4f} by more than {tolerance}")
    return out


def record(c, model_name: str, version: int, run_id: str, result: QualityChecks) -> None:
    """Both checks and their numbers as version tags, and as `gate_*` metrics on the version's run."""
    for name, ok in result.checks.items():
        c.set_model_version_tag(model_name, str(version), f"{TAG_PREFIX}{name}", "passed" if ok else "failed")
    for name, value in result.numbers.items():
        c.set_model_version_tag(model_name, str(version), f"{TAG_PREFIX}{tracking.mlflow_name(name)}", f"{value:.6g}")
        c.log_metric(run_id, f"gate_{tracking.mlflow_name(name)}", value)
    for name, ok in result.checks.items():
        c.log_metric(run_id, f"gate_{name}", 1.0 if ok else 0.0)
