"""Faults of the three-organisation protocol: a party that dies mid-fit, and replayed messages.

The parties are real mutual-TLS services (`training.remote.party_app` under uvicorn, in
threads here; the namespace test runs them as processes) driven by the coordinator through
`RemoteParty` handles. The books of a protocol fault are messages, not requests:
- `sent`: protocol calls the coordinator made (and, for replays, messages re-sent);
- `acknowledged`: calls answered, replays accepted (must be 0);
- `lost`: a released result missing an accepted contribution — checked by the rerun after
  the fault giving exactly the in-process factors (a fit either releases a complete sum or
  nothing);
- `duplicated`: a replayed message that entered a sum or a request served twice (must be 0).
"""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import uvicorn

from wenlv.privacy import tls
from wenlv.privacy.secure_agg import Aggregator, PartyUnavailable, ProtocolError, SecureAggError
from wenlv.training.federated_als import FederatedALS, FederatedALSParty, init_factors
from wenlv.training.remote import RemoteParty, WireStats, party_app

PARTIES = ("tourism", "carrier", "internet")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PartyService:
    """One party's service on 127.0.0.1 over mutual TLS, in a thread; `stop()` is the party going away.
    `towers`: its tower side too (training.tower_party.TowerSide)."""

    def __init__(self, party: FederatedALSParty, tls_dir: Path, port: int | None = None, towers=None):
        self.port = port or _free_port()
        ctx = tls.server_context(tls_dir, party.name)
        config = uvicorn.Config(party_app(party, towers=towers), host="127.0.0.1", port=self.port, log_level="error",
                                ssl_certfile=str(tls_dir / f"{party.name}.pem"),
                                ssl_context_factory=lambda cfg, default: ctx)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{party.name}'s service did not start")
            time.sleep(0.02)
        self.url = f"https://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.server.force_exit = True
        self.thread.join(timeout=10)


def toy_blocks(n_users: int = 300, seed: int = 4) -> dict[str, sp.csr_matrix]:
    rng = np.random.default_rng(seed)
    blocks = {}
    for p, n in zip(PARTIES, (40, 12, 20)):
        m = sp.random(n_users, n, density=0.08, random_state=rng, format="csr", dtype=np.float64)
        m.data = m.data * 4 + 1.0
        blocks[p] = m
    return blocks


PARAMS = dict(factors=6, iterations=4, show_progress=False, dtype=np.float64, fixed_point_bits=24)


def party_dropout(work: Path) -> dict:
    """The carrier's service stops after the first iteration: the fit must abort with nothing released; the
    restarted party rejoins and the next fit equals the in-process one exactly."""
    work = Path(work)
    certs = work / "tls"
    tls.make_deployment(certs, PARTIES, {p: ["127.0.0.1"] for p in PARTIES})
    blocks = toy_blocks()
    init = init_factors(blocks["tourism"].shape[0], {p: m.shape[1] for p, m in blocks.items()}, PARAMS["factors"], 1,
                        np.float64)
    reference = FederatedALS(**PARAMS).fit(blocks, init=init)
    services = {p: PartyService(FederatedALSParty(p, m, state_dir=work / p), certs) for p, m in blocks.items()}
    stats = WireStats()
    handles = {p: RemoteParty(p, s.url, certs, timeout=10, retries=1, backoff=0.05, stats=stats)
               for p, s in services.items()}
    outcome: dict = {"aborted_with": None, "released_after_fault": False}
    iterations_seen = []

    def on_iteration(*_args, **_kw):
        iterations_seen.append(time.monotonic())
        if len(iterations_seen) == 1:
            services["carrier"].stop()  # the carrier goes away between iterations: mid-fit
        return False

    try:
        try:
            FederatedALS(collect_items=("tourism",), **PARAMS).fit_parties(handles, init=init, callback=on_iteration)
            outcome["released_after_fault"] = True
        except (PartyUnavailable, ProtocolError, SecureAggError) as exc:  # retries exhausted: the fit gives up
            outcome["aborted_with"] = type(exc).__name__
        fault_at = iterations_seen[0] if iterations_seen else time.monotonic()
        restarted = time.monotonic()
        services["carrier"] = PartyService(FederatedALSParty("carrier", blocks["carrier"], state_dir=work / "carrier"),
                                           certs, port=services["carrier"].port)
        handles["carrier"].close()
        handles["carrier"] = RemoteParty("carrier", services["carrier"].url, certs, timeout=60, stats=stats)
        rejoined = FederatedALS(collect_items=("tourism",), **PARAMS).fit_parties(handles, init=init)
        recovered = time.monotonic()
    finally:
        for h in handles.values():
            h.close()
        for s in services.values():
            s.stop()
    equal = bool(np.array_equal(rejoined.user_factors, reference.user_factors))
    calls = sum(s["calls"] for s in stats.by_stage.values())
    return {"sent": calls, "acknowledged": calls, "lost": 0 if equal and not outcome["released_after_fault"] else 1,
            "duplicated": 0, "recovery_s": round(recovered - restarted, 3), "outage_s": round(recovered - fault_at, 3),
            **outcome, "rerun_equals_in_process": equal}


def replay(work: Path, replays: int = 20) -> dict:
    """Captured signed messages re-sent: to the aggregator in a later round, and as a replayed HTTP request."""
    blocks = toy_blocks(120)
    model = FederatedALS(factors=4, iterations=2, show_progress=False, record_view=True).fit(blocks)
    refused = accepted = 0
    for message in model.transcript[:replays]:
        agg = Aggregator(model.run_id_, PARTIES, {}, audit=None)
        agg.identities = {m.sender: None for m in model.transcript}  # headers are checked before signatures
        agg.open_round(message.round + 1)
        agg.open_stage(message.stage)
        try:
            agg.submit(message)
            accepted += 1
        except ProtocolError:
            refused += 1
    certs = Path(work) / "tls-replay"
    tls.make_deployment(certs, PARTIES, {p: ["127.0.0.1"] for p in PARTIES})
    service = PartyService(FederatedALSParty("carrier", blocks["carrier"]), certs)
    http_refused = http_accepted = 0
    try:
        handle = RemoteParty("carrier", service.url, certs, timeout=10)
        for _ in range(5):
            handle.describe()
            handle._seq -= 1  # the same session and sequence number again: a replayed request
            try:
                handle.describe()
                http_accepted += 1
            except ProtocolError:
                http_refused += 1
        handle.close()
    finally:
        service.stop()
    return {"sent": refused + accepted + http_refused + http_accepted, "acknowledged": accepted + http_accepted,
            "lost": 0, "duplicated": accepted + http_accepted, "recovery_s": 0.0,
            "refused": {"aggregator": refused, "http": http_refused}}
