"""`wenlv features`: validate → tokenise (PSI through the carrier hub) → per-party feature blocks.

The three party jobs run here in one Spark application (the demo runs every party on one
machine), through the same coordinator as the run over three party services
(spark_jobs.party_features.run_parties, the one declaration of the steps): each party is a
local FeatureParty, and independent steps of different parties run at once (`at_once`), as
they would on their own machines. Each reads only its own raw folder; what passes between
them are files in `<out>/exchange/` (blinded points, token maps, the public split plan),
already in place for the receiver because the three share the output folder.
Writes `<out>/<party>/<table>.parquet` per contracts.BLOCK_TABLES and `<out>/manifest.json`
(docs/architecture.md). The whole output is written to a folder beside `<out>` and swapped in
only when every step succeeded (wenlv.staging): a failed run leaves the earlier output as it was.
"""
from __future__ import annotations

from datetime import date
from pathlib import Path

from wenlv.features import contracts
from wenlv.spark_jobs.party_features import FeatureParty, run_parties
from wenlv.spark_jobs.session import get_spark
from wenlv.errors import WenlvError
from wenlv.staging import staged_folder

def run(data_dir: str | Path, out_dir: str | Path, spark=None, master: str | None = None,
        quarantine: bool = False, split_date: date | None = None, progress: bool = True,
        stats: dict | None = None) -> dict:
    """Run every party's job; returns the manifest (also written to `<out>/manifest.json`).

    `stats`, if given, receives seconds per step and PSI set sizes (for the benchmark).
    The output appears at `out_dir` only when the whole run succeeded; until then (and after a
    failure) `out_dir` holds what it held before.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    for party in contracts.PARTIES:
        if not (data_dir / party).is_dir():
            raise WenlvError(f"{data_dir / party} is missing: the data folder needs one folder per party "
                             f"({', '.join(contracts.PARTIES)})")
    _check_replaceable(out_dir)
    if spark is None:
        spark = get_spark(master)
    with staged_folder(out_dir) as staging:
        parties = {p: FeatureParty(p, data_dir, staging, spark=spark, shared_folder=True) for p in contracts.PARTIES}
        return run_parties(parties, staging, quarantine, split_date, progress, stats, desc="features")


def _check_replaceable(out_dir: Path) -> None:
    """Replace only an earlier features run (or nothing): the new output never mixes with stale blocks."""
    if out_dir.exists() and not out_dir.is_dir():
        raise WenlvError(f"{out_dir} is a file, not a features folder: refusing to overwrite it")
    if out_dir.is_dir() and not ((out_dir / "manifest.json").exists() or (out_dir / "exchange").exists()) \
            and any(out_dir.iterdir()):
        raise WenlvError(f"{out_dir} is not empty and holds no earlier features run: refusing to overwrite it")
