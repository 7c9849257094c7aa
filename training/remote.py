"""Parties as services of their own organisations: `wenlv party serve` and its client.

The party side (:func:`party_app`, :func:`serve`) is a FastAPI app under uvicorn with
mutual TLS (privacy.tls: only the pinned coordinator certificate is accepted). It holds
one :class:`~training.federated_als.FederatedALSParty` built from the party's own folder
and exposes exactly the methods of the :class:`~training.party_api.Party` protocol at
``POST /v1/call/<method>``; bodies are the streamed, pickle-free format of
privacy.transport. Started with ``--raw``, it also serves the party's side of the feature
run (spark_jobs.party_features) at ``POST /v1/features/<step>``, with the same channel and
replay checks; its ALS side then loads from the folder that run fills, on first use.

The coordinator side (:class:`RemoteParty`) implements the same protocol with httpx over
mutual TLS (only that party's pinned certificate, its name checked against the SAN). Each
call carries a session id and a sequence number the service accepts once (a
replayed request is refused with 409); masked messages and key announcements are signed
and bound to (run, round, stage) as in process, and the coordinator's Aggregator checks
them. A CG stage whose input is large goes duplex (its input up a second stream while the
masked rows come back as they are made), and an array the party already holds goes by
digest (privacy.transport). A connection that cannot be made is retried with exponential
backoff (bounded); a party that stays away, or fails mid-call, raises PartyUnavailable,
which aborts the round (nothing is released) and re-keys, as in process.
"""
from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from wenlv.privacy import tls, transport
from wenlv.privacy.party_channel import PartyChannel, WireStats
from wenlv.privacy.secure_agg import PartyUnavailable, ProtocolError
from wenlv.privacy.transport import (ERRORS, FRAME_DATA, FRAME_END, FRAME_ERROR, PIECE, ArrayCache,
                                     Decoder, FrameReader, RemotePartyError, StreamedArray, UploadRef, Uploads,
                                     array_digest, encode, encode_chunks, frame)
from wenlv.training.als_data import load_party_block, load_users
from wenlv.training.federated_als import FederatedALSParty
from wenlv.errors import WenlvError

log = logging.getLogger(__name__)

# the Party protocol's methods: nothing else is callable
METHODS = ("describe", "setup", "announce", "receive_keys", "support", "gram", "residual", "product", "end_round",
           "item_step", "item_factors", "save")
# the TowerParty protocol's methods (training.party_api)
TOWER_METHODS = ("describe", "setup", "announce", "receive_keys", "forward", "backward", "embed", "end_round",
                 "export", "save")


def _stage_key(method: str, args: tuple) -> str:
    """Per CG stage (r0, ap1, …) for the masked vectors, else the method."""
    return str(args[2]) if method in ("residual", "product") else method


