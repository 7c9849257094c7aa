"""`wenlv features --parties`: the three organisations' Spark jobs as three `wenlv party serve --raw`
processes over loopback, PSI and alignment messages over pinned mutual TLS, against the
in-process run on the same data: the same PSI counts, the same blocks up to the (fresh, random)
token names, tokens consistent across the parties' own folders, and the coordinator holding
nothing but the manifest. Then the same services train: their ALS side loads the new blocks.
(`wenlv train --parties` through MLflow: tests/test_remote_pipeline.py.)
"""
from __future__ import annotations

import json
import shutil
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
from tests.support.party_services import PartyProcess, PartyProcesses

PARTIES = C.PARTIES
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]  # four Spark applications in one test


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
    with PartyProcesses() as services:
        for p in PARTIES:
            services[p] = PartyProcess(p, homes[p] / "features", certs, tmp_path / f"{p}.log", raw=homes[p] / "raw",
                                       cwd=homes[p])
            assert services[p].ready["features"] is True
        coordinator_out = tmp_path / "coordinator"
        parties_arg = services.urls()
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
