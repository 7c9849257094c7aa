"""`wenlv privacy scan`: look for phone numbers (any spelling, plainly hashed) and per-party
statistics in folders, a Redis database and SQL databases. Exit 1 when anything is found."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import redis

from wenlv.db.engine import normalise_url
from wenlv.privacy import leak_scan


def register(sub) -> None:
    p = sub.add_parser("privacy", help="privacy checks over what the system stored")
    psub = p.add_subparsers(dest="privacy_command", required=True, metavar="ACTION")
    s = psub.add_parser("scan", help="scan folders, Redis and SQL databases for leaked phone numbers and party statistics")
    s.add_argument("--path", type=Path, action="append", default=[],
                   help="a folder to scan (repeatable): outputs, logs, exports, reports, MLflow artifacts")
    s.add_argument("--redis-url", action="append", default=[], help="a Redis database to scan (repeatable)")
    s.add_argument("--database-url", action="append", default=[],
                   help="a SQL database to scan, e.g. sqlite:///mlflow/mlflow.db (repeatable)")
    s.add_argument("--raw-data", type=Path, default=None,
                   help="raw party tables whose phone numbers the scan also looks for hashed (MD5/SHA-1/SHA-256)")
    s.set_defaults(func=_scan)


def _scan(args) -> int:
    phones = leak_scan.known_phones(args.raw_data) if args.raw_data else set()
    matcher = leak_scan.PhoneMatcher(phones)
    report = leak_scan.ScanReport()
    sections = {}
    for folder in args.path:
        sections[f"path:{folder}"] = leak_scan.scan_folder(folder, matcher=matcher)
    for url in args.redis_url:
        client = redis.Redis.from_url(url)
        try:
            sections[f"redis:{url.split('@')[-1]}"] = leak_scan.scan_redis(client, matcher)
        finally:
            client.close()
    for url in args.database_url:
        sections[f"sql:{url.split('@')[-1]}"] = leak_scan.scan_database(normalise_url(url), matcher)
    for part in sections.values():
        report.extend(part)
    out = {**report.as_dict(), "known_phones": len(phones),
           "sections": {name: part.as_dict() for name, part in sections.items()}}
    print(json.dumps(out, indent=2))
    if not report.clean:
        print(f"privacy scan: {len(report.findings)} finding(s) in {report.places} places", file=sys.stderr)
    return 0 if report.clean else 1