class RemoteParty:
    """The coordinator's handle on one party service (training.party_api.Party over mTLS)."""

    remote = True

    def __init__(self, name: str, url: str, tls_dir: str | Path, timeout: float = 300.0, retries: int = 4,
                 backoff: float = 0.25, stats: WireStats | None = None, duplex: bool = True,
                 references: bool = True):
        self.name, self.duplex = name, bool(duplex)
        self.channel = PartyChannel(name, url, tls_dir, "call", timeout=timeout, retries=retries, backoff=backoff,
                                    stats=stats, references=references)
        self.url, self.timeout, self.stats = self.channel.url, self.channel.timeout, stats
        self._known = self.channel.known if references else ArrayCache()  # digests the party holds

    @property
    def _seq(self) -> int:
        """The channel's sequence number (a test or fault bench rewinds it to replay a call)."""
        return self.channel._seq

    @_seq.setter
    def _seq(self, value: int) -> None:
        self.channel._seq = value

    def close(self) -> None:
        self.channel.close()

    def _call(self, method: str, *args, framed: bool = False):
        return self.channel.call(method, *args, stats_key=_stage_key(method, args),
                                 framed=(lambda reader: self._unframe(method, reader)) if framed else None)

    def _unframe(self, method: str, reader: FrameReader):
        """The masked message of a duplex stage: its streamed payload and its closing header."""
        if reader.end is None:
            raise PartyUnavailable(f"party {self.name!r}: {method} stream ended early")
        kind, value = reader.end
        if kind == FRAME_ERROR:
            cls = ERRORS.get(value.get("type"), RemotePartyError)
            raise cls(f"party {self.name!r}, {method}: {value.get('error')}")
        if len(reader.payload) % value.payload.itemsize:
            raise ProtocolError(f"party {self.name!r}: {method} payload is not whole ring elements")
        return dataclasses.replace(value, payload=np.frombuffer(reader.payload, dtype=value.payload.dtype))

    def _masked(self, method: str, run_id, round_no, stage, V):
        """A CG stage. A large array the party does not hold goes up its own stream while the
        masked rows come back on the call's response (both link directions busy at once)."""
        V = np.ascontiguousarray(V)
        if not self.duplex or V.nbytes < transport.REF_MIN_BYTES or array_digest(V) in self._known:
            return self._call(method, run_id, round_no, stage, V)
        token, failed = secrets.token_hex(16), []
        upload = threading.Thread(target=self._upload, args=(token, V, stage, failed), daemon=True)
        upload.start()
        try:
            return self._call(method, run_id, round_no, stage, UploadRef(token, V), framed=True)
        except (RemotePartyError, ProtocolError, PartyUnavailable) as exc:
            if failed:
                raise PartyUnavailable(f"party {self.name!r}: upload for {stage} failed ({failed[0]}); {exc}") from None
            raise
        finally:
            upload.join(timeout=self.timeout)

    def _upload(self, token: str, V: np.ndarray, stage: str, failed: list) -> None:
        view = memoryview(V.reshape(-1)).cast("B")

        def body():
            for start in range(0, len(view), PIECE):
                yield bytes(view[start:start + PIECE])

        try:
            resp = self.channel.client.post(f"{self.url}/v1/upload/{token}", content=body(),
                                     headers={"X-Wenlv-Dtype": V.dtype.str,
                                              "X-Wenlv-Shape": ",".join(map(str, V.shape))},
                                     extensions={"sni_hostname": self.name})
            if resp.status_code != 204:
                failed.append(f"HTTP {resp.status_code}: {resp.text[:200]}")
            elif self.stats is not None:
                self.stats.add_upload(self.name, stage, len(view))
        except httpx.HTTPError as exc:
            failed.append(f"{type(exc).__name__}: {exc}")

    # the Party protocol ---------------------------------------------------------------
    def describe(self) -> dict:
        return self._call("describe")

    def setup(self, parties, identities, factors, regularization, cg_steps, dtype, frac_bits, num_threads=0,
              item_factors=None, random_state=None, ring_bits=64) -> None:
        return self._call("setup", list(parties), dict(identities), factors, regularization, cg_steps, dtype,
                          frac_bits, num_threads, item_factors, random_state, ring_bits)

    def announce(self, run_id, round_no):
        return self._call("announce", run_id, round_no)

    def receive_keys(self, run_id, round_no, announcements) -> None:
        return self._call("receive_keys", run_id, round_no, list(announcements))

    def support(self, run_id, round_no):
        return self._call("support", run_id, round_no)

    def gram(self, run_id, round_no):
        return self._call("gram", run_id, round_no)

    def residual(self, run_id, round_no, stage, X):
        return self._masked("residual", run_id, round_no, stage, X)

    def product(self, run_id, round_no, stage, P):
        return self._masked("product", run_id, round_no, stage, P)

    def end_round(self, run_id, round_no) -> None:
        return self._call("end_round", run_id, round_no)

    def item_step(self, X, user_gram=None) -> None:
        return self._call("item_step", X, user_gram)

    def item_factors(self):
        return self._call("item_factors")

    def save(self, run_id) -> str:
        return self._call("save", run_id)


# ------------------------------------------------------------------------ the party side
class _Sequencer:
    """Per client session, which sequence numbers were seen: each is accepted once.

    A coordinator may have several calls of one session in flight at once (the feature run
    finishes two PSI sessions with the carrier in parallel), and the later-numbered one can
    arrive first; so, as IPsec's anti-replay window does, a number is accepted if it is new and
    within `window` of the largest seen, and refused if seen before or older than that.
    """

    def __init__(self, limit: int = 64, window: int = 64):
        self.lock = threading.Lock()
        self.seen: dict[str, tuple[int, set[int]]] = {}  # session -> (largest, the numbers seen within the window)
        self.limit, self.window = limit, window

    def check(self, session: str, seq: int) -> None:
        with self.lock:
            largest, recent = self.seen.get(session, (0, set()))
            if seq in recent or seq <= largest - self.window or seq <= 0:
                raise ProtocolError(f"replayed request: sequence {seq} of session {session[:8]}… already seen")
            if session not in self.seen and len(self.seen) >= self.limit:
                self.seen.pop(next(iter(self.seen)))   # oldest session first (dicts keep order)
            largest = max(largest, seq)
            self.seen[session] = (largest, {n for n in (*recent, seq) if n > largest - self.window})


