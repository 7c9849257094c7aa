"""Two-party ECDH private set intersection (PSI) on the prime-order group ristretto255.

Why: the carrier, the tourism group and the internet platform must agree who their common
users are without any of them showing another its phone numbers, in clear or as a plain
hash (a hash of a phone number is reversed by enumerating the ~10^10 numbers of a country).

Protocol (semi-honest, both sides learn the intersection). Party A holds set X, party B
holds set Y; each draws a fresh secret scalar per session (`new_secret`):

1. A sends B the list {a·H(x) : x ∈ X} in a random order; B sends A {b·H(y) : y ∈ Y},
   also shuffled. H is a hash into the group (see `hash_to_group`).
2. Each re-blinds the other's list with its own secret and returns it in the order
   received: A returns {a·b·H(y)}, B returns {b·a·H(x)}. Because the lists were shuffled
   by their owners, the position carries nothing about the identity.
3. Each side now has a·b·H(·) for its own items (in its own order) and for the other's
   items (in an order it cannot link to identities); an own item is matched iff its
   doubly blinded point is in the other's set. The session token of a matched item is
   SHA-256(domain ‖ session id ‖ a·b·H(x)) — both sides derive the same token.

Leakage, by design: each side learns the intersection (which of its own items are also
held by the other) and the size of the other's set. Unmatched items reveal nothing
(their points are pseudorandom under the decisional Diffie–Hellman assumption), and the
tokens are unlinkable across sessions because the secrets are fresh. See docs/privacy.md.

Group: ristretto255 (RFC 9496), a prime-order group built on edwards25519, from the system
libsodium through `privacy.ristretto` (PyNaCl 1.6.2 exposes none of it). Every valid
encoding is an element of the group of prime order L: no cofactor, no small-order points
to check for. `hash_to_group` is `crypto_core_ristretto255_from_hash` of one SHA-512
output (RFC 9496's hash-to-group: two Elligator maps of the two halves, added);
multiplication is `crypto_scalarmult_ristretto255`, which refuses a non-canonical
encoding and an identity result. Version 2 of the protocol (v1 used the ed25519
prime-order subgroup); the domain strings carry the version and the group, so points or
tokens of the two versions never meet.

Error messages never carry an identifier: a value that fails is reported by position only.
"""
from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from wenlv.privacy import ristretto
from wenlv.errors import WenlvError

PROTOCOL = "wenlv-psi/v2/ristretto255"  # written into session.json; both sides must run it
HASH_DOMAIN = b"wenlv/psi/v2/hash-to-group/ristretto255/sha512"
TOKEN_DOMAIN = b"wenlv/psi/v2/session-token/sha256"
POINT_BYTES = ristretto.POINT_BYTES
GROUP_ORDER = ristretto.GROUP_ORDER


class PsiError(WenlvError):
    """A PSI message or input is unusable. Never carries the identifier or point that failed."""


def normalise_phone(phone: str) -> bytes:
    """The canonical form every party hashes: E.164 digits without '+', spaces or dashes."""
    digits = "".join(ch for ch in str(phone) if ch not in "+ -")
    if not digits.isdigit():
        raise PsiError("an identifier is not a phone number of digits (value withheld)")
    return digits.encode("ascii")


def _digest(identifier: bytes) -> bytes:
    return hashlib.sha512(HASH_DOMAIN + len(identifier).to_bytes(2, "big") + identifier).digest()


def hash_to_group(identifier: bytes) -> bytes:
    """H(x): ristretto255 from_hash of SHA-512(domain ‖ len(x) ‖ x); secret-free, a group element."""
    return ristretto.from_hash(_digest(identifier))


def new_secret() -> bytes:
    """A fresh uniformly random scalar in ]0, L[ (libsodium's crypto_core_ristretto255_scalar_random)."""
    while True:
        scalar = ristretto.scalar_random()
        if any(scalar):
            return scalar


def blind(point: bytes, secret: bytes) -> bytes:
    """secret·point; refuses a point that is not a canonical ristretto255 encoding (or an identity result)."""
    if len(point) != POINT_BYTES:
        raise PsiError(f"a PSI point has {len(point)} bytes, expected {POINT_BYTES}")
    try:
        return ristretto.scalarmult(secret, point)
    except ristretto.RistrettoError:
        raise PsiError("a PSI point is not a valid ristretto255 group element") from None


