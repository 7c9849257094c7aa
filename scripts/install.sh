#!/usr/bin/env bash
# Install Wenlv and its system needs on a fresh Debian machine (idempotent).
#   Java: Spark's JVM. redis-server: tests start a private one to stop and restart.
#   hey, wrk: HTTP load generators for `wenlv bench serve` and `wenlv bench events`.
#   postgresql-client: pgbench, the database's own insert rate beside `wenlv bench events`.
#   libsodium23 (≥ 1.0.18): ristretto255 for PSI (privacy/ristretto.py opens it; PyNaCl lacks it).
#   chromium, chromium-driver, fonts-wqy-microhei: the dashboard's browser tests (headless, Selenium;
#   the CJK font so Chinese labels render).
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v hey >/dev/null 2>&1 || missing+=(hey)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v pgbench >/dev/null 2>&1 || missing+=(postgresql-client)
dpkg -s libsodium23 >/dev/null 2>&1 || missing+=(libsodium23)
for pkg in chromium chromium-driver fonts-wqy-microhei; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "installing Debian packages: ${missing[*]}" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]'
