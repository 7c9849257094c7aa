"""A whole deployment of the API on one machine, with private services a fault may break.

The server is the real `wenlv serve` process on a synthetic model bundle; the online store is
a private Redis with an append-only file (a restart keeps the data, as in production); the
ledger is a private PostgreSQL cluster, or an SQLite file in a folder of the caller's choosing
(a small size-limited filesystem for the disk-full fault). Nothing here touches the machine's
shared Redis or PostgreSQL.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from wenlv.bench.faults.private_postgres import PrivatePostgres
from wenlv.bench.private_redis import PrivateRedis
from wenlv.bench.serving_fixtures import synthetic_bundle
from wenlv.db.engine import make_engine, migrate
from wenlv.serving.auth import KeyStore
from wenlv.serving.materialize import materialize
from wenlv.serving.online_store import RedisStore
from wenlv.serving.runtime import free_port, load_bundle_dir
from wenlv.training import registry, tracking

PREFIX = "faults:"
TENANT = "faults"


class Deployment:
    def __init__(self, workdir: Path, ledger: str = "postgresql", ledger_dir: Path | None = None,
                 n_pois: int = 200, n_users: int = 2000, follow_registry: bool = False):
        """`follow_registry`: serve the MLflow champion (a store in the workdir, version 1 registered and promoted)
        and follow its alias every second, instead of a fixed bundle directory."""
        if ledger not in ("postgresql", "sqlite"):
            raise ValueError(f"ledger must be postgresql or sqlite, not {ledger!r}")
        self.workdir, self.ledger = Path(workdir), ledger
        self.ledger_dir = Path(ledger_dir) if ledger_dir else self.workdir / "ledger"
        self.n_pois, self.n_users = n_pois, n_users
        self.redis: PrivateRedis | None = None
        self.postgres: PrivatePostgres | None = None
        self.api: subprocess.Popen | None = None
        self.port = free_port()
        self.tokens: list[str] = []
        self.key = ""
        self.db_url = ""
        self.follow_registry = follow_registry
        self.tracking_uri = ""

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Deployment":
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "redis").mkdir(exist_ok=True)
        self.redis = PrivateRedis(persist_dir=str(self.workdir / "redis")).start()
        bundle_dir = self.workdir / "bundle"
        synthetic_bundle(n_pois=self.n_pois, n_users=self.n_users, factors=16, seed=5,
                         version="faults-1").save(bundle_dir)
        bundle, version = load_bundle_dir(bundle_dir)
        self.tokens = [str(t) for t in bundle.users["token"].head(500)]
        if self.follow_registry:
            self.tracking_uri = tracking.store_for_dir(self.workdir / "mlflow")[0]
            decision = registry.promote(self.register(bundle_dir), self.tracking_uri)  # the follower materialises it
            if not decision.passed:
                raise RuntimeError(f"the fault deployment's first version was refused by the gate: {decision.reasons}")
        else:
            materialize(bundle, version, RedisStore(self.redis.url, prefix=PREFIX), progress=False)
        if self.ledger == "postgresql":
            self.postgres = PrivatePostgres().start()
            self.db_url = self.postgres.url
        else:
            self.ledger_dir.mkdir(parents=True, exist_ok=True)
            self.db_url = f"sqlite:///{self.ledger_dir / 'ledger.sqlite'}"
        engine = make_engine(self.db_url)
        migrate(engine)
        engine.dispose()
        self.key = KeyStore(self.workdir / "keys.sqlite").create("visitor-app", TENANT)
        self.start_api()
        return self

    def register(self, bundle_dir: Path) -> int:
        """Log and register a bundle as training does (privacy checks passed, digests recorded)."""
        passed = {f"{registry.CHECK_PREFIX}{k}": "passed" for k in registry.REQUIRED_CHECKS}
        # the gate also wants the version to beat popularity on its validation window (training logs both)
        metrics = {"ndcg@10": 0.5, "validation_ndcg@10": 0.2, "validation_popularity_ndcg@10": 0.1}
        logged = tracking.log_run(params={}, metrics=metrics, tags=passed, artifacts={"bundle": bundle_dir},
                                  tracking_uri=self.tracking_uri)
        return registry.register_version(logged["run_id"], self.tracking_uri)

    def env(self) -> dict:
        env = {**os.environ, "DATABASE_URL": self.db_url, "WENLV_INDEX_CACHE": str(self.workdir / "index_cache"),
               "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        env.pop("REDIS_URL", None)
        return env

    def start_api(self, timeout_s: float = 180) -> None:
        source = (["--tracking-uri", self.tracking_uri, "--poll-s", "1"] if self.follow_registry
                  else ["--bundle", str(self.workdir / "bundle")])
        cmd = [sys.executable, "-m", "wenlv.cli", "serve", *source, "--redis-url", self.redis.url, "--keys", str(self.workdir / "keys.sqlite"), "--prefix", PREFIX,
               "--host", "127.0.0.1", "--port", str(self.port), "--no-user-index"]
        log = open(self.workdir / "api.log", "ab")
        self.api = subprocess.Popen(cmd, env=self.env(), stdout=log, stderr=log)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.api.poll() is not None:
                raise RuntimeError("wenlv serve exited: " + (self.workdir / "api.log").read_text()[-2000:])
            try:
                if httpx.get(self.base + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"wenlv serve was not ready within {timeout_s:g} s")
            time.sleep(0.1)

    def kill_api(self) -> None:
        if self.api is not None and self.api.poll() is None:
            self.api.send_signal(signal.SIGKILL)
            self.api.wait(timeout=30)

    def stop(self) -> None:
        if self.api is not None and self.api.poll() is None:
            self.api.terminate()
            try:
                self.api.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.api.kill()
        if self.redis is not None:
            if self.redis.proc is not None:
                os.kill(self.redis.proc.pid, signal.SIGCONT)  # in case a fault left it frozen
            self.redis.stop()
        if self.postgres is not None:
            self.postgres.destroy()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