def hash_and_blind(identifier: bytes, secret: bytes) -> bytes:
    return blind(hash_to_group(identifier), secret)


def session_token(session_id: str, point: bytes) -> str:
    """The matched item's token: SHA-256 over domain ‖ session id ‖ doubly blinded point, hex."""
    return hashlib.sha256(token_prefix(session_id) + point).hexdigest()


def token_prefix(session_id: str) -> bytes:
    """What a session token hashes before the point (public, computed once per session)."""
    sid = session_id.encode("utf-8")
    return TOKEN_DOMAIN + len(sid).to_bytes(2, "big") + sid


def new_session_id() -> str:
    return os.urandom(16).hex()


# ------------------------------------------------------------------ per-batch helpers
# Used inside Spark's mapInPandas (one call per Arrow batch of a partition) and by the
# in-memory PsiParty below; they take and return plain lists so both can share them. Each
# runs one tight loop over a preallocated buffer (privacy.ristretto); a failure is reported
# by its position in the batch, never by value.

def _psi_error(error: ristretto.RistrettoError) -> PsiError:
    return PsiError(f"PSI: {error}")


def hash_all(phones: Iterable[str]) -> list[bytes]:
    """[H(x)] for many phone numbers: secret-free, so one party may reuse it across sessions."""
    try:
        return ristretto.from_hash_many([_digest(normalise_phone(p)) for p in phones])
    except ristretto.RistrettoError as error:
        raise _psi_error(error) from None


def hash_and_blind_all(phones: Iterable[str], secret: bytes) -> list[bytes]:
    try:
        return ristretto.from_hash_mult_many(secret, [_digest(normalise_phone(p)) for p in phones])
    except ristretto.RistrettoError as error:
        raise _psi_error(error) from None


def blind_all(points: Iterable[bytes], secret: bytes) -> list[bytes]:
    try:
        return ristretto.scalarmult_many(secret, points)
    except ristretto.RistrettoError as error:
        raise _psi_error(error) from None


def tokens_for(points: Iterable[bytes], session_id: str, prefix: bytes | None = None) -> list[str]:
    """Session tokens of many points; `prefix` (= token_prefix(session_id)) may be passed precomputed."""
    prefix = token_prefix(session_id) if prefix is None else prefix
    return [hashlib.sha256(prefix + bytes(p)).hexdigest() for p in points]


# ------------------------------------------------------------------ in-memory party
@dataclass
class PsiParty:
    """One side of one PSI session over an in-memory list (tests, benchmarks, small sets).

    The Spark jobs (spark_jobs/psi_exchange.py) run the same steps per partition; this
    class is the reference they are tested against.
    """

    session_id: str
    phones: Sequence[str]
    secret: bytes = field(default_factory=new_secret, repr=False)
    _order: list[int] = field(default_factory=list, repr=False)

    def request(self) -> list[bytes]:
        """Step 1: own items hashed and blinded, in a fresh random order."""
        self._order = list(range(len(self.phones)))
        random.SystemRandom().shuffle(self._order)
        return hash_and_blind_all((self.phones[i] for i in self._order), self.secret)

    def respond(self, other_request: Sequence[bytes]) -> list[bytes]:
        """Step 2: the other's blinded items re-blinded with our secret, order kept."""
        return blind_all(other_request, self.secret)

    def finish(self, response_to_us: Sequence[bytes], our_response: Sequence[bytes]) -> dict[int, str]:
        """Step 3: {index into self.phones: session token} for the items both sides hold."""
        if len(response_to_us) != len(self._order):
            raise PsiError(f"PSI response has {len(response_to_us)} points, we sent {len(self._order)}")
        theirs = set(map(bytes, our_response))
        return {
            self._order[pos]: session_token(self.session_id, bytes(point))
            for pos, point in enumerate(response_to_us)
            if bytes(point) in theirs
        }


def run_in_memory(session_id: str, a_phones: Sequence[str], b_phones: Sequence[str]) -> tuple[dict, dict]:
    """Both sides of one session in one process; returns each side's {index: token}."""
    a, b = PsiParty(session_id, a_phones), PsiParty(session_id, b_phones)
    a_req, b_req = a.request(), b.request()
    a_resp, b_resp = a.respond(b_req), b.respond(a_req)
    return a.finish(b_resp, a_resp), b.finish(a_resp, b_resp)
