"""`wenlv demo` serving stage: serve the trained champion and call it as a client would.

Loads the champion (MLflow alias via the train stage's tracking URI, else its bundle
folder), materialises it to the online store (SQLite in the workdir, or Redis when
REDIS_URL is set), starts uvicorn on a free loopback port, sends a few hundred real HTTP
requests (known visitors, cold starts, filters, non-personalised), stops the server and
reports latency and errors.
"""
from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np

from wenlv.db import engine as db_engine
from wenlv.errors import WenlvError
from wenlv.settings import get_settings

N_REQUESTS = 300


def _load(ctx):
    """(bundle, version, tracking URI or None): the MLflow champion, else the trained bundle folder."""
    from wenlv.serving.lifecycle import load_champion
    from wenlv.serving.runtime import load_bundle_dir

    train = ctx.results.get("train") or {}
    paths = train.get("_paths", {})
    if paths.get("tracking_uri"):
        try:
            return (*load_champion(paths["tracking_uri"]), paths["tracking_uri"])
        except Exception as exc:  # noqa: BLE001 - fall back to the bundle folder
            ctx.log(f"serving: no champion in MLflow ({type(exc).__name__}); using the trained bundle folder")
    if paths.get("bundle_dir"):
        bundle, version = load_bundle_dir(Path(paths["bundle_dir"]))
        return bundle, str(train.get("model_version") or version), None
    raise WenlvError("serving demo: the train stage left neither a tracking URI nor a bundle folder")


def run(ctx) -> dict:
    import httpx

    from wenlv.serving.app import create_app
    from wenlv.serving.auth import KeyStore
    from wenlv.serving.materialize import materialize
    from wenlv.serving.model import ServingModel
    from wenlv.serving.online_store import ResilientStore, open_store
    from wenlv.serving.runtime import ServerThread
    from wenlv.serving.state import ServingState

    bundle, version, tracking_uri = _load(ctx)
    workdir = Path(ctx.workdir)
    features = ((ctx.results.get("features") or {}).get("_paths") or {})
    features_dir = features.get("features_dir") or features.get("out")
    prefix = f"wenlv-demo-{uuid.uuid4().hex[:8]}:" if get_settings().redis_url else "wenlv:"
    raw = open_store(None, workdir / "online_store.sqlite", prefix)
    mat = materialize(bundle, version, raw, Path(features_dir) if features_dir else None, ttl_s=24 * 3600,
                      progress=ctx.progress)
    store = ResilientStore(raw)
    keys = KeyStore(workdir / "api_keys.sqlite")
    key = keys.create("visitor-app", "demo")
    if tracking_uri:  # the version's indexes are read from (or first recorded to) its MLflow run
        from wenlv.serving.lifecycle import model_from_registry

        model = model_from_registry(bundle, version, store, tracking_uri=tracking_uri,
                                    index_cache=workdir / "index_cache")
    else:
        model = ServingModel(bundle, version, store, index_cache=workdir / "index_cache")
    ledger_db = db_engine.make_engine(f"sqlite:///{workdir / 'campaigns.sqlite'}")  # served lists stay in the workdir
    db_engine.migrate(ledger_db)
    app = create_app(ServingState(store, model), keys, db=ledger_db)

    rng = np.random.default_rng(ctx.seed)
    known = bundle.users["token"].astype(str).to_numpy()
    from wenlv.serving.materialize import side_features

    side = side_features(Path(features_dir)) if features_dir else None
    newcomers = np.array(sorted(set(side.index.astype(str)) - set(known))) if side is not None else np.array([])
    pois = bundle.pois
    latencies, errors, degraded, strategies = [], 0, 0, {}
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=10,
                                                   headers={"Authorization": f"Bearer {key}"}) as client:
        for i in range(N_REQUESTS):
            cold = i % 5 == 4 or len(known) == 0
            if cold and len(newcomers) and i % 10 == 9:  # a new visitor the carrier/internet parties know: tower
                token = newcomers[rng.integers(len(newcomers))]
            else:  # a brand-new token: popularity
                token = uuid.uuid4().hex if cold else known[rng.integers(len(known))]
            params = {"k": 10}
            if i % 7 == 1:
                params["category"] = str(pois["category"].iloc[rng.integers(len(pois))])
            if i % 7 == 2:
                row = pois.iloc[rng.integers(len(pois))]
                params.update(near=f"{row.lat:.5f},{row.lon:.5f}", radius_km=10)
            if i % 7 == 3:
                params.update(open_now="true", at="14:00")
            if i % 11 == 5:
                params["personalized"] = "false"
            started = time.perf_counter()
            r = client.get(f"/v1/visitors/{token}/recommendations", params=params)
            latencies.append((time.perf_counter() - started) * 1000)
            if r.status_code != 200:
                errors += 1
                continue
            body = r.json()
            degraded += bool(body["degraded"])
            strategies[body["strategy"]] = strategies.get(body["strategy"], 0) + 1
    lat = np.array(latencies)
    return {
        "requests": len(latencies), "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2), "errors": errors, "model_version": version,
        "degraded_responses": degraded, "strategies": strategies, "online_store": raw.describe(),
        "materialized_users": mat["users"], "poi_index": model.indexes.pois.info["kind"],
        "cold_start_tower": model.tower is not None, "index_source": model.indexes.source,
        "_paths": {"api_keys": str(workdir / "api_keys.sqlite"), "online_store": raw.describe(),
                   "sqlite": str(workdir / "online_store.sqlite"), "prefix": prefix, "tracking_uri": tracking_uri,
                   "example_token": str(known[0]) if len(known) else None},
    }
