"""The wire format between the coordinator and the party services: streamed, pickle-free.

A body is ``WLV2`` ‖ u32 length ‖ JSON skeleton ‖ the raw bytes of every array, in order.
The skeleton holds plain values and placeholders for arrays (dtype, shape), bytes, tuples,
str-keyed dicts and the whitelisted protocol dataclasses (KeyAnnouncement, MaskedMessage);
nothing else can be sent, and nothing is ever unpickled. Arrays go out in pieces of
:data:`PIECE` bytes straight from their buffers (:func:`encode_chunks`) and come in
straight into preallocated arrays (:class:`Decoder`), so neither side copies a whole
payload to build or to parse a body. Only numeric dtypes are accepted, and the declared
sizes are bounded before anything is allocated.

Two ways to send less or sooner: a large array the receiver already holds goes as its
digest (:class:`ArrayCache`); and a CG stage goes duplex — its input travels on its own
upload stream (:class:`UploadRef` → :class:`StreamedArray`) while the masked rows come back
in frames as they are made (:func:`frame`, :class:`FrameReader`).

Authentication is not here: the channel is mutual TLS with pinned certificates
(privacy.tls, training.remote), and masked messages and key announcements carry their own
Ed25519 signatures bound to (run, round, stage) (privacy.secure_agg), which the
coordinator's Aggregator checks whatever the channel.
"""
from __future__ import annotations

import dataclasses
import json
import struct
import threading
import time

import blake3
import numpy as np

from wenlv.privacy.secure_agg import (DropoutError, KeyAnnouncement, MaskedMessage, PartyUnavailable, ProtocolError,
                                      SecureAggError)
from wenlv.errors import WenlvError

MAGIC = b"WLV2"
PIECE = 1 << 20           # bytes per streamed piece of an array
MAX_META = 1 << 20        # a skeleton larger than this is refused
MAX_BODY = 1 << 36        # 64 GiB: refuse absurd declared sizes before allocating
REF_MIN_BYTES = 1 << 20   # arrays at least this large may go by reference (ArrayCache)
CACHE_SLOTS = 2
_DTYPES = frozenset("biuf")  # numeric kinds only (no object, no void, no strings)
_DATACLASSES = {cls.__name__: cls for cls in (KeyAnnouncement, MaskedMessage)}
ERRORS = {cls.__name__: cls for cls in (ProtocolError, PartyUnavailable, DropoutError, SecureAggError, WenlvError)}


class RemotePartyError(WenlvError):
    """A remote party's method failed; the message names the party and the method."""


def array_digest(a: np.ndarray) -> str:
    """BLAKE3 of an array's dtype, shape and bytes: its name in the receiver's cache."""
    h = blake3.blake3(f"{a.dtype.str}|{a.shape}|".encode())
    h.update(memoryview(np.ascontiguousarray(a).reshape(-1)).cast("B"))
    return h.hexdigest()


class ArrayCache:
    """The last :data:`CACHE_SLOTS` large arrays that crossed, by digest, on both ends of a link.

    The CG start residual needs the user factors each party already received for its last
    item step: instead of sending them again (users × factors numbers), the coordinator sends
    their digest and the party takes them from its cache. Both ends update the same way after
    every call, so they agree on what is cached; an unknown reference is refused (the sender
    then sends the array itself). Nothing new is revealed: the party holds those values already.
    """

    def __init__(self):
        self._items: dict[str, np.ndarray | None] = {}

    def __contains__(self, digest: str) -> bool:
        return digest in self._items

    def get(self, digest: str) -> np.ndarray:
        a = self._items.get(digest)
        if a is None:
            raise ProtocolError(f"unknown array reference {digest[:12]}…")
        return a

    def put(self, digest: str, array: np.ndarray | None) -> None:
        """Remember a digest (the receiver keeps the array, read-only; the sender only the digest)."""
        if array is not None:
            array.setflags(write=False)
        self._items.pop(digest, None)
        self._items[digest] = array
        while len(self._items) > CACHE_SLOTS:
            self._items.pop(next(iter(self._items)))

    def clear(self) -> None:
        self._items.clear()


