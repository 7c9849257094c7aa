"""`wenlv features --parties`: the three organisations' Spark jobs as three `wenlv party serve --raw`
processes over loopback, PSI and alignment messages over pinned mutual TLS, against the
in-process run on the same data: the same PSI counts, the same blocks up to the (fresh, random)
token names, tokens consistent across the parties' own folders, and the coordinator holding
nothing but the manifest. Then the same services train: their ALS side loads the new blocks.
(`wenlv train --parties` through MLflow: tests/test_remote_pipeline.py.)
"""
from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wenlv.cli import main as wenlv_main
from wenlv.features import contracts as C
from wenlv.features.generator import generate
from wenlv.privacy import tls
from wenlv.privacy.party_channel import PartyChannel
from wenlv.privacy.secure_agg import ProtocolError, SecureAggError
from wenlv.spark_jobs import features_job
from wenlv.spark_jobs.party_features import RemoteFeatureParty
from wenlv.training.als_data import load_party_block, load_users
from wenlv.training.remote import RemoteParty

ROOT = Path(__file__).resolve().parents[1]
PARTIES = C.PARTIES
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]  # four Spark applications in one test


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """`wenlv party serve --raw` for one party on loopback; waits until it listens."""

    def __init__(self, party: str, raw: Path, data: Path, certs: Path, log: Path, timeout: float = 180.0):
        self.port = _free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1", "WENLV_SHUFFLE_PARTITIONS": "2"}
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "wenlv.cli", "party", "serve", "--party", party, "--raw", str(raw),
                 "--data", str(data), "--listen", f"127.0.0.1:{self.port}", "--tls", str(certs),
                 "--master", "local[1]"], stdout=subprocess.PIPE, stderr=err, env=env, cwd=data.parent)
        deadline, line = time.monotonic() + timeout, b""
        while time.monotonic() < deadline and self.proc.poll() is None:
            if select.select([self.proc.stdout], [], [], 1.0)[0]:
                line = self.proc.stdout.readline()
                if b"listening" in line:
                    break
        if b"listening" not in line:
            self.stop()
            raise RuntimeError(f"party {party} did not start: {log.read_text(errors='replace')[-3000:]}")
        assert json.loads(line)["features"] is True

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.proc.stdout.close()


def _without_tokens(path: Path) -> pd.DataFrame:
    """A block's rows with every token column dropped, in a canonical order (token names are per run)."""
    frame = pd.read_parquet(path)
    frame = frame[[c for c in frame.columns if c != "token"]]
    cols = list(frame.columns)
    return frame.sort_values(cols, kind="mergesort").reset_index(drop=True)


def test_features_over_party_services_equal_in_process(tmp_path, spark):
    raw = tmp_path / "raw"
    generate(raw, scale="tiny", seed=11, progress=False, people=800)
    local_out = tmp_path / "local"
    local = features_job.run(raw, local_out, spark=spark, progress=False)

    certs = tmp_path / "certs"
    tls.make_deployment(certs, PARTIES)
    stranger = tmp_path / "stranger"
    tls.make_deployment(stranger, PARTIES)
    homes = {}
    for p in PARTIES:   # each organisation holds only its own raw folder
        homes[p] = tmp_path / "orgs" / p
        shutil.copytree(raw / p, homes[p] / "raw" / p)
    services: dict[str, Service] = {}
    try:
        for p in PARTIES:
            services[p] = Service(p, homes[p] / "raw", homes[p] / "features", certs, tmp_path / f"{p}.log")
        coordinator_out = tmp_path / "coordinator"
        parties_arg = ",".join(f"{p}={services[p].url}" for p in PARTIES)
        assert wenlv_main(["features", "--parties", parties_arg, "--out", str(coordinator_out), "--tls", str(certs),
                           "--no-progress"]) == 0
        remote = json.loads((coordinator_out / "manifest.json").read_text())

        # 1. the same PSI, the same row counts, the same split
        assert remote["psi"] == local["psi"]
        assert remote["split_date"] == local["split_date"]
        assert {k: v["rows"] for k, v in remote["tables"].items()} == {k: v["rows"] for k, v in local["tables"].items()}
        assert local["psi"]["tourism_carrier_matched"] > 0 and local["psi"]["internet_carrier_matched"] > 0

        # 2. every block equal up to the token names, each in its own organisation's folder only
        for key, entry in remote["tables"].items():
            party = entry["party"]
            ours = homes[party] / "features" / entry["path"]
            assert ours.exists(), key
            for q in PARTIES:
                if q != party:
                    assert not (homes[q] / "features" / entry["path"]).exists() or key == "carrier/users", (key, q)
            pd.testing.assert_frame_equal(_without_tokens(ours), _without_tokens(local_out / entry["path"]),
                                          check_exact=False, rtol=1e-9, obj=key)

        # 3. one user axis: each party's blocks use the carrier's tokens, and the spokes got the token list only
        carrier_tokens = load_users(homes["carrier"] / "features")
        for p in ("tourism", "internet"):
            users = pd.read_parquet(homes[p] / "features" / "carrier" / "users.parquet")
            assert list(users.columns) == ["token"]
            assert np.array_equal(load_users(homes[p] / "features"), carrier_tokens)
            assert load_party_block(homes[p] / "features", p, carrier_tokens).matrix.nnz > 0
            assert json.loads((homes[p] / "features" / "manifest.json").read_text())["psi"] == remote["psi"]

        # 4. the coordinator holds the manifest and nothing else
        assert sorted(f.name for f in coordinator_out.iterdir()) == ["manifest.json"]

        # 5. a coordinator with another deployment's certificate is refused at the handshake; a replay too
        with pytest.raises((SecureAggError, ProtocolError)):
            RemoteFeatureParty(PartyChannel("carrier", services["carrier"].url, stranger, "features",
                                            retries=0)).validate()
        channel = PartyChannel("tourism", services["tourism"].url, certs, "features", timeout=60)
        with pytest.raises(Exception, match="split plan has keys"):
            RemoteFeatureParty(channel).receive_plan({"split_date": "x"})  # a refused step names what is wrong
        channel._seq -= 1
        with pytest.raises(ProtocolError, match="replayed"):
            RemoteFeatureParty(channel).validate()
        channel.close()

        # 6. the same services train on the blocks they just built (the ALS side loads them on first use)
        handle = RemoteParty("carrier", services["carrier"].url, certs, timeout=120)
        assert handle.describe()["n_users"] == local["psi"]["users"]
        handle.close()
    finally:
        for s in services.values():
            s.stop()
