"""Parties as services of their own organisations: `wenlv party serve` and its client.

The party side (:func:`party_app`, :func:`serve`) is a FastAPI app under uvicorn with
mutual TLS (privacy.tls: only the pinned coordinator certificate is accepted). It holds
one :class:`~training.federated_als.FederatedALSParty` built from the party's own folder
and exposes exactly the methods of the :class:`~training.party_api.Party` protocol at
``POST /v1/call/<method>``; bodies are the streamed, pickle-free format of
privacy.transport.

The coordinator side (:class:`RemoteParty`) implements the same protocol with httpx over
mutual TLS (only that party's pinned certificate, its name checked against the SAN). Each
call carries a session id and a sequence number the service requires to increase (a
replayed request is refused with 409), plus the (run, round, stage) it belongs to; masked
messages are signed and bound to (run, round, stage) as in process, and the coordinator's
Aggregator checks them. A connection that cannot be made is retried with exponential
backoff (bounded); a party that stays away, or fails mid-call, raises PartyUnavailable,
which aborts the round (nothing is released) and re-keys, as in process.
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from wenlv.privacy import tls
from wenlv.privacy.secure_agg import PartyUnavailable, ProtocolError
from wenlv.privacy.transport import ERRORS, ArrayCache, Decoder, RemotePartyError, encode_chunks
from wenlv.training.federated_als import FederatedALSParty
from wenlv.errors import WenlvError

log = logging.getLogger(__name__)

# the Party protocol's methods, and which argument holds the run/round/stage binding
METHODS = ("describe", "setup", "announce", "receive_keys", "support", "gram", "residual", "product", "end_round",
           "item_step", "item_factors", "save")


class WireStats:
    """Bytes on the wire per party and per (method, stage kind), as the coordinator counts them."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sent: dict[str, int] = {}
        self.received: dict[str, int] = {}
        self.by_stage: dict[str, dict] = {}
        self.seconds: dict[str, float] = {}
        self.compute: dict[str, float] = {}

    def add(self, party: str, key: str, sent: int, received: int, seconds: float, compute: float = 0.0) -> None:
        with self.lock:
            self.compute[party] = self.compute.get(party, 0.0) + compute
            self.sent[party] = self.sent.get(party, 0) + sent
            self.received[party] = self.received.get(party, 0) + received
            s = self.by_stage.setdefault(key, {"calls": 0, "sent": 0, "received": 0})
            s["calls"] += 1
            s["sent"] += sent
            s["received"] += received
            self.seconds[party] = self.seconds.get(party, 0.0) + seconds


def _stage_key(method: str, args: tuple) -> str:
    """Per CG stage (r0, ap1, …) for the masked vectors, else the method."""
    return str(args[2]) if method in ("residual", "product") else method


