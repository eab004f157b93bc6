#!/usr/bin/env bash
# Builds in release mode and runs the load test, then prints its report.
#
# Without REDIS_URL, coordbench starts a private redis-server on a loopback port
# and stops it at the end; with REDIS_URL it measures that server (it writes the
# key "key:bench"). The reference figures in the same run come from redis-benchmark.
#
# Usage: scripts/loadtest.sh [coordbench client options, see --help]
#   e.g. scripts/loadtest.sh --requests 500000 --rounds 5
set -euo pipefail
COORD_SCRIPT=loadtest.sh
cd "$(dirname "$0")/.."
. scripts/lib.sh

coord_install_dependencies
coord_private_tmpdir

coord_log "building coordbench (release)"
swift build -c release --product coordbench
bin=$(swift build -c release --show-bin-path)
coord_log "running: coordbench client $*"
"$bin/coordbench" client "$@"