def _skeleton(obj, arrays: list, known: ArrayCache | None = None, sent_digests: list | None = None) -> object:
    def skel(o):
        if o is None or isinstance(o, (bool, int, float, str)):
            return o
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            if o.dtype.kind not in _DTYPES:
                raise TypeError(f"cannot send a {o.dtype} array over the wire")
            if known is not None and o.nbytes >= REF_MIN_BYTES:
                digest = array_digest(o)
                sent_digests.append(digest)
                if digest in known:
                    return {"__ref__": digest}
                arrays.append(np.ascontiguousarray(o))
                return {"__nd__": len(arrays) - 1, "dtype": o.dtype.str, "shape": list(o.shape), "cache": digest}
            arrays.append(np.ascontiguousarray(o))
            return {"__nd__": len(arrays) - 1, "dtype": o.dtype.str, "shape": list(o.shape)}
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
        if isinstance(o, UploadRef):
            return {"__upload__": o.token, "dtype": o.array.dtype.str, "shape": list(o.array.shape)}
        if type(o).__name__ in _DATACLASSES and dataclasses.is_dataclass(o):
            return {"__dc__": type(o).__name__,
                    "fields": {f.name: skel(getattr(o, f.name)) for f in dataclasses.fields(o)}}
        raise TypeError(f"cannot send a {type(o).__name__} over the wire")

    return skel(obj)


def encode_chunks(obj, known: ArrayCache | None = None, sent_digests: list | None = None):
    """The body of `obj` as an iterator of byte pieces (arrays streamed from their buffers).

    With `known` (the sender's mirror of the receiver's :class:`ArrayCache`), a large array
    the receiver holds goes as a reference; the digests of the large arrays go to `sent_digests`.
    """
    arrays: list[np.ndarray] = []
    meta = json.dumps(_skeleton(obj, arrays, known, sent_digests if sent_digests is not None else [])).encode()
    yield MAGIC + struct.pack(">I", len(meta)) + meta
    for a in arrays:
        view = memoryview(a.reshape(-1)).cast("B") if a.size else memoryview(b"")
        for start in range(0, len(view), PIECE):
            yield bytes(view[start:start + PIECE])


def body_size(obj) -> int:
    """Bytes :func:`encode_chunks` sends for `obj` (for byte accounting without encoding)."""
    arrays: list[np.ndarray] = []
    meta = json.dumps(_skeleton(obj, arrays)).encode()
    return len(MAGIC) + 4 + len(meta) + sum(a.nbytes for a in arrays)


