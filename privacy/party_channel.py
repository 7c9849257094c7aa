"""The coordinator's call channel to one party service: pinned mutual TLS, pickle-free bodies.

One POST per call (``/v1/<area>/<method>``), the arguments as a privacy.transport body, the
answer streamed back in the same format. Every call carries a session id and a sequence
number the service requires to increase (a replayed request is refused). A connection that
cannot be made is retried with exponential backoff; a party that stays away raises
PartyUnavailable; a refused certificate raises ProtocolError at once (no retry).

training.remote.RemoteParty (federated ALS, with its duplex CG stages and array references)
speaks the same headers and format; the feature parties (spark_jobs.party_features) use
this plain channel, since their messages cross once per run.
"""
from __future__ import annotations

import secrets
import time
from pathlib import Path

import httpx

from wenlv.privacy import tls
from wenlv.privacy.secure_agg import PartyUnavailable, ProtocolError
from wenlv.privacy.transport import ERRORS, Decoder, RemotePartyError, encode_chunks


class PartyChannel:
    """Calls to one party's service; `sent`/`received` count the bytes of every call's bodies."""

    def __init__(self, name: str, url: str, tls_dir: str | Path, area: str, timeout: float = 300.0,
                 retries: int = 4, backoff: float = 0.25):
        self.name, self.url, self.area = name, url.rstrip("/"), area
        self.retries, self.backoff = int(retries), float(backoff)
        self.sent = self.received = 0
        self._session = secrets.token_hex(16)
        self._seq = 0
        self._client = httpx.Client(verify=tls.client_context(tls_dir, name),
                                    timeout=httpx.Timeout(float(timeout), connect=10.0, pool=10.0))

    def close(self) -> None:
        self._client.close()

    def call(self, method: str, *args):
        for attempt in range(self.retries + 1):
            self._seq += 1
            headers = {"X-Wenlv-Session": self._session, "X-Wenlv-Seq": str(self._seq)}
            sent = [0]

            def body():
                for piece in encode_chunks(tuple(args)):
                    sent[0] += len(piece)
                    yield piece

            try:
                with self._client.stream("POST", f"{self.url}/v1/{self.area}/{method}", content=body(),
                                         headers=headers, extensions={"sni_hostname": self.name}) as resp:
                    if resp.status_code != 200:
                        resp.read()
                        self._raise(method, resp)
                    decoder = Decoder()
                    for chunk in resp.iter_raw():
                        decoder.feed(chunk)
                    value = decoder.result()
                self.sent += sent[0]
                self.received += decoder.received
                return value
            except httpx.ConnectError as exc:   # nothing reached the party: safe to try again
                if "CERTIFICATE" in str(exc).upper() or "SSL" in str(exc).upper():
                    raise ProtocolError(f"party {self.name!r} at {self.url}: TLS refused ({exc})") from None
                if attempt == self.retries:
                    raise PartyUnavailable(f"party {self.name!r} at {self.url} unreachable after "
                                           f"{self.retries + 1} attempts ({method}): {exc}") from None
                time.sleep(min(self.backoff * 2 ** attempt, 5.0))
            except httpx.TransportError as exc:  # mid-call: the run stops, nothing is retried blindly
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
