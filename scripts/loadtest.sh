#!/usr/bin/env bash
# Builds in release mode and runs the load test, then prints its reports:
#   1. coordbench kv      the store: put, get, txn compare-and-swap from 16 clients, the
#                         Redis ceiling for the same put script (redis-benchmark EVALSHA),
#                         and Redis memory per live key after compaction;
#   2. coordbench client  the Redis client: SET/GET from 64 tasks, pipelined and not,
#                         next to redis-benchmark (skip with LOADTEST_CLIENT=0).
#
# Without REDIS_URL, coordbench starts a private redis-server on a loopback port
# and stops it at the end; with REDIS_URL it measures that server (it writes the
# namespaces "bench" and "bench-memory" and the key "key:bench").
#
# Usage: scripts/loadtest.sh [coordbench kv options, see coordbench kv --help]
#   e.g. scripts/loadtest.sh --requests 200000 --rounds 5
set -euo pipefail
COORD_SCRIPT=loadtest.sh
cd "$(dirname "$0")/.."
. scripts/lib.sh

coord_install_dependencies
coord_private_tmpdir

coord_log "building coordbench (release)"
swift build -c release --product coordbench
bin=$(swift build -c release --show-bin-path)
coord_log "running: coordbench kv $*"
"$bin/coordbench" kv "$@"
if [ "${LOADTEST_CLIENT:-1}" != 0 ]; then
    coord_log "running: coordbench client"
    "$bin/coordbench" client
fi
