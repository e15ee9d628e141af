#!/usr/bin/env bash
# Install everything the tests need (Debian packages, Consul, Python deps) and run them all.
set -euo pipefail
cd "$(dirname "$0")"
scripts/install-system-deps --test
scripts/venv --test
scripts/install-consul .tools/bin >/dev/null
export PATH="$PWD/.tools/bin:$PATH"
# every test runs: a skip (a missing dependency) fails the run (tests/conftest.py)
export TRUNKPROXY_NO_SKIPS=1
exec .venv/bin/python -m pytest -ra "$@"
