"""`wenlv features`: validate → tokenise (PSI through the carrier hub) → per-party feature blocks.

The three party jobs run here in one Spark application (the demo runs every party on one
machine): one after another, except that the parties' independent PSI steps run at once
(`at_once`), as they would on their own machines. Each reads only its own raw folder; what
passes between them are files in `<out>/exchange/` (blinded points, token maps, the public
split plan).
Writes `<out>/<party>/<table>.parquet` per contracts.BLOCK_TABLES and `<out>/manifest.json`
(docs/architecture.md).
"""
from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timezone
from pathlib import Path

from tqdm import tqdm

from wenlv.features import contracts
from wenlv.spark_jobs import psi_exchange
from wenlv.spark_jobs.carrier_job import INTERNET_SESSION, TOURISM_SESSION, CarrierJob
from wenlv.spark_jobs.internet_job import InternetJob
from wenlv.spark_jobs.session import get_spark
from wenlv.spark_jobs.tourism_job import TourismJob
from wenlv.errors import WenlvError

log = logging.getLogger(__name__)

STEPS = ("validate", "plan", "psi request", "psi respond", "psi finish", "align", "blocks", "manifest")


def run(data_dir: str | Path, out_dir: str | Path, spark=None, master: str | None = None,
        quarantine: bool = False, split_date: date | None = None, progress: bool = True,
        stats: dict | None = None) -> dict:
    """Run every party's job; returns the manifest (also written to `<out>/manifest.json`).

    `stats`, if given, receives seconds per step and PSI set sizes (for the benchmark).
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    for party in contracts.PARTIES:
        if not (data_dir / party).is_dir():
            raise WenlvError(f"{data_dir / party} is missing: the data folder needs one folder per party "
                             f"({', '.join(contracts.PARTIES)})")
    if spark is None:
        spark = get_spark(master)
    _clear(out_dir)
    tourism, carrier, internet = (TourismJob(spark, data_dir, out_dir, quarantine),
                                  CarrierJob(spark, data_dir, out_dir, quarantine),
                                  InternetJob(spark, data_dir, out_dir, quarantine))
    bar = tqdm(total=len(STEPS), desc="features", unit="step", file=sys.stderr, disable=not progress)

    stats = {} if stats is None else stats
    seconds = stats.setdefault("seconds", {})
    clock = {"name": None, "t": time.perf_counter()}

    def step(name):
        now = time.perf_counter()
        if clock["name"]:
            seconds[clock["name"]] = round(now - clock["t"], 3)
        clock.update(name=name, t=now)
        if name:
            bar.set_postfix_str(name)
            log.info("features: %s", name)

    step("validate")
    quarantined = {}
    for job in (tourism, carrier, internet):
        quarantined.update(job.validate())
    bar.update()

    step("plan")
    plan = tourism.publish_plan(split_date)
    carrier.open_sessions()
    bar.update()

    step("psi request")
    at_once(lambda: tourism.psi_request(TOURISM_SESSION, tourism.psi_phones()),
            lambda: internet.psi_request(INTERNET_SESSION, internet.psi_phones()),
            lambda: carrier.psi_request_sessions(run=at_once))
    bar.update()

    step("psi respond")
    at_once(lambda: carrier.psi_respond(TOURISM_SESSION, "tourism"),
            lambda: carrier.psi_respond(INTERNET_SESSION, "internet"),
            lambda: tourism.psi_respond(TOURISM_SESSION, "carrier"),
            lambda: internet.psi_respond(INTERNET_SESSION, "carrier"))
    bar.update()

    step("psi finish")
    t_matched, i_matched, ct_matched, ci_matched = at_once(
        lambda: tourism.psi_finish(TOURISM_SESSION, "carrier"),
        lambda: internet.psi_finish(INTERNET_SESSION, "carrier"),
        lambda: carrier.psi_finish(TOURISM_SESSION, "tourism"),
        lambda: carrier.psi_finish(INTERNET_SESSION, "internet"))
    psi_counts = {"tourism_carrier_matched": carrier.psi[TOURISM_SESSION].matched,
                  "internet_carrier_matched": carrier.psi[INTERNET_SESSION].matched}
    stats["psi_set_sizes"] = {f"{job.name}@{session}": job.psi[session].sent for job, session in (
        (tourism, TOURISM_SESSION), (internet, INTERNET_SESSION), (carrier, TOURISM_SESSION), (carrier, INTERNET_SESSION))}
    for job, session in ((tourism, TOURISM_SESSION), (internet, INTERNET_SESSION),
                         (carrier, TOURISM_SESSION), (carrier, INTERNET_SESSION)):
        psi_exchange.release(job.psi[session])
    bar.update()

    step("align")
    carrier.align(ct_matched, ci_matched)
    bar.update()

    step("blocks")
    tables = {}
    tables.update(tourism.build_blocks(t_matched))
    tables.update(internet.build_blocks(i_matched))
    tables.update(carrier.build_blocks())
    psi_counts.update({"users": tables["carrier/users"]["rows"],
                       "tourism_visitors_tokenised": tourism.tokenised_visitors,
                       "internet_accounts_tokenised": internet.tokenised_accounts})
    bar.update()

    step("manifest")
    manifest = {
        "schema_version": contracts.SCHEMA_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "split_date": plan["split_date"], "train_window": plan["train_window"], "test_window": plan["test_window"],
        "tables": {key: tables[key] for key in sorted(tables)},
        "quarantine": quarantined,
        "psi": psi_counts,
        "unknown_home_cities": carrier.unknown_home_cities,
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    for df in (t_matched, i_matched, ct_matched, ci_matched, carrier.users):
        df.unpersist()
    for job in (tourism, carrier, internet):
        for checked in job.checked.values():
            checked.release()
    step(None)
    bar.update()
    bar.close()
    return manifest


def at_once(*calls):
    """Run independent steps of different parties (or sessions) at the same time, as they would
    run on the parties' own machines; their results in order, the first failure raised.

    Here they share one Spark application: each party's jobs fill the cores another party's
    leave idle (a job's last tasks, the driver's planning between jobs), which run one after
    another would waste. Every party still reads only its own folder and the exchange files.
    """
    with ThreadPoolExecutor(len(calls), thread_name_prefix="wenlv-psi") as pool:
        futures = [pool.submit(call) for call in calls]
        return [future.result() for future in futures]


def _clear(out_dir: Path) -> None:
    """Start from an empty output folder (stale blocks must never mix with new ones)."""
    if out_dir.exists():
        if (out_dir / "manifest.json").exists() or (out_dir / "exchange").exists():
            shutil.rmtree(out_dir)
        elif any(out_dir.iterdir()):
            raise WenlvError(f"{out_dir} is not empty and holds no earlier features run: refusing to overwrite it")
    out_dir.mkdir(parents=True, exist_ok=True)
