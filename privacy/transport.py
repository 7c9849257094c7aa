"""Parties in their own processes, talking to the coordinator over loopback HTTP.

The coordinator runs a tiny HTTP server (stdlib ``http.server``, 127.0.0.1, a free
port). The protocol driver holds one :class:`RemoteParty` per party: calling a method on
it queues a task; the party's process long-polls ``GET /v1/task?party=…``, runs the
method on its own local object and posts the answer to ``POST /v1/result?task=…``. A
party that does not answer in time raises :class:`PartyUnavailable` (the round aborts
and is re-keyed). So the same driver code runs parties in-process or remote.

Bodies are a small self-describing format (:func:`encode` / :func:`decode`): an ``.npz``
archive of the arrays plus a JSON skeleton, loaded with ``allow_pickle=False`` — no
pickle crosses the wire. Only whitelisted protocol dataclasses are rebuilt. The HTTP
channel itself is not authenticated (loopback here; TLS in a deployment): masked
messages and key announcements are signed by the parties' identity keys
(privacy.secure_agg), which is what the coordinator checks.
"""
from __future__ import annotations

import dataclasses
import io
import itertools
import json
import logging
import queue
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import numpy as np

from wenlv.privacy.secure_agg import (DropoutError, KeyAnnouncement, MaskedMessage, PartyUnavailable, ProtocolError,
                                SecureAggError)
from wenlv.errors import WenlvError

log = logging.getLogger(__name__)

_DATACLASSES = {cls.__name__: cls for cls in (KeyAnnouncement, MaskedMessage)}
_ERRORS = {cls.__name__: cls for cls in (ProtocolError, PartyUnavailable, DropoutError, SecureAggError, WenlvError)}
STOP = "__stop__"


class RemotePartyError(WenlvError):
    """A remote party's method failed; the message names the party and the method."""


# ------------------------------------------------------------------ wire format
def encode(obj) -> bytes:
    arrays: list[np.ndarray] = []

    def skel(o):
        if o is None or isinstance(o, (bool, int, float, str)):
            return o
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            arrays.append(o)
            return {"__nd__": len(arrays) - 1}
        if isinstance(o, bytes):
            return {"__bytes__": o.hex()}
        if isinstance(o, tuple):
            return {"__tuple__": [skel(v) for v in o]}
        if isinstance(o, list):
            return [skel(v) for v in o]
        if isinstance(o, dict):
            if not all(isinstance(k, str) for k in o):
                raise TypeError("only str dict keys cross the wire")
            return {"__dict__": {k: skel(v) for k, v in o.items()}}
        if type(o).__name__ in _DATACLASSES and dataclasses.is_dataclass(o):
            return {"__dc__": type(o).__name__,
                    "fields": {f.name: skel(getattr(o, f.name)) for f in dataclasses.fields(o)}}
        raise TypeError(f"cannot send a {type(o).__name__} over the wire")

    meta = json.dumps(skel(obj)).encode()
    buf = io.BytesIO()
    np.savez(buf, __meta__=np.frombuffer(meta, dtype=np.uint8), **{f"a{i}": a for i, a in enumerate(arrays)})
    return buf.getvalue()


def decode(data: bytes):
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        meta = json.loads(z["__meta__"].tobytes())
        arrays = {k: z[k] for k in z.files if k != "__meta__"}

    def build(o):
        if isinstance(o, list):
            return [build(v) for v in o]
        if not isinstance(o, dict):
            return o
        if "__nd__" in o:
            return arrays[f"a{o['__nd__']}"]
        if "__bytes__" in o:
            return bytes.fromhex(o["__bytes__"])
        if "__tuple__" in o:
            return tuple(build(v) for v in o["__tuple__"])
        if "__dict__" in o:
            return {k: build(v) for k, v in o["__dict__"].items()}
        if "__dc__" in o:
            cls = _DATACLASSES.get(o["__dc__"])
            if cls is None:
                raise ProtocolError(f"unknown message type {o['__dc__']!r}")
            fields = {k: build(v) for k, v in o["fields"].items()}
            if "shape" in fields:
                fields["shape"] = tuple(fields["shape"])
            return cls(**fields)
        raise ProtocolError("malformed body")

    return build(meta)


