"""ristretto255 (RFC 9496) from the system libsodium, bound with cffi in ABI mode.

PyNaCl 1.6.2 exposes no ristretto255, but libsodium ≥ 1.0.18 does (Debian: libsodium23,
which scripts/install.sh installs). This module opens the shared library once and wraps
the few functions PSI needs; each checks libsodium's return code.

- `from_hash(h64)`          crypto_core_ristretto255_from_hash: 64 uniform bytes → a group
                             element (two Elligator maps added: RFC 9496's hash-to-group).
- `scalarmult(n, p)`        crypto_scalarmult_ristretto255: n·p. libsodium refuses a
                             non-canonical encoding of p and an identity result (returns -1).
- `scalar_random()`, `scalar_reduce(b64)`, `is_valid_point(p)`.
- `from_hash_mult_many(n, digests)` n·from_hash(h) for many digests, one loop, no
                             intermediate Python objects.
- `scalarmult_many(n, points)` one scalar times many points in one loop over a preallocated
                             buffer (the PSI batches); a failure names the position only.

ristretto255 is a prime-order group (order L = 2^252 + 27742317777372353535851937790883648493):
no cofactor, no small-order points, every valid encoding is a group element.
"""
from __future__ import annotations

import ctypes.util
from functools import lru_cache
from typing import Iterable, Sequence

from wenlv.errors import WenlvError
from wenlv.settings import get_settings

POINT_BYTES = 32
SCALAR_BYTES = 32
HASH_BYTES = 64
GROUP_ORDER = 2**252 + 27742317777372353535851937790883648493

_CDEF = """
int sodium_init(void);
const char *sodium_version_string(void);
int crypto_core_ristretto255_is_valid_point(const unsigned char *p);
int crypto_core_ristretto255_from_hash(unsigned char *p, const unsigned char *r);
int crypto_scalarmult_ristretto255(unsigned char *q, const unsigned char *n, const unsigned char *p);
void crypto_core_ristretto255_scalar_random(unsigned char *r);
void crypto_core_ristretto255_scalar_reduce(unsigned char *r, const unsigned char *s);
"""

# Where to look after WENLV_LIBSODIUM (read when the library is first opened): Debian's
# multiarch library, then the loader's search.
_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libsodium.so.23",
    "/usr/lib/aarch64-linux-gnu/libsodium.so.23",
    "libsodium.so.23",
    ctypes.util.find_library("sodium"),
)


class RistrettoError(WenlvError):
    """libsodium's ristretto255 is unavailable or refused an input (never carries the value)."""


def _open():
    import cffi

    ffi = cffi.FFI()
    ffi.cdef(_CDEF)
    tried = []
    for candidate in (get_settings().libsodium, *_CANDIDATES):
        if not candidate or candidate in tried:
            continue
        tried.append(candidate)
        try:
            lib = ffi.dlopen(candidate)
            lib.crypto_scalarmult_ristretto255  # noqa: B018 - older libsodium (< 1.0.18) lacks it
        except (OSError, AttributeError):
            continue
        if lib.sodium_init() < 0:
            raise RistrettoError(f"libsodium at {candidate} failed to initialise (sodium_init() < 0)")
        return ffi, lib
    raise RistrettoError(
        "libsodium ≥ 1.0.18 with ristretto255 was not found (tried "
        f"{', '.join(tried)}): install the Debian package libsodium23 (scripts/install.sh does), "
        "or point WENLV_LIBSODIUM at libsodium.so")


@lru_cache(maxsize=1)
def _sodium():
    """(ffi, lib), opened on first use rather than at import: WENLV_LIBSODIUM is read then."""
    return _open()


class _Opened:
    """`_ffi` / `_lib` below: attribute access opens libsodium once, then forwards to it."""

    def __init__(self, which: int):
        self._which = which

    def __getattr__(self, name):
        return getattr(_sodium()[self._which], name)


_ffi, _lib = _Opened(0), _Opened(1)


def sodium_version() -> str:
    return _ffi.string(_lib.sodium_version_string()).decode()


def is_valid_point(point: bytes) -> bool:
    return len(point) == POINT_BYTES and _lib.crypto_core_ristretto255_is_valid_point(point) == 1


def from_hash(h: bytes) -> bytes:
    if len(h) != HASH_BYTES:
        raise RistrettoError(f"from_hash takes {HASH_BYTES} bytes, got {len(h)}")
    out = _ffi.new("unsigned char[32]")
    if _lib.crypto_core_ristretto255_from_hash(out, h) != 0:  # documented to always succeed
        raise RistrettoError("crypto_core_ristretto255_from_hash failed")
    return _ffi.buffer(out, POINT_BYTES)[:]


