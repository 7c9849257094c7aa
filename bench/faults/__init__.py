"""Faults under steady load (issue 18): kill, stop, freeze and fill what the API depends on, and count.

`harness.Deployment` runs the real server (`wenlv serve`) on a synthetic model, with its own
Redis and its own PostgreSQL (or an SQLite ledger), so faults never touch the machine's
shared services; `load.SteadyLoad` sends recommendations and event batches at a steady rate
and remembers every event it was told is stored; `scenarios` injects one fault each and
returns what was sent, acknowledged, served, failed with a clear status, lost, duplicated,
and how long recovery took. `wenlv bench faults --json` runs them all (`cli.py`).
"""
