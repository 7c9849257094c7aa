"""Scanning what the system stores and publishes for leaked personal data.

Two things must never leave their owner (DESIGN §3): phone numbers and raw per-party
statistics — per-user values of the carrier's and the internet platform's blocks (dwell,
trips, events, home distance…), their private item factors, or their confidence matrices.

A phone number can leak in many spellings, so the scan looks for all of them:
- as text, bare or with the country code, with or without separators (`158-6365-3206`,
  `+86 158 6365 3206`, `86_15863653206`);
- as an integer (a Parquet/NumPy column of int64, or the digits in text);
- plainly hashed: the MD5, SHA-1 or SHA-256 hex digest of a known number (bare, `86…` or
  `+86…`) — only findable given the known numbers, which the raw party data supplies.

Where it looks: every file under given folders (text, Parquet, CSV, NumPy, and the raw
bytes of anything else), every key and value in a Redis database, and every row of every
table of a SQL database (the campaign/ledger database, MLflow's SQLite store with its
params, tags and metrics). A finding names the place, never the value.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import sqlalchemy as sa

from wenlv.errors import WenlvError
from wenlv.features import contracts, io

_SEP = r"[-_ .]?"
# A mainland mobile number, optionally with the 86 country code, optionally split by one
# separator between the usual groups (3-4-4), not part of a longer token, id or fraction.
PHONE_RE = re.compile(
    r"(?<![0-9A-Za-z.])(?:\+?86" + _SEP + r")?1[3-9]\d" + _SEP + r"\d{4}" + _SEP + r"\d{4}(?![0-9A-Za-z])")
HEX_RE = re.compile(r"(?<![0-9a-fA-F])(?:[0-9a-fA-F]{64}|[0-9a-fA-F]{40}|[0-9a-fA-F]{32})(?![0-9a-fA-F])")
TEXT_SUFFIXES = {".json", ".md", ".txt", ".yaml", ".yml", ".csv", ".log", ".html", ".jsonl", ".js", ".svg", ""}
HASHES = ("md5", "sha1", "sha256")


def party_statistic_columns() -> set[str]:
    """Columns of the carrier's and internet platform's blocks other than the token and item ids."""
    cols = set()
    for t in contracts.BLOCK_TABLES:
        if t.party in ("carrier", "internet") and t.name != "users":
            cols |= {c for c in t.columns if c != "token"}
    return cols | contracts.personal_columns()


def phone_spellings(phone: str) -> set[str]:
    """The forms a number is hashed in: bare 11 digits, with 86, with +86."""
    digits = "".join(ch for ch in str(phone) if ch.isdigit())
    bare = digits[2:] if len(digits) == 13 and digits.startswith("86") else digits
    return {bare, "86" + bare, "+86" + bare}


class PhoneMatcher:
    """Finds phone numbers in any spelling; with `known` numbers, also their plain hashes."""

    def __init__(self, known: Iterable[str] = ()):
        self.known = {s for p in known if str(p).strip() for s in phone_spellings(str(p))}
        self.digests = {getattr(hashlib, h)(s.encode()).hexdigest() for s in self.known for h in HASHES}

    def text_findings(self, text: str, where: str) -> list[str]:
        found = []
        if PHONE_RE.search(text):
            found.append(f"{where}: phone-number-like value")
        if self.digests and any(m.group(0).lower() in self.digests for m in HEX_RE.finditer(text)):
            found.append(f"{where}: hash of a known phone number")
        return found

    @staticmethod
    def ints_look_like_phones(values) -> bool:
        v = np.asarray(values).astype(np.int64, copy=False).ravel()
        with_cc = (v >= 8613000000000) & (v < 8620000000000)
        bare = (v >= 13000000000) & (v < 20000000000)
        return bool((with_cc | bare).any())


@dataclass
class ScanReport:
    places: int = 0
    findings: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.findings

    def extend(self, other: "ScanReport") -> "ScanReport":
        self.places += other.places
        self.findings += other.findings
        return self

    def as_dict(self) -> dict:
        return {"places": self.places, "clean": self.clean, "findings": list(self.findings)}


# ------------------------------------------------------------------------------ files
def scan_folder(folder: str | Path, phones: Iterable[str] = (), forbidden_shapes=(), allowed_columns=(),
                matcher: PhoneMatcher | None = None) -> ScanReport:
    """Scan every file under `folder`; `forbidden_shapes` are the shapes of private matrices."""
    folder = Path(folder)
    matcher = matcher or PhoneMatcher(phones)
    bad_cols = party_statistic_columns() - set(allowed_columns)
    shapes = {tuple(s) for s in forbidden_shapes}
    report = ScanReport()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        report.places += 1
        rel = str(path.relative_to(folder))
        try:
            report.findings += _scan_file(path, rel, matcher, bad_cols, shapes)
        except Exception as exc:  # noqa: BLE001 - an unreadable file is a finding, not a pass
            report.findings.append(f"{rel}: could not be scanned ({type(exc).__name__})")
    return report


def _scan_file(path: Path, rel: str, matcher: PhoneMatcher, bad_cols: set[str], shapes: set) -> list[str]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return scan_frame(pd.read_parquet(path), rel, matcher, bad_cols)
    if suffix == ".npy":
        found = []
        arr = np.load(path, allow_pickle=False)
        if tuple(arr.shape) in shapes:
            found.append(f"{rel}: array of shape {arr.shape} matches a party's private matrix")
        if arr.dtype.kind in "iu" and arr.size and matcher.ints_look_like_phones(arr):
            found.append(f"{rel}: integers shaped like phone numbers")
        return found
    text = path.read_bytes().decode("utf-8", errors="ignore")
    found = matcher.text_findings(text, rel)
    if suffix == ".csv":
        header = text.splitlines()[0].split(",") if text else []
        leaked = sorted(set(h.strip() for h in header) & bad_cols)
        if leaked:
            found.append(f"{rel}: per-party statistic column(s) {leaked}")
    return found


def scan_frame(frame: pd.DataFrame, where: str, matcher: PhoneMatcher, bad_cols: set[str] = frozenset()) -> list[str]:
    found = []
    leaked = sorted(set(frame.columns) & bad_cols)
    if leaked:
        found.append(f"{where}: per-party statistic column(s) {leaked}")
    for col in frame.columns:
        series = frame[col]
        if series.dtype.kind in "iu":
            if matcher.ints_look_like_phones(series.to_numpy()):
                found.append(f"{where}: column {col!r} holds integers shaped like phone numbers")
        elif series.dtype.kind in "OSUT" or str(series.dtype).startswith("string"):
            text = "\n".join(_sql_text(v) for v in series.dropna().tolist())
            found += matcher.text_findings(text, f"{where}[{col}]")
    return found


# ------------------------------------------------------------------------------ Redis
def scan_redis(client, matcher: PhoneMatcher, pattern: str = "*") -> ScanReport:
    """Every key and value (strings, hashes, lists, sets, sorted sets) in the client's database."""
    report = ScanReport()
    for key in client.scan_iter(match=pattern, count=1000):
        report.places += 1
        name = key.decode("utf-8", errors="replace") if isinstance(key, bytes) else str(key)
        where = f"redis key {_key_shape(name)}"
        report.findings += matcher.text_findings(name, where + " (name)")
        report.findings += matcher.text_findings(_redis_value_text(client, key), where)
    return report