# ------------------------------------------------------------------ coordinator side
class CoordinatorServer:
    """Task queues per party and their answers, behind an HTTP server on 127.0.0.1."""

    def __init__(self, parties, host: str = "127.0.0.1", port: int = 0, poll_seconds: float = 5.0):
        self.parties = tuple(parties)
        self.poll_seconds = poll_seconds
        self._tasks = {p: queue.Queue() for p in self.parties}
        self._results: dict[int, tuple[threading.Event, list]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((host, port), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="coordinator-http", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "CoordinatorServer":
        self._thread.start()
        return self

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def call(self, party: str, method: str, args: tuple, timeout: float):
        """Queue a call for a party and wait for its answer."""
        task_id = next(self._ids)
        event, box = threading.Event(), []
        with self._lock:
            self._results[task_id] = (event, box)
        self._tasks[party].put(encode({"id": task_id, "method": method, "args": tuple(args)}))
        if not event.wait(timeout):
            with self._lock:
                self._results.pop(task_id, None)
            raise PartyUnavailable(f"party {party!r} did not answer {method!r} within {timeout:g} s")
        answer = box[0]
        if "error" in answer:
            cls = _ERRORS.get(answer.get("type"), RemotePartyError)
            raise cls(f"party {party!r}, {method}: {answer['error']}")
        return answer["value"]

    def stop_party(self, party: str) -> None:
        self._tasks[party].put(encode({"id": 0, "method": STOP, "args": ()}))

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt, *args):  # quiet: bodies are never logged anyway
                log.debug("coordinator http: " + fmt, *args)

            def _reply(self, code: int, body: bytes = b"", ctype: str = "application/octet-stream"):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _error(self, code: int, message: str):
                self._reply(code, json.dumps({"error": message}).encode(), "application/json")

            def do_GET(self):
                url = urlparse(self.path)
                if url.path == "/health":
                    return self._reply(200, b'{"status":"ok"}', "application/json")
                if url.path != "/v1/task":
                    return self._error(404, f"no route {url.path}")
                party = parse_qs(url.query).get("party", [""])[0]
                if party not in server._tasks:
                    return self._error(404, f"unknown party {party!r}")
                try:
                    body = server._tasks[party].get(timeout=server.poll_seconds)
                except queue.Empty:
                    return self._reply(204)
                self._reply(200, body)

            def do_POST(self):
                url = urlparse(self.path)
                if url.path != "/v1/result":
                    return self._error(404, f"no route {url.path}")
                try:
                    task_id = int(parse_qs(url.query).get("task", [""])[0])
                    answer = decode(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                except (ValueError, ProtocolError, OSError) as exc:
                    return self._error(400, f"bad result: {exc}")
                with server._lock:
                    slot = server._results.pop(task_id, None)
                if slot is None:
                    return self._error(409, f"task {task_id} is not awaited (late or replayed answer)")
                slot[1].append(answer)
                slot[0].set()
                self._reply(204)

        return Handler


class RemoteParty:
    """Stands in for a party object in the driver; every method call goes over HTTP."""

    remote = True

    def __init__(self, server: CoordinatorServer, name: str, timeout: float = 120.0):
        self.server, self.name, self.timeout = server, name, timeout

    def __getattr__(self, method: str):
        if method.startswith("_"):
            raise AttributeError(method)

        def call(*args):
            return self.server.call(self.name, method, args, self.timeout)

        return call


# ------------------------------------------------------------------ party side
def serve_party(url: str, party: str, obj, idle_timeout: float = 600.0) -> None:
    """Run `obj`'s methods for the coordinator at `url` until told to stop (or idle too long)."""
    import httpx

    last = time.monotonic()
    with httpx.Client(base_url=url, timeout=httpx.Timeout(60.0)) as client:
        while True:
            try:
                resp = client.get("/v1/task", params={"party": party})
            except httpx.TransportError:
                if time.monotonic() - last > idle_timeout:
                    raise WenlvError(f"party {party}: coordinator at {url} unreachable") from None
                time.sleep(0.2)
                continue
            if resp.status_code == 204:
                if time.monotonic() - last > idle_timeout:
                    raise WenlvError(f"party {party}: no task for {idle_timeout:g} s; stopping")
                continue
            if resp.status_code != 200:
                raise WenlvError(f"party {party}: coordinator answered {resp.status_code}: {resp.text[:200]}")
            last = time.monotonic()
            task = decode(resp.content)
            if task["method"] == STOP:
                return
            try:
                if task["method"].startswith("_"):
                    raise ProtocolError(f"method {task['method']!r} is not callable remotely")
                answer = {"value": getattr(obj, task["method"])(*task["args"])}
            except Exception as exc:  # noqa: BLE001 - every failure goes back to the coordinator, named
                log.exception("party %s: %s failed", party, task["method"])
                answer = {"error": str(exc), "type": type(exc).__name__}
            client.post("/v1/result", params={"task": task["id"]}, content=encode(answer))