class RemoteParty:
    """The coordinator's handle on one party service (training.party_api.Party over mTLS)."""

    remote = True

    def __init__(self, name: str, url: str, tls_dir: str | Path, timeout: float = 300.0, retries: int = 4,
                 backoff: float = 0.25, stats: WireStats | None = None):
        self.name, self.url = name, url.rstrip("/")
        self.timeout, self.retries, self.backoff = float(timeout), int(retries), float(backoff)
        self.stats = stats
        self._known = ArrayCache()  # what the party holds in its ArrayCache (digests only)
        self._session = secrets.token_hex(16)
        self._seq = 0
        self._client = httpx.Client(verify=tls.client_context(tls_dir, name),
                                    timeout=httpx.Timeout(self.timeout, connect=10.0, pool=10.0))

    def close(self) -> None:
        self._client.close()

    def _call(self, method: str, *args, binding: tuple = ()):
        """POST the arguments, stream the answer back; retry only a connection never made."""
        self._seq += 1
        headers = {"X-Wenlv-Session": self._session, "X-Wenlv-Seq": str(self._seq),
                   "X-Wenlv-Binding": "/".join(str(b) for b in binding)}
        started = time.perf_counter()
        by_reference = True
        for attempt in range(self.retries + 1):
            sent, digests = [0], []

            def body():
                known = self._known if by_reference else None
                for piece in encode_chunks(tuple(args), known, digests):
                    sent[0] += len(piece)
                    yield piece

            try:
                with self._client.stream("POST", f"{self.url}/v1/call/{method}", content=body(), headers=headers,
                                         extensions={"sni_hostname": self.name}) as resp:
                    if resp.status_code != 200:
                        resp.read()
                        self._raise(method, resp)
                    compute = float(resp.headers.get("x-wenlv-compute-seconds", 0.0))
                    decoder = Decoder()
                    for chunk in resp.iter_raw():
                        decoder.feed(chunk)
                    value = decoder.result()
                for d in digests:   # mirror the party's cache: it now holds what it received in full
                    if d not in self._known:
                        self._known.put(d, None)
                if self.stats is not None:
                    self.stats.add(self.name, _stage_key(method, args), sent[0], decoder.received,
                                   time.perf_counter() - started, compute)
                return value
            except httpx.ConnectError as exc:   # nothing reached the party: safe to try again
                if "CERTIFICATE" in str(exc).upper() or "SSL" in str(exc).upper():
                    raise ProtocolError(f"party {self.name!r} at {self.url}: TLS refused ({exc})") from None
                if attempt == self.retries:
                    raise PartyUnavailable(f"party {self.name!r} at {self.url} unreachable after "
                                           f"{self.retries + 1} attempts ({method}): {exc}") from None
                time.sleep(min(self.backoff * 2 ** attempt, 5.0))
            except (httpx.TransportError, ProtocolError) as exc:  # mid-call: the round aborts
                if isinstance(exc, ProtocolError) and "unknown array reference" in str(exc) and by_reference:
                    self._known.clear()    # the party lost its cache (restarted): send the arrays themselves
                    by_reference = False
                    self._seq += 1
                    headers["X-Wenlv-Seq"] = str(self._seq)
                    continue
                if isinstance(exc, ProtocolError):
                    raise
                raise PartyUnavailable(f"party {self.name!r} failed during {method}: {type(exc).__name__}: "
                                       f"{exc}") from None
        raise AssertionError("unreachable")

    def _raise(self, method: str, resp: httpx.Response):
        try:
            answer = resp.json()
        except ValueError:
            answer = {"error": resp.text[:300], "type": ""}
        cls = ERRORS.get(answer.get("type"), RemotePartyError)
        raise cls(f"party {self.name!r}, {method}: {answer.get('error')} (HTTP {resp.status_code})")

    # the Party protocol ---------------------------------------------------------------
    def describe(self) -> dict:
        return self._call("describe")

    def setup(self, parties, identities, factors, regularization, cg_steps, dtype, frac_bits, num_threads=0,
              item_factors=None, random_state=None, ring_bits=64) -> None:
        return self._call("setup", list(parties), dict(identities), factors, regularization, cg_steps, dtype,
                          frac_bits, num_threads, item_factors, random_state, ring_bits)

    def announce(self, run_id, round_no):
        return self._call("announce", run_id, round_no, binding=(run_id, round_no, "key"))

    def receive_keys(self, run_id, round_no, announcements) -> None:
        return self._call("receive_keys", run_id, round_no, list(announcements), binding=(run_id, round_no, "keys"))

    def support(self, run_id, round_no):
        return self._call("support", run_id, round_no, binding=(run_id, round_no, "support"))

    def gram(self, run_id, round_no):
        return self._call("gram", run_id, round_no, binding=(run_id, round_no, "gram"))

    def residual(self, run_id, round_no, stage, X):
        return self._call("residual", run_id, round_no, stage, X, binding=(run_id, round_no, stage))

    def product(self, run_id, round_no, stage, P):
        return self._call("product", run_id, round_no, stage, P, binding=(run_id, round_no, stage))

    def end_round(self, run_id, round_no) -> None:
        return self._call("end_round", run_id, round_no, binding=(run_id, round_no, "end"))

    def item_step(self, X, user_gram=None) -> None:
        return self._call("item_step", X, user_gram)

    def item_factors(self):
        return self._call("item_factors")

    def save(self, run_id) -> str:
        return self._call("save", run_id, binding=(run_id,))


