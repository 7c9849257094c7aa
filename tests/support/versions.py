"""A registered model version as training makes one: a real (synthetic) bundle with its digests, logged and registered."""
from __future__ import annotations

from pathlib import Path

from wenlv.bench.serving_fixtures import synthetic_bundle
from wenlv.training import registry, tracking


def register_toy_version(folder: Path, uri: str, metrics: dict, tags: dict | None = None, seed: int = 0) -> int:
    bundle_dir = synthetic_bundle(n_pois=20, n_users=30, factors=4, seed=seed).save(Path(folder) / f"bundle-{seed}")
    logged = tracking.log_run(params={"k": 10}, metrics=metrics, tags=tags or {}, artifacts={"bundle": bundle_dir},
                              tracking_uri=uri)
    return registry.register_version(logged["run_id"], uri)
