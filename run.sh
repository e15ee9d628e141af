#!/usr/bin/env bash
# Set up (once) and start trunkproxy on its embedded default configuration.
# Extra arguments go to `trunkproxy run`, e.g. ./run.sh --config /etc/trunkproxy/trunkproxy.toml
set -euo pipefail
cd "$(dirname "$0")"
scripts/install-system-deps
scripts/venv
exec .venv/bin/trunkproxy run "$@"