def _key_shape(name: str) -> str:
    """The key's prefix only: a finding must not repeat the value it found."""
    return name.split(":")[0] + ":…" if ":" in name else "(unprefixed)"


def _redis_value_text(client, key) -> str:
    kind = client.type(key)
    kind = kind.decode() if isinstance(kind, bytes) else kind
    if kind == "string":
        parts = [client.get(key)]
    elif kind == "hash":
        parts = [x for kv in client.hgetall(key).items() for x in kv]
    elif kind == "list":
        parts = client.lrange(key, 0, -1)
    elif kind == "set":
        parts = list(client.smembers(key))
    elif kind == "zset":
        parts = [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
    else:
        parts = []
    return "\n".join(p.decode("utf-8", errors="ignore") if isinstance(p, bytes) else str(p) for p in parts if p is not None)


# ------------------------------------------------------------------------------ SQL
def scan_database(url_or_engine, matcher: PhoneMatcher, chunk: int = 5000) -> ScanReport:
    """Every row of every table (names and values), read in chunks."""
    engine = sa.create_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    meta = sa.MetaData()
    meta.reflect(bind=engine)
    report = ScanReport()
    with engine.connect() as conn:
        for table in meta.sorted_tables:
            report.places += 1
            where = f"table {table.name}"
            report.findings += matcher.text_findings(" ".join(c.name for c in table.columns), where + " (columns)")
            result = conn.execution_options(stream_results=True).execute(sa.select(table))
            while rows := result.fetchmany(chunk):
                text = "\n".join("\t".join("" if v is None else _sql_text(v) for v in row) for row in rows)
                hits = matcher.text_findings(text, where)
                ints = [v for row in rows for v in row if isinstance(v, int) and not isinstance(v, bool)]
                if ints and matcher.ints_look_like_phones(ints):
                    hits.append(f"{where}: integers shaped like phone numbers")
                if hits:
                    report.findings += hits
                    break
    if isinstance(url_or_engine, str):
        engine.dispose()
    return report


def _sql_text(value) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="ignore")
    return str(value)


# ------------------------------------------------------------------------------ known numbers
def known_phones(raw_dir: str | Path) -> set[str]:
    """Every phone number in the raw party tables under `raw_dir` (what the scan must never find)."""
    phones: set[str] = set()
    for table in contracts.RAW_TABLES:
        cols = [f.name for f in table.fields if f.personal and "phone" in f.name]
        if not cols:
            continue
        try:
            frame = io.read_pandas(raw_dir, table, cols)
        except WenlvError:
            continue  # a party's table that is not in this folder
        for col in cols:
            phones |= set(frame[col].dropna().astype(str))
    return phones
