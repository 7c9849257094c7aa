"""`wenlv features`: the Spark feature pipeline from raw party folders to aligned blocks."""
from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path

from wenlv.errors import WenlvError
from wenlv.features import contracts
from wenlv.privacy.party_channel import PartyChannel
from wenlv.settings import get_settings


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date YYYY-MM-DD: {text!r}") from None


def register(sub) -> None:
    p = sub.add_parser("features", help="validate, tokenise (PSI) and build per-party feature blocks in Spark")
    p.add_argument("--data", type=Path, default=None,
                   help="raw data folder: <data>/<party>/<table>.parquet|csv (required without --parties)")
    p.add_argument("--out", type=Path, required=True,
                   help="feature folder: blocks, manifest.json, exchange/ (with --parties: the manifest only)")
    p.add_argument("--parties", type=_parties, default=None,
                   help="tourism=https://host:port,carrier=…,internet=…: run each party's job in its own "
                        "`wenlv party serve --raw` service, the PSI messages over pinned mutual TLS")
    p.add_argument("--tls", type=Path, default=None,
                   help="with --parties: the coordinator's certificate folder (default: WENLV_PARTY_TLS)")
    p.add_argument("--master", default=None, help="Spark master URL (default local[*], or $SPARK_MASTER)")
    p.add_argument("--quarantine", action="store_true",
                   help="set bad rows aside in <out>/quarantine/ instead of stopping at the first")
    p.add_argument("--split-date", type=_date, default=None,
                   help="first day of the test window (default: the last 28 days of visits are the test window)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=main)


def _parties(text: str) -> dict[str, str]:
    """``tourism=https://h:p,carrier=…,internet=…`` → {party: url}."""
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, url = item.partition("=")
        if not sep or not url.strip().startswith("https://"):
            raise argparse.ArgumentTypeError(f"--parties wants name=https://host:port entries, got {item!r}")
        out[name.strip()] = url.strip()
    return out


def main(args) -> int:
    if args.parties is not None:
        manifest = _run_parties(args)
    else:
        from wenlv.spark_jobs import features_job  # lazy: CLI start-up (pyspark takes ~0.5 s to import)

        if args.data is None or not args.data.is_dir():
            raise WenlvError(f"--data {args.data} is not a folder (needed unless --parties)")
        manifest = features_job.run(args.data, args.out, master=args.master, quarantine=args.quarantine,
                                    split_date=args.split_date, progress=not args.no_progress)
    print(json.dumps({"out": str(args.out), "manifest": str(Path(args.out) / "manifest.json"),
                      "split_date": manifest["split_date"], "psi": manifest["psi"], "quarantine": manifest["quarantine"],
                      "rows": {k: v["rows"] for k, v in manifest["tables"].items()},
                      **({"wire_bytes": manifest["wire_bytes"]} if "wire_bytes" in manifest else {})}))
    return 0


def _run_parties(args) -> dict:
    """The coordinator of a feature run over the three party services."""
    from wenlv.spark_jobs.party_features import RemoteFeatureParty, run_parties  # lazy: CLI start-up (pyspark)

    unknown = sorted(set(args.parties) - set(contracts.PARTIES))
    if unknown or len(args.parties) != len(contracts.PARTIES):
        raise WenlvError(f"--parties needs exactly {', '.join(contracts.PARTIES)}; got {', '.join(args.parties)}")
    settings = get_settings()
    tls_dir = args.tls or settings.party_tls_dir
    handles = {p: RemoteFeatureParty(PartyChannel(p, url, tls_dir, "features", timeout=settings.party_timeout_s,
                                                  retries=settings.party_retries))
               for p, url in args.parties.items()}
    try:
        manifest = run_parties(handles, args.out, quarantine=args.quarantine, split_date=args.split_date,
                               progress=not args.no_progress)
    finally:
        for h in handles.values():
            h.close()
    manifest["wire_bytes"] = {p: {"sent": h.channel.sent, "received": h.channel.received} for p, h in handles.items()}
    return manifest
