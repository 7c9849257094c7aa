"""`wenlv bench chart`: draw a benchmark's JSON as a PNG, ours beside the peer.

Every benchmark prints one JSON object; a chart of it is what people look at. The kind
of benchmark is read from the JSON itself, so any saved result can be drawn later:

    wenlv bench itinerary --json > it.json && wenlv bench chart it.json --out it.png
"""
from __future__ import annotations

import json
from pathlib import Path

from wenlv.errors import WenlvError


def register(sub) -> None:
    p = sub.add_parser("chart", help="draw a saved benchmark JSON as a PNG chart")
    p.add_argument("input", type=Path, help="a JSON file printed by `wenlv bench … --json`")
    p.add_argument("--out", type=Path, default=None, help="PNG path (default: the input with .png)")
    p.set_defaults(func=main)


def main(args) -> int:
    try:
        result = json.loads(args.input.read_text())
    except FileNotFoundError as exc:
        raise WenlvError(f"{args.input}: no such file") from exc
    except json.JSONDecodeError as exc:
        raise WenlvError(f"{args.input}: not JSON ({exc})") from exc
    out = draw(result, args.out or args.input.with_suffix(".png"))
    print(str(out))
    return 0


def kind_of(result: dict) -> str:
    """Which benchmark printed this object."""
    if result.get("bench") == "quality":
        return "quality"
    if "flickr" in result or "toptw" in result:
        return "itinerary"
    if result.get("benchmark") == "als" or "seconds_per_iteration" in result:
        return "als"
    if "fixed_rate" in result or "saturation" in result:
        return "serve"
    if result.get("bench") == "features" or "scales" in result:
        return "features"
    if result.get("bench") == "events":
        return "events"
    raise WenlvError("not a result of `wenlv bench itinerary|als|serve|features|events --json` (unknown keys: "
                     + ", ".join(sorted(result)[:8]) + ")")


def draw(result: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kind = kind_of(result)
    fig = _DRAW[kind](plt, result)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def _bars(ax, groups: list[str], series: dict[str, list[float]], ylabel: str, title: str,
          label_all: bool = True) -> None:
    """Grouped bars; values printed on every series, or on the first (ours) only when crowded."""
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [g + i * width - 0.4 + width / 2 for g in range(len(groups))]
        bars = ax.bar(xs, values, width, label=name)
        if label_all or i == 0:
            ax.bar_label(bars, fmt="%.3g", fontsize=7, padding=1)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=3 if len(series) > 3 else 1, loc="upper left")


def _itinerary(plt, result: dict):
    flickr = result.get("flickr", {})
    cities = sorted(flickr)
    by_len = [c for c in cities if flickr[c].get("by_query_length")]
    top = 2 if "toptw" in result else 1
    width = max(1, len(by_len))  # top-row panels span `width` columns, by-length panels `top`
    fig = plt.figure(figsize=(max(13, 3.4 * len(by_len)), 4.5 * (2 if by_len else 1)))
    grid = fig.add_gridspec(2 if by_len else 1, top * width)
    axes = [[fig.add_subplot(grid[0, k * width:(k + 1) * width]) for k in range(top)]]
    for k, city in enumerate(by_len):
        _f1_up_to_length(fig.add_subplot(grid[1, k * top:(k + 1) * top]), city, flickr[city], first=k == 0)
    if by_len:
        fig.subplots_adjust(hspace=0.35, wspace=0.45)
    if cities:
        series = {"Wenlv": [flickr[c]["f1"] for c in cities]}
        methods = sorted({m for c in cities for m in flickr[c].get("published_f1", {})})
        for m in methods:
            series[m] = [flickr[c].get("published_f1", {}).get(m, 0.0) for c in cities]
        _bars(axes[0][0], cities, series, "F1", "Flickr trajectories, CIKM'16 protocol (published beside ours)",
              label_all=False)
        axes[0][0].set_ylim(0.4, 1.0)
    if "toptw" in result:
        per = result["toptw"].get("per_instance", {})
        names = sorted(per)
        ax = axes[0][-1]
        ax.bar(names, [100 * (per[n].get("gap") or 0.0) for n in names], label="ILS (ours)")
        ax.plot(names, [100 * (per[n].get("greedy_gap") or _greedy_gap(per[n])) for n in names], "k.", label="greedy")
        ax.set_ylabel("gap to best known, %")
        ax.set_title(f"Solomon TOPTW, one route: mean {result['toptw'].get('mean_seconds', 0):.2f} s per instance")
        ax.tick_params(axis="x", rotation=90, labelsize=7)
        ax.legend(fontsize=8)
    return fig