class _Side:
    """One side of the service (its ALS party, its towers), built from the party's folder when first
    called (the folder may be filled by a feature run of this same service first) and rebuilt
    after each feature run. `side`: the object itself, or (name, loader)."""

    def __init__(self, side):
        loaded = not isinstance(side, tuple)
        self.name = side.name if loaded else side[0]
        self._side = side if loaded else None
        self._loader = None if loaded else side[1]

    def get(self):
        if self._side is None:
            self._side = self._loader()
        return self._side

    def reset(self) -> None:
        if self._loader is not None:
            self._side = None


class _Area:
    """One family of routes, ``POST /v1/<area>/<method>``: the methods a side answers, one call
    at a time (`lock`: the side is a state machine), and which failures are the caller's fault
    (refused: 409 for a protocol violation, else 400; anything else is 500)."""

    def __init__(self, get, methods, lock: threading.Lock, refused: tuple, unknown: str, after=None,
                 streaming=None, cache: ArrayCache | None = None, uploads: Uploads | None = None):
        self.get, self.methods, self.lock, self.refused, self.unknown = get, methods, lock, refused, unknown
        self.after, self.streaming, self.cache, self.uploads = after, streaming, cache, uploads


def _error(status: int, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": str(exc), "type": type(exc).__name__}, status_code=status)


def _add_area(app: FastAPI, name: str, area: _Area, seq: _Sequencer, party: str) -> None:
    @app.post(f"/v1/{name}/{{method}}")
    async def call(method: str, request: Request):
        if method not in area.methods():
            return _error(404, ProtocolError(area.unknown.format(method=method)))
        try:
            seq.check(request.headers.get("x-wenlv-session", ""), int(request.headers.get("x-wenlv-seq", "0")))
            decoder = Decoder(area.cache, area.uploads)
            async for chunk in request.stream():
                decoder.feed(chunk)
            args = decoder.result()
            if not isinstance(args, tuple):
                raise ProtocolError("arguments must be a tuple")
        except (ProtocolError, ValueError) as exc:
            return _error(409 if "replayed" in str(exc) else 400, exc)
        if area.streaming is not None:
            streamed = area.streaming(method, args)
            if streamed is not None:
                return streamed

        def run():
            with area.lock:
                value = getattr(area.get(), method)(*args)
            if area.after is not None:
                area.after(method)
            return value

        started = time.perf_counter()
        try:
            value = await run_in_threadpool(run)
        except area.refused as exc:
            log.warning("party %s: %s %s refused: %s", party, name, method, exc)
            return _error(409 if isinstance(exc, ProtocolError) else 400, exc)
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the coordinator, named
            log.exception("party %s: %s %s failed", party, name, method)
            return _error(500, exc)
        # the party's own seconds on the call: the coordinator subtracts them to get network time
        return StreamingResponse(encode_chunks(value), media_type="application/x-wenlv",
                                 headers={"X-Wenlv-Compute-Seconds": f"{time.perf_counter() - started:.6f}"})


def party_app(party, features=None, towers=None) -> FastAPI:
    """The party's service: the Party protocol's methods, one at a time (the driver's order).

    `party`: its FederatedALSParty, or (name, loader) to build it from its folder on first use.
    `features`: its side of the feature run (a spark_jobs.party_features.FeatureParty, passed in
    so that this module loads no Spark), reachable at ``/v1/features/<method>`` for the names in
    its METHODS; None for a service that only trains.
    `towers`: its side of the split towers (training.tower_party.TowerSide, or (name, loader) to
    build it on first use — passed in so that this module loads no torch), at
    ``/v1/towers/<method>`` for TOWER_METHODS; None for a party without a bottom tower.
    """
    als = _Side(party)
    app = FastAPI(title=f"wenlv party {als.name}", docs_url=None, redoc_url=None, openapi_url=None)
    seq = _Sequencer()
    lock = threading.Lock()  # one protocol call at a time: the party object is a state machine
    tower_lock = threading.Lock()
    cache = ArrayCache()       # large arrays received lately (the user factors of the item step)
    uploads = Uploads()        # arrays arriving on their own stream (duplex CG stages)
    tower_side = None if towers is None else _Side(towers)

    def duplex(method: str, args: tuple):
        if method in ("residual", "product") and any(isinstance(a, StreamedArray) for a in args):
            return StreamingResponse(_duplex_frames(als.get(), method, args, lock),
                                     media_type="application/x-wenlv-frames")
        return None

    def after_feature_step(method: str) -> None:
        if method == "finish":   # new blocks: the next training run loads them
            with lock:
                als.reset()
            if tower_side is not None:
                with tower_lock:
                    tower_side.reset()

    _add_area(app, "call", _Area(als.get, lambda: METHODS, lock, (ProtocolError,),
                                 "method {method!r} is not part of the Party protocol", streaming=duplex,
                                 cache=cache, uploads=uploads), seq, als.name)
    # one feature step at a time (a step runs its own Spark jobs at once)
    _add_area(app, "features", _Area(lambda: features, lambda: features.METHODS if features else (),
                                     threading.Lock(), (WenlvError, TypeError),
                                     "method {method!r} is not a feature step of this service",
                                     after=after_feature_step), seq, als.name)
    _add_area(app, "towers", _Area(tower_side.get if tower_side else None,
                                   lambda: TOWER_METHODS if tower_side else (), tower_lock, (WenlvError, TypeError),
                                   "method {method!r} is not a tower step of this service"), seq, als.name)

    @app.post("/v1/upload/{token}")
    async def upload(token: str, request: Request):
        try:
            shape = tuple(int(d) for d in request.headers.get("x-wenlv-shape", "").split(","))
            target = uploads.get(token, request.headers.get("x-wenlv-dtype", ""), shape)
        except (ProtocolError, ValueError, TypeError) as exc:
            return _error(409 if "replayed" in str(exc) else 400, exc)
        try:
            async for chunk in request.stream():
                target.feed(chunk)
        except ProtocolError as exc:
            target.fail(str(exc))
            return _error(400, exc)
        except Exception as exc:  # noqa: BLE001 - a broken stream: the waiting stage must hear of it
            target.fail(f"{type(exc).__name__}: {exc}")
            raise
        if not target.complete():
            target.fail("upload shorter than declared")
            return _error(400, ProtocolError("upload shorter than declared"))
        return Response(status_code=204)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "party": als.name, "features": features is not None, "towers": towers is not None}

    return app


