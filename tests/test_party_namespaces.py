"""Three party services as separate OS processes, each in its own network namespace and as its
own Unix user, trained over pinned mutual TLS: the same model as in process, no party opens
another's folder, strangers and replays are refused, a killed party aborts the round with
nothing released and a restarted one rejoins the next run.

Addresses 10.231.40.0/30 – 10.231.43.0/30 and namespaces ``wl17t-*`` belong to this test only.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

from wenlv.bench.netns import Topology, have_netns
from wenlv.bench.party_procs import FIRST_UID, PartyProcess, party_folders
from wenlv.privacy import tls
from wenlv.privacy.secure_agg import ProtocolError, SecureAggError
from wenlv.training.als_data import load_party_matrices
from wenlv.training.federated_als import FederatedALS, init_factors
from wenlv.training.remote import RemoteParty
from tests.support.toy_blocks import write_toy_blocks

PARTIES = ("tourism", "carrier", "internet")
TAG, BASE = "wl17t", 40

why_not = have_netns()
if why_not and os.environ.get("CI") == "true":
    raise RuntimeError(f"CI runs as root, the namespace test must run: {why_not}")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(why_not is not None, reason=why_not or "")]


class FdWatch:
    """Samples the open files of the party processes while a fit runs (bounded by the stop flag)."""

    def __init__(self, procs):
        self.procs, self.seen = procs, {p: set() for p in procs}
        self.stop, self.thread = threading.Event(), threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.wait(0.05):
            for p, proc in self.procs.items():
                self.seen[p] |= proc.open_paths()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=10)


def test_parties_in_namespaces_match_in_process(tmp_path):
    features = write_toy_blocks(tmp_path / "features", n_users=150)
    certs = tmp_path / "certs"
    tls.make_deployment(certs, PARTIES)
    stranger = tmp_path / "stranger"
    tls.make_deployment(stranger, PARTIES)
    _, blocks = load_party_matrices(features)
    params = dict(factors=6, iterations=3, show_progress=False, dtype=np.float64)
    init = init_factors(150, {p: blocks[p].matrix.shape[1] for p in PARTIES}, 6, 5, np.float64)
    local = FederatedALS(**params).fit({p: blocks[p].matrix for p in PARTIES}, init=init)

    base = Path(tempfile.mkdtemp(prefix="wl17t-", dir="/tmp"))
    procs: dict[str, PartyProcess] = {}
    try:
        with Topology(TAG, BASE, PARTIES) as topo:
            homes = party_folders(Path(features), base, PARTIES, certs)
            uids = {p: FIRST_UID + k for k, p in enumerate(PARTIES)}
            for p in PARTIES:
                procs[p] = PartyProcess(topo, p, homes[p], uids[p])

            def handles(tls_dir=certs, retries=2):
                return {p: RemoteParty(p, procs[p].url, tls_dir, timeout=120, retries=retries, backoff=0.1)
                        for p in PARTIES}

            # 1. the same model as in process, each party reading only its own folder
            with FdWatch(procs) as watch:
                model = FederatedALS(collect_items=("tourism",), **params).fit_parties(handles(), init=init)
            assert np.array_equal(model.user_factors, local.user_factors)
            assert np.array_equal(model.item_factors["tourism"], local.item_factors["tourism"])
            for p in ("carrier", "internet"):   # kept on the party's own disk, as its own user
                path = Path(model.saved_[p])
                assert path.is_relative_to(homes[p]) and path.stat().st_uid == uids[p]
                assert np.array_equal(np.load(path), local.item_factors[p])
            for p, seen in watch.seen.items():
                others = [str(homes[q]) for q in PARTIES if q != p]
                assert not [f for f in seen if any(f.startswith(o) for o in others)], (p, seen)
            # and the kernel would not let it: each folder is its owner's only
            for p in PARTIES:
                other = homes[PARTIES[(PARTIES.index(p) + 1) % 3]]
                probe = subprocess.run(["setpriv", f"--reuid={uids[p]}", f"--regid={uids[p]}", "--clear-groups",
                                        "ls", str(other)], capture_output=True, timeout=30)
                assert probe.returncode != 0 and b"Permission denied" in probe.stderr

            # 2. a coordinator with another CA's certificate is refused; a replayed request too
            with pytest.raises((SecureAggError, ProtocolError)):
                RemoteParty("carrier", procs["carrier"].url, stranger, timeout=20, retries=0).describe()
            carrier = RemoteParty("carrier", procs["carrier"].url, certs, timeout=20)
            assert carrier.describe()["name"] == "carrier"
            carrier._seq -= 1
            with pytest.raises(ProtocolError, match="replayed request"):
                carrier.describe()
            carrier.close()

            # 3. a party killed mid-round (round 2, before its second CG step): the round aborts with
            # no partial sum, the re-keyed retry finds it gone, the fit gives up with nothing released
            class KilledBeforeAp2(RemoteParty):
                def product(self, run_id, round_no, stage, P):
                    if round_no == 2 and stage == "ap2":
                        procs["internet"].kill()
                    return super().product(run_id, round_no, stage, P)

            parties = handles(retries=1)
            parties["internet"] = KilledBeforeAp2("internet", procs["internet"].url, certs, timeout=120, retries=1,
                                                  backoff=0.1)
            broken = FederatedALS(collect_items=("tourism",), max_retries=1, audit_path=tmp_path / "audit.jsonl",
                                  **params)
            with pytest.raises(SecureAggError, match="rounds aborted"):
                broken.fit_parties(parties, init=init)
            assert broken.user_factors is None                      # nothing released
            entries = broken.audit_log.entries
            kinds = [e["kind"] for e in entries]
            assert kinds.count("round-abort") == 2 and kinds.count("round-close") == 1
            released_in_2 = [e["stage"] for e in entries if e["kind"] == "sum" and e["round"] == 2]
            assert released_in_2 == ["support", "gram", "r0", "ap1"]     # complete stages only, no ap2
            for stage in released_in_2:                                  # each summed over all three parties
                assert {e["sender"] for e in entries if e["kind"] == "masked" and e["round"] == 2
                        and e["stage"] == stage} == set(PARTIES)
            assert not [e for e in entries if e["kind"] == "sum" and e["round"] == 3]

            # 4. restarted, it rejoins the next run, which again equals the in-process model
            procs["internet"] = PartyProcess(topo, "internet", homes["internet"], uids["internet"])
            again = FederatedALS(collect_items=("tourism",), **params).fit_parties(handles(), init=init)
            assert np.array_equal(again.user_factors, local.user_factors)
    finally:
        for proc in procs.values():
            proc.stop()
        shutil.rmtree(base, ignore_errors=True)
    assert TAG not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