# ------------------------------------------------------------------------ the party side
class _Sequencer:
    """Per client session, the last sequence number: a request must come with a larger one."""

    def __init__(self, limit: int = 64):
        self.lock = threading.Lock()
        self.last: dict[str, int] = {}
        self.limit = limit

    def check(self, session: str, seq: int) -> None:
        with self.lock:
            if seq <= self.last.get(session, 0):
                raise ProtocolError(f"replayed request: sequence {seq} of session {session[:8]}… already seen")
            if session not in self.last and len(self.last) >= self.limit:
                self.last.pop(next(iter(self.last)))   # oldest session first (dicts keep order)
            self.last[session] = seq


def party_app(party: FederatedALSParty) -> FastAPI:
    """The party's service: the Party protocol's methods, one at a time (the driver's order)."""
    app = FastAPI(title=f"wenlv party {party.name}", docs_url=None, redoc_url=None, openapi_url=None)
    seq = _Sequencer()
    lock = threading.Lock()  # one protocol call at a time: the party object is a state machine
    cache = ArrayCache()       # large arrays received lately (the user factors of the item step)

    def error(status: int, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": str(exc), "type": type(exc).__name__}, status_code=status)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "party": party.name}

    @app.post("/v1/call/{method}")
    async def call(method: str, request: Request):
        if method not in METHODS:
            return error(404, ProtocolError(f"method {method!r} is not part of the Party protocol"))
        try:
            seq.check(request.headers.get("x-wenlv-session", ""), int(request.headers.get("x-wenlv-seq", "0")))
            decoder = Decoder(cache)
            async for chunk in request.stream():
                decoder.feed(chunk)
            args = decoder.result()
            if not isinstance(args, tuple):
                raise ProtocolError("arguments must be a tuple")
        except (ProtocolError, ValueError) as exc:
            return error(409 if "replayed" in str(exc) else 400, exc)

        def run():
            with lock:
                return getattr(party, method)(*args)

        started = time.perf_counter()
        try:
            value = await run_in_threadpool(run)
        except ProtocolError as exc:
            return error(409, exc)
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the coordinator, named
            log.exception("party %s: %s failed", party.name, method)
            return error(500, exc)
        # the party's own seconds on the call: the coordinator subtracts them to get network time
        return StreamingResponse(encode_chunks(value), media_type="application/x-wenlv",
                                 headers={"X-Wenlv-Compute-Seconds": f"{time.perf_counter() - started:.6f}"})

    return app


def load_party(party: str, data: str | Path, state: str | Path | None = None, alpha: float = 1.0
               ) -> FederatedALSParty:
    """The party's ALS side from its own folder only: its block and the shared user axis."""
    from wenlv.training.als_data import load_party_block, load_users  # pandas/pyarrow: only a party loads

    data = Path(data)
    block = load_party_block(data, party, load_users(data))
    return FederatedALSParty(party, block.matrix, alpha=alpha, state_dir=state or data / ".wenlv-party")


def serve(party: FederatedALSParty, host: str, port: int, tls_dir: str | Path, ready=None) -> None:
    """Run the party's service until stopped (SIGINT/SIGTERM); mutual TLS, pinned coordinator."""
    context = tls.server_context(tls_dir, party.name)
    config = uvicorn.Config(party_app(party), host=host, port=port, log_level="warning", access_log=False,
                            ssl_certfile=str(Path(tls_dir) / f"{party.name}.pem"),
                            ssl_context_factory=lambda cfg, default: context, timeout_keep_alive=600)
    server = uvicorn.Server(config)
    if ready is not None:
        threading.Thread(target=_announce_ready, args=(server, ready), daemon=True).start()
    server.run()


def _announce_ready(server, ready) -> None:
    for _ in range(600):  # bounded: 60 s
        if server.started:
            ready()
            return
        time.sleep(0.1)


def parse_parties(text: str) -> dict[str, str]:
    """``tourism=https://h:p,carrier=…`` → {party: url}."""
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, url = item.partition("=")
        if not sep or not url.startswith("https://"):
            raise WenlvError(f"--parties wants name=https://host:port entries, got {item!r}")
        out[name.strip()] = url.strip()
    return out
