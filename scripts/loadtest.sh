#!/usr/bin/env bash
# Builds in release mode and runs the load test, then prints its reports:
#   1. coordbench kv      the store: put, get, txn compare-and-swap from 16 clients, the
#                         Redis ceiling for the same put script (redis-benchmark EVALSHA),
#                         and Redis memory per live key after compaction;
#   2. coordbench primitives  locks (uncontended, contended handoff), election
#                         handoff, STM bank transfers and fortress visits from 16
#                         workers, next to plain puts (skip with LOADTEST_PRIMITIVES=0);
#   3. coordbench client  the Redis client: SET/GET from 64 tasks, pipelined and not,
#                         next to redis-benchmark (skip with LOADTEST_CLIENT=0).
#
# Without REDIS_URL, coordbench starts a private redis-server on a loopback port
# and stops it at the end; with REDIS_URL it measures that server (it writes the
# namespaces "bench", "bench-memory" and "bench-primitives" and the key "key:bench").
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
if [ "${LOADTEST_PRIMITIVES:-1}" != 0 ]; then
    coord_log "running: coordbench primitives"
    "$bin/coordbench" primitives
fi
if [ "${LOADTEST_CLIENT:-1}" != 0 ]; then
    coord_log "running: coordbench client"
    "$bin/coordbench" client
fi