def scalar_random() -> bytes:
    out = _ffi.new("unsigned char[32]")
    _lib.crypto_core_ristretto255_scalar_random(out)
    return _ffi.buffer(out, SCALAR_BYTES)[:]


def scalar_reduce(wide: bytes) -> bytes:
    """64 bytes (little-endian) reduced mod L."""
    if len(wide) != 64:
        raise RistrettoError(f"scalar_reduce takes 64 bytes, got {len(wide)}")
    out = _ffi.new("unsigned char[32]")
    _lib.crypto_core_ristretto255_scalar_reduce(out, wide)
    return _ffi.buffer(out, SCALAR_BYTES)[:]


def _check_scalar(scalar: bytes) -> None:
    if len(scalar) != SCALAR_BYTES:
        raise RistrettoError(f"a scalar has {len(scalar)} bytes, expected {SCALAR_BYTES}")


def scalarmult(scalar: bytes, point: bytes) -> bytes:
    """scalar·point; RistrettoError if the point is not a canonical encoding or the result is the identity."""
    _check_scalar(scalar)
    point = point if type(point) is bytes else bytes(point)
    if len(point) != POINT_BYTES:
        raise RistrettoError(f"a point has {len(point)} bytes, expected {POINT_BYTES}")
    out = _ffi.new("unsigned char[32]")
    if _lib.crypto_scalarmult_ristretto255(out, scalar, point) != 0:
        raise RistrettoError("a point is not a valid ristretto255 encoding, or the product is the identity")
    return _ffi.buffer(out, POINT_BYTES)[:]


def _as_list(values) -> list | tuple:
    return values if isinstance(values, (list, tuple)) else list(values)


def _points(out, n: int) -> list[bytes]:
    """The n 32-byte points of a cffi output buffer, as bytes objects."""
    raw = _ffi.buffer(out)[:n * POINT_BYTES]
    return [raw[i:i + POINT_BYTES] for i in range(0, n * POINT_BYTES, POINT_BYTES)]


def _check_digest(h: bytes, i: int) -> None:
    if len(h) != HASH_BYTES:
        raise RistrettoError(f"the digest at position {i} has {len(h)} bytes, expected {HASH_BYTES}")


def scalarmult_many(scalar: bytes, points: Sequence[bytes] | Iterable[bytes]) -> list[bytes]:
    """[scalar·p for p in points] in one loop over one preallocated output buffer.

    Raises RistrettoError naming the position (0-based) of the first point refused; never its value.
    """
    _check_scalar(scalar)
    points = _as_list(points)
    out = _ffi.new("unsigned char[]", max(1, len(points)) * POINT_BYTES)
    mult, n_ = _lib.crypto_scalarmult_ristretto255, bytes(scalar)
    for i, point in enumerate(points):
        if type(point) is not bytes:  # bytearray / memoryview from Arrow: cffi takes bytes only
            point = bytes(point)
        if len(point) != POINT_BYTES:
            raise RistrettoError(f"the point at position {i} has {len(point)} bytes, expected {POINT_BYTES}")
        if mult(out + i * POINT_BYTES, n_, point) != 0:
            raise RistrettoError(f"the point at position {i} is not a valid ristretto255 encoding, "
                                 "or its product is the identity")
    return _points(out, len(points))


def from_hash_mult_many(scalar: bytes, digests: Sequence[bytes] | Iterable[bytes]) -> list[bytes]:
    """[scalarmult(scalar, from_hash(h)) for h in digests] in one loop: the hashed point goes
    through a scratch buffer, never a Python object."""
    _check_scalar(scalar)
    digests = _as_list(digests)
    out = _ffi.new("unsigned char[]", max(1, len(digests)) * POINT_BYTES)
    tmp = _ffi.new("unsigned char[32]")
    fh, mult, n_ = _lib.crypto_core_ristretto255_from_hash, _lib.crypto_scalarmult_ristretto255, bytes(scalar)
    for i, h in enumerate(digests):
        _check_digest(h, i)
        if fh(tmp, h) != 0 or mult(out + i * POINT_BYTES, n_, tmp) != 0:
            raise RistrettoError(f"hashing and multiplying failed at position {i}")
    return _points(out, len(digests))


def from_hash_many(digests: Iterable[bytes]) -> list[bytes]:
    """[from_hash(h) for h in digests] over one preallocated buffer."""
    digests = _as_list(digests)
    out = _ffi.new("unsigned char[]", max(1, len(digests)) * POINT_BYTES)
    fh = _lib.crypto_core_ristretto255_from_hash
    for i, h in enumerate(digests):
        _check_digest(h, i)
        if fh(out + i * POINT_BYTES, h) != 0:
            raise RistrettoError(f"crypto_core_ristretto255_from_hash failed at position {i}")
    return _points(out, len(digests))
