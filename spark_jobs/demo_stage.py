"""Demo stage `features`: the Spark feature job on the generated data, into `<workdir>/features`."""
from __future__ import annotations

from wenlv.spark_jobs import features_job


def run(ctx) -> dict:
    data_dir = ctx.results["data"]["_paths"]["data_dir"]
    features_dir = ctx.workdir / "features"
    manifest = features_job.run(data_dir, features_dir, progress=ctx.progress)
    psi = manifest["psi"]
    ctx.log(f"features: {psi['users']} users; PSI matched {psi['tourism_carrier_matched']} tourism and "
            f"{psi['internet_carrier_matched']} internet identities through the carrier")
    return {
        "manifest": str(features_dir / "manifest.json"),
        "split_date": manifest["split_date"],
        "row_counts": {name: entry["rows"] for name, entry in manifest["tables"].items()},
        "quarantined": sum(manifest["quarantine"].values()),
        "_paths": {"features_dir": str(features_dir)},
        "_summary": {"psi": {"tourism_carrier_matched": psi["tourism_carrier_matched"],
                             "internet_carrier_matched": psi["internet_carrier_matched"]}},
    }
