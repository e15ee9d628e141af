#!/usr/bin/env bash
# Install everything the tests need (Debian packages, Consul, Python deps) and run them all.
set -euo pipefail
cd "$(dirname "$0")"
scripts/install-system-deps --test
scripts/venv --test
../shared/tools/install-consul.sh .tools/bin >/dev/null 2>&1 || echo "WARNING: Consul could not be installed; Consul tests will be skipped" >&2
export PATH="$PWD/.tools/bin:$PATH"
exec .venv/bin/python -m pytest -ra "$@"
