"""Scanning what training publishes (bundle, model card, MLflow store) for leaked personal data.

Two things must never leave their owner (DESIGN §3): phone numbers (in clear; PSI tokens
are fine) and raw per-party statistics — per-user values of the carrier's and the
internet platform's blocks (dwell, trips, events, home distance…), their private item
factors, or their confidence matrices. The scan looks at every file under a folder:
text is searched for phone-number shapes (and for any exact phone number supplied),
tables (Parquet/CSV) for columns that carry per-party statistics, and NumPy arrays for
the shapes of another party's private matrices.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from wenlv.features import contracts

# Chinese mobile numbers, optionally with the 86 country code (E.164 digits, maybe a +),
# not part of a longer token, id or decimal fraction.
PHONE_RE = re.compile(r"(?<![0-9A-Za-z.])(?:\+?86)?1[3-9]\d{9}(?![0-9A-Za-z])")
TEXT_SUFFIXES = {".json", ".md", ".txt", ".yaml", ".yml", ".csv", ".log", ".html", ".jsonl", ""}


def party_statistic_columns() -> set[str]:
    """Columns of the carrier's and internet platform's blocks other than the token and item ids."""
    cols = set()
    for t in contracts.BLOCK_TABLES:
        if t.party in ("carrier", "internet") and t.name != "users":
            cols |= {c for c in t.columns if c != "token"}
    return cols | contracts.personal_columns()


@dataclass
class ScanReport:
    files: int = 0
    findings: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.findings


def scan_text(text: str, where: str, phones: set[str] = frozenset()) -> list[str]:
    found = [f"{where}: phone-number-like value" for _ in PHONE_RE.finditer(text)][:1]
    for phone in phones:
        if phone and phone in text:
            found.append(f"{where}: contains a known phone number")
            break
    return found


def scan_folder(folder: str | Path, phones=(), forbidden_shapes=(), allowed_columns=()) -> ScanReport:
    """Scan every file under `folder`; `forbidden_shapes` are the shapes of private matrices."""
    folder = Path(folder)
    phones = {str(p) for p in phones}
    bad_cols = party_statistic_columns() - set(allowed_columns)
    shapes = {tuple(s) for s in forbidden_shapes}
    report = ScanReport()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        report.files += 1
        rel = str(path.relative_to(folder))
        suffix = path.suffix.lower()
        try:
            if suffix == ".parquet":
                report.findings += _scan_table(_read_parquet(path), rel, phones, bad_cols)
            elif suffix == ".npy":
                arr = np.load(path, allow_pickle=False)
                if tuple(arr.shape) in shapes:
                    report.findings.append(f"{rel}: array of shape {arr.shape} matches a party's private matrix")
                if arr.dtype.kind in "iu" and arr.size and _phone_ints(arr):
                    report.findings.append(f"{rel}: integers shaped like phone numbers")
            else:
                data = path.read_bytes()
                text = data.decode("utf-8", errors="ignore")
                report.findings += scan_text(text, rel, phones)
                if suffix == ".csv":
                    header = text.splitlines()[0].split(",") if text else []
                    leaked = sorted(set(h.strip() for h in header) & bad_cols)
                    if leaked:
                        report.findings.append(f"{rel}: per-party statistic column(s) {leaked}")
        except Exception as exc:  # noqa: BLE001 - an unreadable file is a finding, not a pass
            report.findings.append(f"{rel}: could not be scanned ({type(exc).__name__})")
    return report


def _read_parquet(path: Path):
    return pd.read_parquet(path)


def _scan_table(frame, where: str, phones: set[str], bad_cols: set[str]) -> list[str]:
    found = []
    leaked = sorted(set(frame.columns) & bad_cols)
    if leaked:
        found.append(f"{where}: per-party statistic column(s) {leaked}")
    for col in frame.columns:
        series = frame[col]
        if series.dtype.kind in "iu" and _phone_ints(series.to_numpy()):
            found.append(f"{where}: column {col!r} holds integers shaped like phone numbers")
        elif series.dtype == object or str(series.dtype).startswith("string"):
            text = "\n".join(series.dropna().astype(str).tolist())
            found += scan_text(text, f"{where}[{col}]", phones)
    return found


def _phone_ints(values: np.ndarray) -> bool:
    v = np.asarray(values).astype(np.int64, copy=False).ravel()
    with_cc = (v >= 8613000000000) & (v < 8620000000000)
    bare = (v >= 13000000000) & (v < 20000000000)
    return bool((with_cc | bare).any())
