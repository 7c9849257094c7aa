"""The coordinator's call channel to one party service: pinned mutual TLS, pickle-free bodies.

One POST per call (``/v1/<area>/<method>``), the arguments as a privacy.transport body, the
answer streamed back in the same format. Every call carries a session id and a sequence
number the service accepts once (a replayed request is refused). A connection that
cannot be made is retried with exponential backoff; a party that stays away raises
PartyUnavailable; a refused certificate raises ProtocolError at once (no retry).

Every client of a party service goes through it: training.remote.RemoteParty (federated ALS:
``/v1/call``, with array references and its duplex CG stages), training.remote_towers
(``/v1/towers``) and the feature parties (spark_jobs.party_features, ``/v1/features``).
"""
from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path

import httpx

from wenlv.privacy import tls
from wenlv.privacy.secure_agg import PartyUnavailable, ProtocolError
from wenlv.privacy.transport import ERRORS, ArrayCache, Decoder, FrameReader, RemotePartyError, encode_chunks


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

    def add_upload(self, party: str, key: str, sent: int) -> None:
        """Bytes of a stage's upload stream (the same call, counted once in `calls`)."""
        with self.lock:
            self.sent[party] = self.sent.get(party, 0) + sent
            self.by_stage.setdefault(key, {"calls": 0, "sent": 0, "received": 0})["sent"] += sent


class PartyChannel:
    """Calls to one party's service; `sent`/`received` count the bytes of every call's bodies.

    `references`: a large array the party already holds goes as its digest (privacy.transport's
    ArrayCache, mirrored here in `known`); if the party has lost its cache (restarted), the call
    is sent again with the arrays themselves. `stats`: every call is also counted there, under
    the key the caller names.
    """

    def __init__(self, name: str, url: str, tls_dir: str | Path, area: str, timeout: float = 300.0,
                 retries: int = 4, backoff: float = 0.25, stats: WireStats | None = None,
                 references: bool = False):
        self.name, self.url, self.area = name, url.rstrip("/"), area
        self.timeout, self.retries, self.backoff = float(timeout), int(retries), float(backoff)
        self.stats = stats
        self.known = ArrayCache() if references else None  # what the party holds (digests only)
        self.sent = self.received = 0
        self._session = secrets.token_hex(16)
        self._seq = 0
        self._seq_lock = threading.Lock()  # calls of one channel may run in parallel threads: each its own number
        self.client = httpx.Client(verify=tls.client_context(tls_dir, name),
                                   timeout=httpx.Timeout(self.timeout, connect=10.0, pool=10.0))

    def close(self) -> None:
        self.client.close()

    def call(self, method: str, *args, framed=None, stats_key: str | None = None):
        """POST the arguments, stream the answer back; retry only a connection never made.

        `framed`: the answer is a frame stream (a duplex stage) and ``framed(reader)`` makes
        the value of it."""
        started = time.perf_counter()
        by_reference = self.known is not None
        for attempt in range(self.retries + 1):
            with self._seq_lock:
                self._seq += 1
                seq = self._seq
            headers = {"X-Wenlv-Session": self._session, "X-Wenlv-Seq": str(seq)}
            sent, digests = [0], []
            known = self.known if by_reference else None

            def body():
                for piece in encode_chunks(tuple(args), known, digests):
                    sent[0] += len(piece)
                    yield piece

            try:
                with self.client.stream("POST", f"{self.url}/v1/{self.area}/{method}", content=body(),
                                        headers=headers, extensions={"sni_hostname": self.name}) as resp:
                    if resp.status_code != 200:
                        resp.read()
                        self.raise_for(method, resp)
                    compute = float(resp.headers.get("x-wenlv-compute-seconds", 0.0))
                    decoder = FrameReader() if framed else Decoder()
                    for chunk in resp.iter_raw():
                        decoder.feed(chunk)
                    value = framed(decoder) if framed else decoder.result()
                if self.known is not None:  # mirror the party's cache: it now holds what it received in full
                    for d in digests:
                        if d not in self.known:
                            self.known.put(d, None)
                self.sent += sent[0]
                self.received += decoder.received
                if self.stats is not None:
                    self.stats.add(self.name, stats_key or method, sent[0], decoder.received,
                                   time.perf_counter() - started, compute)
                return value
            except httpx.ConnectError as exc:   # nothing reached the party: safe to try again
                if "CERTIFICATE" in str(exc).upper() or "SSL" in str(exc).upper():
                    raise ProtocolError(f"party {self.name!r} at {self.url}: TLS refused ({exc})") from None
                if attempt == self.retries:
                    raise PartyUnavailable(f"party {self.name!r} at {self.url} unreachable after "
                                           f"{self.retries + 1} attempts ({method}): {exc}") from None
                time.sleep(min(self.backoff * 2 ** attempt, 5.0))
            except ProtocolError as exc:
                if by_reference and "unknown array reference" in str(exc):
                    self.known.clear()    # the party lost its cache (restarted): send the arrays themselves
                    by_reference = False
                    continue
                raise
            except httpx.TransportError as exc:  # mid-call: the round aborts, nothing is retried blindly
                raise PartyUnavailable(f"party {self.name!r} failed during {method}: {type(exc).__name__}: "
                                       f"{exc}") from None
        raise PartyUnavailable(f"party {self.name!r} at {self.url}: {method} not answered after "
                               f"{self.retries + 1} attempts")

    def raise_for(self, method: str, resp: httpx.Response):
        """The party's refusal as the error it named (its JSON answer)."""
        try:
            answer = resp.json()
        except ValueError:
            answer = {"error": resp.text[:300], "type": ""}
        cls = ERRORS.get(answer.get("type"), RemotePartyError)
        raise cls(f"party {self.name!r}, {method}: {answer.get('error')} (HTTP {resp.status_code})")
