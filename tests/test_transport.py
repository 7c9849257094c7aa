"""Parties as separate processes over loopback HTTP give exactly the in-process result."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from wenlv.privacy.secure_agg import Identity, KeyAnnouncement, MaskedMessage, MaskingParty, PartyUnavailable, ProtocolError
from wenlv.privacy.transport import CoordinatorServer, RemoteParty, RemotePartyError, decode, encode, serve_party
from wenlv.training.federated_als import FederatedALS

ROOT = Path(__file__).resolve().parents[1]
PARTIES = ("tourism", "carrier", "internet")


def test_wire_format_round_trips_protocol_messages():
    ident = Identity("carrier")
    mp = MaskingParty(ident, ("carrier", "tourism"), {"carrier": ident.public_bytes, "tourism": b"x" * 32})
    ann = mp.announce("r", 1)
    msg = MaskedMessage("r", 1, "s", "carrier", (2, 3), np.arange(6, dtype=np.uint64), "ab" * 32, b"sig")
    obj = {"ann": ann, "msgs": [msg], "t": (1, 2.5, None, True), "a": np.eye(2), "b": b"\x00\xff"}
    back = decode(encode(obj))
    assert back["ann"] == ann and isinstance(back["ann"], KeyAnnouncement)
    assert back["msgs"][0].shape == (2, 3) and np.array_equal(back["msgs"][0].payload, msg.payload)
    assert back["t"] == (1, 2.5, None, True) and np.array_equal(back["a"], np.eye(2)) and back["b"] == b"\x00\xff"
    with pytest.raises(TypeError):
        encode(object())


class Echo:
    def twice(self, x):
        return 2 * x

    def boom(self):
        raise ValueError("no such thing")


def test_remote_calls_errors_and_timeouts():
    with CoordinatorServer(("a", "b"), poll_seconds=0.5) as server:
        worker = threading.Thread(target=serve_party, args=(server.url, "a", Echo()), daemon=True)
        worker.start()
        a = RemoteParty(server, "a", timeout=20)
        assert np.array_equal(a.twice(np.arange(3)), [0, 2, 4])
        with pytest.raises(RemotePartyError, match="party 'a', boom: no such thing"):
            a.boom()
        with pytest.raises(ProtocolError, match="_secret.*not callable remotely"):
            server.call("a", "_secret", (), timeout=20)
        with pytest.raises(PartyUnavailable, match="party 'b' did not answer 'twice'"):
            RemoteParty(server, "b", timeout=0.5).twice(1)   # nobody serves b
        server.stop_party("a")
        worker.join(timeout=10)
        assert not worker.is_alive()


def _party_folder(features: Path, party: str, dest: Path) -> Path:
    """A folder holding only what one party may read: its own block and the shared user universe."""
    (dest / "carrier").mkdir(parents=True, exist_ok=True)
    shutil.copy(features / "carrier" / "users.parquet", dest / "carrier" / "users.parquet")
    (dest / party).mkdir(parents=True, exist_ok=True)
    for f in (features / party).glob("*.parquet"):
        shutil.copy(f, dest / party / f.name)
    return dest


@pytest.mark.slow
def test_parties_in_separate_processes_match_in_process(tmp_path):
    from wenlv.training.als_data import load_party_matrices
    from tests.support.toy_blocks import write_toy_blocks

    features = Path(write_toy_blocks(tmp_path / "features", n_users=150))
    params = dict(factors=6, iterations=3, random_state=5, show_progress=False)
    _, parts = load_party_matrices(features)
    local = FederatedALS(**params).fit({p: parts[p].matrix for p in PARTIES})

    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    with CoordinatorServer(PARTIES, poll_seconds=1.0) as server:
        procs = {}
        try:
            for p in PARTIES:
                folder = _party_folder(features, p, tmp_path / f"view-{p}")
                procs[p] = subprocess.Popen(
                    [sys.executable, "-m", "wenlv.training.federated_als", "--coordinator", server.url, "--party", p,
                     "--features", str(folder), "--out", str(tmp_path / f"out-{p}")],
                    env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            remote = {p: RemoteParty(server, p, timeout=120) for p in PARTIES}
            model = FederatedALS(collect_items=("tourism",), audit_path=tmp_path / "audit.jsonl",
                                 **params).fit_parties(remote)
            for p in PARTIES:
                server.stop_party(p)
            for p, proc in procs.items():
                out, _ = proc.communicate(timeout=60)
                assert proc.returncode == 0, out.decode()[-2000:]
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    assert set(model.item_factors) == {"tourism"}              # the others kept theirs
    assert np.array_equal(model.user_factors, local.user_factors)
    assert np.array_equal(model.item_factors["tourism"], local.item_factors["tourism"])
    for p in ("carrier", "internet"):                           # and saved them in their own place
        assert np.array_equal(np.load(tmp_path / f"out-{p}" / f"{p}_item_factors.npy"), local.item_factors[p])
    assert len(model.audit_log) == len(local.audit_log) and model.audit_log.verify()
