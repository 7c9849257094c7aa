"""In-process stand-in for PSI alignment of the propensity features: phone -> keyed pseudonym.

The Spark jobs align the feature blocks with real ECDH-PSI tokens, but they do not (yet)
emit the dated features a propensity model needs (see `party_features`). So that those
features still leave each party without a phone number, each party replaces the phone by
HMAC-SHA256(key, phone) under a key the parties share and nobody else holds — the
pseudonym a keyed-hash PSI would give, weaker than ECDH-PSI (each party could test a
phone it already knows against it) and stated as such in the README. The key comes from
WENLV_ALIGNMENT_KEY or a 0600 file beside the campaign database, made on first use.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

import numpy as np

from wenlv.settings import get_settings

TOKEN_HEX = 32


def alignment_key(path: Path | None = None) -> bytes:
    """The shared alignment key (setting, else a private file beside the SQLite database)."""
    settings = get_settings()
    if settings.alignment_key is not None:
        return settings.alignment_key.get_secret_value().encode()
    path = path or settings.database_sqlite.with_suffix(".alignment-key")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


def pseudonyms(phones, key: bytes) -> np.ndarray:
    """Lowercase-hex pseudonyms (the ledger's token shape) for an array of phone numbers."""
    return np.array([hmac.new(key, str(p).encode(), hashlib.sha256).hexdigest()[:TOKEN_HEX] for p in phones],
                    dtype=object)
