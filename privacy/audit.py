"""A tamper-evident audit log of protocol messages: a hash chain that holds no raw values.

Each entry records who sent what kind of message in which (run, round, stage), its size
in bytes and the BLAKE3-256 digest of its (masked) payload (secure aggregation v2) — never a value. Entry n carries
``hash_n = SHA-256(hash_{n-1} ‖ canonical JSON of entry n without its hash)``, so changing,
dropping, reordering or inserting an entry breaks :meth:`AuditLog.verify` from that
entry on. Kept in memory and, when given a path, appended to a JSON-lines file as it goes.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from wenlv.errors import WenlvError

GENESIS = "0" * 64
FIELDS = ("seq", "kind", "run_id", "round", "stage", "sender", "size", "digest", "prev")
_ALLOWED_TYPES = {"seq": int, "kind": str, "run_id": str, "round": (int, type(None)), "stage": str,
                  "sender": str, "size": int, "digest": str, "prev": str}


class AuditTamperError(WenlvError):
    """The audit log's hash chain is broken: an entry was altered, removed or inserted."""


def _entry_hash(entry: dict) -> str:
    body = json.dumps({k: entry[k] for k in FIELDS}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256((entry["prev"] + body).encode()).hexdigest()


class AuditLog:
    """Append-only, hash-chained record of protocol messages."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else None
        self.entries: list[dict] = []
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("")

    @property
    def head(self) -> str:
        return self.entries[-1]["hash"] if self.entries else GENESIS

    def append(self, *, kind: str, run_id: str, round: int | None, stage: str, sender: str,
               size: int = 0, digest: str = "") -> dict:
        entry = {"seq": len(self.entries), "kind": kind, "run_id": run_id, "round": round, "stage": stage,
                 "sender": sender, "size": int(size), "digest": digest, "prev": self.head}
        for key, typ in _ALLOWED_TYPES.items():  # only metadata: a raw value cannot slip in
            if not isinstance(entry[key], typ):
                raise TypeError(f"audit entry field {key!r} must be {typ}, got {type(entry[key]).__name__}")
        if digest and (len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest)):
            raise ValueError("audit digest must be a SHA-256 hex digest")
        entry["hash"] = _entry_hash(entry)
        self.entries.append(entry)
        if self.path is not None:
            with self.path.open("a") as fh:
                fh.write(json.dumps(entry, sort_keys=True) + "\n")
        return entry

    def verify(self) -> bool:
        """True if the chain is intact; raises AuditTamperError naming the first bad entry."""
        return verify_entries(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    @classmethod
    def load(cls, path: str | Path) -> "AuditLog":
        log = cls()
        log.path = Path(path)
        log.entries = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        return log


def verify_entries(entries: list[dict]) -> bool:
    prev = GENESIS
    for n, entry in enumerate(entries):
        if set(entry) != set(FIELDS) | {"hash"}:
            raise AuditTamperError(f"audit entry {n}: unexpected fields {sorted(set(entry) ^ (set(FIELDS) | {'hash'}))}")
        if entry["seq"] != n:
            raise AuditTamperError(f"audit entry {n}: sequence number {entry['seq']} (entries removed or reordered)")
        if entry["prev"] != prev:
            raise AuditTamperError(f"audit entry {n}: does not chain to the entry before it")
        if _entry_hash(entry) != entry["hash"]:
            raise AuditTamperError(f"audit entry {n}: contents do not match its hash (altered)")
        prev = entry["hash"]
    return True


def verify_file(path: str | Path) -> bool:
    return AuditLog.load(path).verify()
