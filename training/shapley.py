"""The value of each data source: Shapley split of the lift over the tourism-only model (DESIGN §8).

The tourism party's own data is the base. The carrier and the internet platform are the
two players; a coalition's value v(S) is the offline metric (default NDCG@10 on the
temporal split) of a model retrained on tourism + S. With two players:

    φ_carrier  = ½ [v({c}) − v(∅)] + ½ [v({c, i}) − v({i})]
    φ_internet = ½ [v({i}) − v(∅)] + ½ [v({c, i}) − v({c})]

and φ_carrier + φ_internet = v({c, i}) − v(∅), the whole lift (efficiency). The split is
stored per model version: MLflow metrics `shapley_<party>` and the artifact `shapley.json`.
"""
from __future__ import annotations

from itertools import combinations
from math import factorial

PLAYERS = ("carrier", "internet")
BASE = "tourism"


def shapley_values(value: dict[frozenset, float], players=PLAYERS) -> dict[str, float]:
    """Exact Shapley values from the value of every coalition (keys: frozensets of players)."""
    n = len(players)
    out = {}
    for p in players:
        others = [q for q in players if q != p]
        total = 0.0
        for size in range(n):
            weight = factorial(size) * factorial(n - size - 1) / factorial(n)
            for coalition in combinations(others, size):
                s = frozenset(coalition)
                total += weight * (value[s | {p}] - value[s])
        out[p] = total
    return out


def data_source_values(fit_and_evaluate, blocks, matrices, config, metric: str | None = None,
                       full_metrics: dict | None = None) -> dict:
    """Retrain on every coalition (same mode and hyper-parameters) and split the lift.

    `fit_and_evaluate(blocks, matrices, config, parties=...) -> (model, metrics)` is the
    pipeline's own fit, passed in so that this module stays below the pipeline.
    """
    metric = metric or f"ndcg@{config.k}"
    value, detail = {}, {}
    for size in range(len(PLAYERS) + 1):
        for coalition in combinations(PLAYERS, size):
            s = frozenset(coalition)
            if s == frozenset(PLAYERS) and full_metrics is not None:
                metrics = full_metrics
            else:
                _, metrics = fit_and_evaluate(blocks, matrices, config, parties=(BASE, *coalition))
            value[s] = float(metrics[metric])
            detail["+".join((BASE, *coalition))] = {m: float(metrics[m]) for m in
                                                     (metric, f"recall@{config.k}", f"prospect_{metric}",
                                                      "prospect_lift_vs_random") if m in metrics}
    values = shapley_values(value)
    return {"metric": metric, "base": BASE, "values": values,
            "lift": value[frozenset(PLAYERS)] - value[frozenset()], "coalitions": detail}


def as_metrics(result: dict) -> dict:
    out = {f"shapley_{p}": v for p, v in result["values"].items()}
    out["shapley_total_lift"] = result["lift"]
    return out
