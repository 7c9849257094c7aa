"""Demo stage `data`: generate the synthetic data set into `<workdir>/data`."""
from __future__ import annotations

from wenlv.features.generator import generate


def run(ctx) -> dict:
    data_dir = ctx.workdir / "data"
    summary = generate(data_dir, scale=ctx.scale, seed=ctx.seed, progress=ctx.progress)
    rows = summary["rows"]
    ctx.log(f"generated {rows['truth.people']} people, {rows['tourism.visits']} visits in {summary['seconds']} s")
    return {
        "people": rows["truth.people"],
        "pois": rows["tourism.pois"],
        "visits": rows["tourism.visits"],
        "visitors": rows["tourism.visitors"],
        "subscribers": rows["carrier.subscribers"],
        "accounts": rows["internet.accounts"],
        "prospects": summary["prospects"],
        "split_date": summary["split_date"],
        "seconds": summary["seconds"],
        "_paths": {"data_dir": str(data_dir)},
    }