def _f1_up_to_length(ax, city: str, row: dict, first: bool = True) -> None:
    """Mean F1 over the queries of at most L POIs against L, ours and popularity, beside the
    published best and PoiPopularity: where our popularity meets the published one is the
    subset the published means plausibly cover (they leave out queries their ILP baseline
    did not solve)."""
    # imported here, as matplotlib in draw(): `wenlv` imports this module at start-up, and this one imports numpy
    from wenlv.bench.flickr.metrics import mean_up_to_length

    table = row["by_query_length"]
    curves = (("f1", "Wenlv", "C0", "o-"), ("f1_popularity", "popularity (ours)", "C1", "s--"),
              ("f1_random_expected", "random, expected (ours)", "C4", "^-."))
    for key, label, colour, style in curves:
        if all(key in v for v in table.values()):
            ax.plot(*mean_up_to_length(table, key), style, color=colour, ms=3, label=label)
    published = row.get("published_f1", {})
    if row.get("published_best_f1"):
        ax.axhline(row["published_best_f1"], color="C2", lw=1, label="published best")
    for method, colour in (("PoiPopularity", "C1"), ("Random", "C4")):
        if method in published:
            ax.axhline(published[method], color=colour, lw=1, ls=":", label=f"published {method}")
    ax.set_xlabel("L (queries of at most L POIs)", fontsize=8)
    ax.set_title(f"{city}: mean F1, queries of ≤ L POIs", fontsize=9)
    if first:  # the same curves in every panel: one legend and one axis name
        ax.set_ylabel("mean F1")
        ax.legend(fontsize=6)


def _greedy_gap(row: dict) -> float:
    best, greedy = row.get("best_known"), row.get("greedy_score")
    return (best - greedy) / best if best and greedy is not None else 0.0


def _als(plt, result: dict):
    """Seconds per iteration of each ALS, as the goals count them (fit / iterations) and, where
    measured, the steady cost of one more iteration."""
    whole = result["seconds_per_iteration"]
    steady = result.get("steady_seconds_per_iteration", {})
    names = list(whole)
    series = {"fit time / iterations": [whole[n] for n in names]}
    if all(n in steady for n in names):
        series["one more iteration (steady)"] = [steady[n] for n in names]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    shape, params = result.get("data", {}), result.get("params", {})
    threads = params.get("threads", {}).get("federated", "?")
    _bars(ax, names, series, "seconds per iteration",
          f"ALS, {shape.get('users', '?')} users, {params.get('factors', '?')} factors, "
          f"{params.get('iterations', '?')} iterations, {threads} thread(s) (same data, same run)")
    if max(whole.values()) > 20 * min(whole.values()):
        ax.set_yscale("log")
    return fig


def _serve(plt, result: dict):
    phases = {name: result[name] for name in ("fixed_rate", "fixed_rate_healthz_peer", "saturation") if name in result}
    fig, ax = plt.subplots(figsize=(7, 4))
    _bars(ax, ["p50", "p95", "p99"],
          {f"{name} ({p.get('achieved_rps', p.get('throughput_rps', 0)):.0f} req/s)":
           [p.get("p50_ms", 0), p.get("p95_ms", 0), p.get("p99_ms", 0)] for name, p in phases.items()},
          "latency, ms", "Recommendations over loopback HTTP (recommend vs /healthz peer)")
    return fig