class Decoder:
    """Parses a body fed in pieces of any size into preallocated arrays; :meth:`result` at the end."""

    def __init__(self, cache: ArrayCache | None = None, uploads: "Uploads | None" = None):
        self.cache, self.uploads = cache, uploads
        self._head = bytearray()
        self._started = False
        self._meta = None
        self._arrays: list[np.ndarray] = []
        self._views: list[memoryview] = []
        self._k, self._filled = 0, 0
        self.received = 0

    def feed(self, data) -> None:
        data = memoryview(data).cast("B")
        self.received += len(data)
        if not self._started:
            self._head += data
            if len(self._head) < 8:
                return
            if bytes(self._head[:4]) != MAGIC:
                raise ProtocolError("not a wenlv body (bad magic)")
            (n,) = struct.unpack(">I", self._head[4:8])
            if n > MAX_META:
                raise ProtocolError(f"body skeleton of {n} bytes refused")
            if len(self._head) < 8 + n:
                return
            self._start(bytes(self._head[8:8 + n]))
            data, self._head = memoryview(bytes(self._head[8 + n:])), bytearray()
        while len(data):
            if self._k >= len(self._views):
                raise ProtocolError("body longer than its skeleton declares")
            view = self._views[self._k]
            take = min(len(view) - self._filled, len(data))
            view[self._filled:self._filled + take] = data[:take]
            self._filled += take
            data = data[take:]
            if self._filled == len(view):
                self._k, self._filled = self._k + 1, 0
                self._skip_empty()

    def _start(self, meta_bytes: bytes) -> None:
        self._started = True
        try:
            self._meta = json.loads(meta_bytes)
        except ValueError:
            raise ProtocolError("malformed body skeleton") from None
        specs: list[dict] = []

        def walk(o):
            if isinstance(o, list):
                for v in o:
                    walk(v)
            elif isinstance(o, dict):
                if "__nd__" in o:
                    specs.append(o)
                for v in o.values():
                    walk(v)

        walk(self._meta)
        specs.sort(key=lambda s: s["__nd__"])
        if [s["__nd__"] for s in specs] != list(range(len(specs))):
            raise ProtocolError("malformed body: array placeholders out of order")
        total = 0
        for s in specs:
            try:
                dtype = np.dtype(s["dtype"])
                shape = tuple(int(d) for d in s["shape"])
            except (TypeError, ValueError, KeyError):
                raise ProtocolError("malformed body: bad array declaration") from None
            if dtype.kind not in _DTYPES or any(d < 0 for d in shape):
                raise ProtocolError(f"malformed body: array of {dtype} {shape} refused")
            total += int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if total > MAX_BODY:
                raise ProtocolError("body declares more than the size limit")
            a = np.empty(shape, dtype=dtype)
            self._arrays.append(a)
            self._views.append(memoryview(a.reshape(-1)).cast("B") if a.size else memoryview(bytearray()))
        self._skip_empty()

    def _skip_empty(self) -> None:
        while self._k < len(self._views) and len(self._views[self._k]) == 0:
            self._k += 1

    def result(self):
        if not self._started or self._k != len(self._views):
            raise ProtocolError("body ended early (truncated)")
        return _build(self._meta, self._arrays, self.cache, self.uploads)


def _build(meta, arrays, cache: ArrayCache | None = None, uploads=None):
    def build(o):
        if isinstance(o, list):
            return [build(v) for v in o]
        if not isinstance(o, dict):
            return o
        if "__upload__" in o:
            if uploads is None:
                raise ProtocolError("upload reference where none is expected")
            try:
                return uploads.get(str(o["__upload__"]), o["dtype"], o["shape"])
            except (TypeError, KeyError, ValueError):
                raise ProtocolError("malformed upload reference") from None
        if "__ref__" in o:
            if cache is None:
                raise ProtocolError("array reference without a cache")
            return cache.get(o["__ref__"])
        if "__nd__" in o:
            a = arrays[o["__nd__"]]
            if "cache" in o and cache is not None:
                if array_digest(a) != o["cache"]:
                    raise ProtocolError("cached array does not match its digest")
                cache.put(o["cache"], a)
            return a
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
            try:
                return cls(**fields)
            except TypeError:
                raise ProtocolError(f"malformed {o['__dc__']}") from None
        raise ProtocolError("malformed body")

    return build(meta)


def encode(obj) -> bytes:
    """The whole body as bytes (small messages and tests; the services stream)."""
    return b"".join(encode_chunks(obj))


def decode(data: bytes):
    decoder = Decoder()
    decoder.feed(data)
    return decoder.result()


# ------------------------------------------------------------------ duplex stages
# A CG stage sends users × factors values to a party and gets users × factors ring elements
# back. Sent one after the other, each link direction idles half the time. Instead the array
# goes up a second connection (POST /v1/upload/<token>, raw bytes) while the call that
# names the token streams the masked rows back as they are made (frames below): both
# directions of the link are busy at once.

class UploadRef:
    """Stands for an array that travels on its own upload stream (the call names its token)."""

    def __init__(self, token: str, array: np.ndarray):
        self.token, self.array = token, np.ascontiguousarray(array)