def _duplex_frames(party, method: str, args: tuple, lock: threading.Lock):
    """Run a CG stage whose input is still arriving; yield its masked rows as they are final
    (low halves on the 32-bit ring), then the signed header — or the error."""
    cond = threading.Condition()
    state = {"prefix": 0, "out": None, "done": False, "result": None, "error": None}
    finished: dict[int, int] = {}

    def progress(start: int, stop: int, out: np.ndarray) -> None:
        with cond:
            state["out"] = out
            finished[start] = stop
            p = state["prefix"]
            while p in finished:
                p = finished.pop(p)
            state["prefix"] = p
            cond.notify_all()

    def work() -> None:
        try:
            with lock:
                state["result"] = getattr(party, method)(*args, progress=progress)
        except Exception as exc:  # noqa: BLE001 - goes back to the coordinator in the closing frame
            log.exception("party %s: %s failed", party.name, method)
            state["error"] = exc
        finally:
            with cond:
                state["done"] = True
                cond.notify_all()

    threading.Thread(target=work, name=f"{method}-stage", daemon=True).start()
    narrow = party._cfg.get("ring_bits", 64) == 32
    sent = 0
    while True:  # ends when the stage's thread is done (its input waits are bounded)
        with cond:
            while state["prefix"] == sent and not state["done"]:
                cond.wait(1.0)
            prefix, out, done = state["prefix"], state["out"], state["done"]
        if prefix > sent and state["error"] is None:
            piece = out[sent:prefix]
            data = piece.astype(np.uint32).tobytes() if narrow else piece.tobytes()
            sent = prefix
            for start in range(0, len(data), PIECE):
                yield from frame(FRAME_DATA, data[start:start + PIECE])
            continue
        if done:
            break
    if state["error"] is not None:
        exc = state["error"]
        yield from frame(FRAME_ERROR, encode({"error": str(exc), "type": type(exc).__name__}))
    else:
        msg = state["result"]
        yield from frame(FRAME_END, encode(dataclasses.replace(msg, payload=np.empty(0, msg.payload.dtype))))


def load_party(party: str, data: str | Path, state: str | Path | None = None, alpha: float = 1.0
               ) -> FederatedALSParty:
    """The party's ALS side from its own folder only: its block and the shared user axis."""
    data = Path(data)
    block = load_party_block(data, party, load_users(data))
    return FederatedALSParty(party, block.matrix, alpha=alpha, state_dir=state or data / ".wenlv-party")


def serve(party, host: str, port: int, tls_dir: str | Path, ready=None,
          features=None, towers=None) -> None:
    """Run the party's service until stopped (SIGINT/SIGTERM); mutual TLS, pinned coordinator.
    `party`, `features` and `towers` as in :func:`party_app`."""
    name = _Side(party).name
    context = tls.server_context(tls_dir, name)
    config = uvicorn.Config(party_app(party, features, towers), host=host, port=port, log_level="warning", access_log=False,
                            ssl_certfile=str(Path(tls_dir) / f"{name}.pem"),
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
