#!/usr/bin/env bash
# segmentd beside a bare tonic floor, Redis and DuckDB, in one run on this machine.
#
# Installs what is missing (Debian's redis-server, DuckDB from PyPI into benches/.venv), then runs
# the load generator with every comparison and prints one table (see BENCHMARKS.md).
#
#   benches/compare.sh                      # 200,000 customers, 5 s a run, rule over 10,000,000
#   benches/compare.sh --customers 1000000 --seconds 10
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null; then
  echo "installing redis-server (Debian package)" >&2
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
fi

venv=benches/.venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import duckdb' 2>/dev/null; then
  echo "installing duckdb (PyPI) into $venv" >&2
  "$venv/bin/pip" install -q duckdb
fi

SEGBENCH_PYTHON="$venv/bin/python" cargo bench --bench segbench -- --redis --duckdb "$@"