class StreamedArray:
    """An array still arriving: ``wait_rows(k)`` blocks until its first k rows are in."""

    def __init__(self, dtype, shape, timeout: float):
        dtype = np.dtype(dtype)
        if dtype.kind not in _DTYPES or not shape or any(int(d) < 0 for d in shape):
            raise ProtocolError(f"upload of {dtype} {shape} refused")
        if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize > MAX_BODY:
            raise ProtocolError("upload larger than the size limit")
        self.array = np.empty(tuple(int(d) for d in shape), dtype=dtype)
        self._view = memoryview(self.array.reshape(-1)).cast("B") if self.array.size else memoryview(bytearray())
        self._row_bytes = max(self.array[0].nbytes if self.array.shape[0] else 1, 1)
        self.filled, self.failed, self.timeout = 0, None, timeout
        self._cond = threading.Condition()

    def feed(self, data) -> None:
        data = memoryview(data).cast("B")
        with self._cond:
            if self.filled + len(data) > len(self._view):
                raise ProtocolError("upload longer than declared")
            self._view[self.filled:self.filled + len(data)] = data
            self.filled += len(data)
            self._cond.notify_all()

    def fail(self, why: str) -> None:
        with self._cond:
            self.failed = why
            self._cond.notify_all()

    def complete(self) -> bool:
        return self.filled == len(self._view)

    def wait_rows(self, rows: int) -> None:
        need = min(int(rows) * self._row_bytes, len(self._view))
        deadline = time.monotonic() + self.timeout
        with self._cond:
            while self.filled < need:
                if self.failed:
                    raise ProtocolError(f"upload failed: {self.failed}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PartyUnavailable(f"upload stalled at {self.filled} of {len(self._view)} bytes")
                self._cond.wait(min(left, 1.0))


class Uploads:
    """The party's uploads by token. A token is claimed twice — by its upload stream and by the
    call that names it, in either order — then forgotten; a third claim is a replay. At most
    `limit` tokens are remembered."""

    def __init__(self, timeout: float = 300.0, limit: int = 256):
        self.timeout, self.limit = timeout, limit
        self._lock = threading.Lock()
        self._open: dict[str, StreamedArray] = {}
        self._claims: dict[str, int] = {}

    def get(self, token: str, dtype, shape) -> StreamedArray:
        """The upload of `token`, checked against what the other side declared."""
        with self._lock:
            claims = self._claims.get(token, 0)
            if claims >= 2:
                raise ProtocolError(f"replayed upload token {token[:8]}…")
            a = self._open.get(token)
            if a is None:
                a = self._open[token] = StreamedArray(dtype, shape, self.timeout)
            if a.array.dtype != np.dtype(dtype) or a.array.shape != tuple(int(d) for d in shape):
                raise ProtocolError(f"upload {token[:8]}…: declared twice differently")
            self._claims[token] = claims + 1
            if claims + 1 == 2:
                self._open.pop(token)  # both ends hold it now
            while len(self._claims) > self.limit:
                old = next(iter(self._claims))
                self._claims.pop(old)
                self._open.pop(old, None)
            return a


FRAME_DATA, FRAME_END, FRAME_ERROR = b"D", b"T", b"E"


def frame(kind: bytes, data) -> list:
    return [kind + struct.pack(">I", len(data)), data]


class FrameReader:
    """Reads a framed response: payload pieces into a growing buffer, then the closing message."""

    def __init__(self):
        self._buf = bytearray()
        self.payload = bytearray()
        self.end = None
        self.received = 0

    def feed(self, data) -> None:
        self.received += len(data)
        self._buf += data
        while len(self._buf) >= 5:
            kind, (n,) = bytes(self._buf[:1]), struct.unpack(">I", self._buf[1:5])
            if n > MAX_META and kind != FRAME_DATA:
                raise ProtocolError("oversized frame")
            if len(self._buf) < 5 + n:
                return
            body = bytes(self._buf[5:5 + n])
            del self._buf[:5 + n]
            if kind == FRAME_DATA:
                self.payload += body
            elif kind in (FRAME_END, FRAME_ERROR):
                self.end = (kind, decode(body))
            else:
                raise ProtocolError(f"unknown frame {kind!r}")
