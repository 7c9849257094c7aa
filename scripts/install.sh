#!/usr/bin/env bash
# Install Wenlv and its system needs on a fresh Debian machine (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v java >/dev/null 2>&1; then
  echo "installing a Java runtime for Spark" >&2
  apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless
fi
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]'