def _features(plt, result: dict):
    scales = result["scales"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    names = [s["scale"] for s in scales]
    rows = [s["raw_rows"] for s in scales]
    axes[0].plot(rows, [s["seconds"] for s in scales], "o-", label="feature pipeline")
    axes[0].plot(rows, [s["psi"]["seconds"] for s in scales], "s-", label="of which PSI")
    for name, x, y in zip(names, rows, [s["seconds"] for s in scales]):
        axes[0].annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("raw rows")
    axes[0].set_ylabel("seconds")
    axes[0].set_title("Spark feature pipeline: time against rows")
    axes[0].legend(fontsize=8)
    _bars(axes[1], names, {"PSI items/s per core": [s["psi"]["items_per_s_per_core"] for s in scales],
                           "matched/s per core": [s["psi"]["matched_per_s_per_core"] for s in scales]},
          "items per second per core", "PSI throughput")
    return fig


def _events(plt, result: dict):
    targets = [t for t in ("postgresql", "sqlite") if t in result]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    peers = [result[t].get("pgbench_rows_per_s") or result[t].get("direct_rows_per_s") or 0 for t in targets]
    _bars(axes[0], targets, {"POST /v1/events at saturation (HTTP, acknowledged)": [result[t]["events_per_s"] for t in targets],
                             "peer: pgbench / one in-process thread": peers},
          "events per second", "Events in batches of 100 vs the database")
    offered = result[targets[0]].get("fixed_rate", {}).get("offered_events_per_s") if targets else None
    at = f"\nat {offered:,} events/s offered" if offered else ""
    _bars(axes[1], targets, {"p50": [result[t]["p50_ms"] for t in targets],
                             "p99": [result[t]["p99_ms"] for t in targets]},
          "acknowledgement latency, ms", f"Answered once durable{at}")
    return fig


def _quality(plt, result: dict):
    """NDCG@10 and recall@10 per dataset: the champion beside each peer, 95% intervals over users."""
    data = result["datasets"]
    names = list(data)
    peers = list(dict.fromkeys(p for d in data.values() for p in d["peers"]))  # a peer may be absent from a dataset
    series = ["champion"] + peers
    fig, axes = plt.subplots(2, 1, figsize=(max(9, 2.2 * len(names)), 8))
    width = 0.8 / len(series)
    for ax, metric in zip(axes, ("ndcg@10", "recall@10")):
        for i, s in enumerate(series):
            absent = {"ci95": {metric: [0.0, 0.0]}, metric: 0.0}  # no bar where the peer was not run
            rows = [data[n]["champion"] if s == "champion" else data[n]["peers"].get(s, absent) for n in names]
            vals = [r[metric] for r in rows]
            err = [[v - r["ci95"][metric][0] for v, r in zip(vals, rows)],
                   [r["ci95"][metric][1] - v for v, r in zip(vals, rows)]]
            xs = [g + i * width - 0.4 + width / 2 for g in range(len(names))]
            bars = ax.bar(xs, vals, width, yerr=err, capsize=2, label=s, color="black" if s == "champion" else None)
            if s == "champion":
                ax.bar_label(bars, labels=[data[n]["champion"]["model"].replace("@", "\n@") for n in names],
                             fontsize=6, padding=8)
        ax.set_xticks(range(len(names)), names)
        ax.set_ylabel(metric)
        ax.set_title(f"{metric}: champion (chosen on validation) vs tuned peers, 95% intervals over users")
        ax.set_ylim(0, ax.get_ylim()[1] * 1.2)
        ax.legend(fontsize=7, ncol=7, loc="upper right")
    fig.tight_layout()
    return fig


_DRAW = {"itinerary": _itinerary, "als": _als, "serve": _serve, "features": _features, "events": _events,
         "quality": _quality}
