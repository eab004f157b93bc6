#!/usr/bin/env bash
# Runs the whole test suite against real servers.
#
# On a fresh Debian machine with only the Swift toolchain: installs what is missing
# (redis-server, redis-tools, libhiredis-dev, pkg-config, etcd-server, etcd-client,
# golang-go, golang-etcd-server-dev, python3-venv; as root, after one `apt-get
# update`), builds the package and the Go clientv3 checks, installs the Python clients
# from PyPI (etcd3gw, redis-py with hiredis) into a virtual environment in .build/python, and runs `swift test`. The tests
# start their own private redis-server processes under a scratch TMPDIR; anything
# still running there when the tests end is stopped. Exits non-zero on failure.
#
# Usage: scripts/test.sh [extra swift test arguments, e.g. --filter RedisScriptTests]
set -euo pipefail
COORD_SCRIPT=test.sh
cd "$(dirname "$0")/.."
. scripts/lib.sh

coord_install_dependencies
command -v swift >/dev/null 2>&1 || { coord_log "swift is not on PATH; install the Swift 6 toolchain"; exit 1; }
coord_private_tmpdir

coord_log "building (debug) with tests"
swift build --build-tests
coord_log "building the Go clientv3 checks (Tests/EtcdAPITests/GoClient)"
coord_build_go_clientcheck "$(pwd)/.build/go/clientcheck"
coord_log "installing the Python clients from PyPI ($COORD_PYTHON_PACKAGES) into .build/python"
coord_python_env "$(pwd)/.build/python"
# At most this many tests at once (Swift Testing runs them all at once otherwise).
# With 200-odd tests each holding its own servers and connections, the test process
# passed 1,300 open file descriptors, and Foundation's Process.run() crashed (a bad
# pointer in its copy of /proc/self/fd entries) when launching etcdctl; a bounded
# width also keeps a busy 2-core machine from starving every test at once. (24 at
# once, on a host 2.5 times slower than usual, starved a test's 500 ms sleeps by
# seconds and a PING through an in-process proxy past its 5 s connect timeout, in
# the first seconds when every test starts its servers; 12 costs about a minute.)
export SWT_EXPERIMENTAL_MAXIMUM_PARALLELIZATION_WIDTH=${SWT_EXPERIMENTAL_MAXIMUM_PARALLELIZATION_WIDTH:-12}
# A test that hangs is stopped after COORD_TEST_TIMEOUT (the whole suite takes about
# two minutes), and the tests that started and never ended are named, instead of a
# CI job that only runs out of time. The output is also kept in .build/test-logs.
COORD_TEST_TIMEOUT=${COORD_TEST_TIMEOUT:-40m}
coord_log "running swift test (at most $SWT_EXPERIMENTAL_MAXIMUM_PARALLELIZATION_WIDTH tests at once, stopped after $COORD_TEST_TIMEOUT)"
mkdir -p .build/test-logs
test_log=$(pwd -P)/.build/test-logs/swift-test.log
test_started=$SECONDS
set +e
# --foreground keeps swift test in the terminal's process group (Ctrl-C reaches it);
# line-buffered, so that what a stopped run printed last is not lost in a buffer.
timeout --foreground --kill-after=30s "$COORD_TEST_TIMEOUT" stdbuf -oL -eL swift test --skip-build "$@" 2>&1 | tee "$test_log"
status=${PIPESTATUS[0]}
set -e
# 124: timed out; 137: timed out and killed after the grace period (or killed by
# something else, such as the OOM killer: told apart by the time it ran).
timed_out=false
if [ "$status" = 124 ]; then
    timed_out=true
elif [ "$status" = 137 ]; then
    limit=$(echo "$COORD_TEST_TIMEOUT" | awk '{ n = $0 + 0; u = substr($0, length($0)); print (u == "m" ? n * 60 : u == "h" ? n * 3600 : u == "d" ? n * 86400 : n) }')
    [ $((SECONDS - test_started)) -ge "${limit%.*}" ] && timed_out=true
fi
if [ "$timed_out" = true ]; then
    coord_log "swift test did not finish within $COORD_TEST_TIMEOUT and was stopped; the tests that started and never ended:"
    # Swift Testing's lines: "◇ Test name() started.", "✔ Test name() passed after ...",
    # "✔ Test name(x:) with 20 test cases passed after ...", "✘ Test name() failed
    # after ...", "➜ Test name() skipped..."; "✘ Test name() recorded an issue" is no end.
    awk '$2 == "Test" && $3 != "case" && $3 != "run" {
             if ($NF == "started.") started[$3] = 1
             else if ($0 ~ / (passed|failed) after / || $4 ~ /^skipped/) ended[$3] = 1
         }
         END { for (name in started) if (!(name in ended)) print "  " name }' "$test_log" | sort >&2
    # swift test runs the tests in a process of its own, which the timeout does not
    # reach: stop it (this checkout's test binary, by its physical path, escaped for
    # pkill's regular expression), then its servers are stopped on exit.
    tests_binary="^$(pwd -P | sed 's/[][\.*^$+?(){}|]/\\&/g')/\.build/.*PackageTests\.xctest"
    pkill -TERM -f "$tests_binary" 2>/dev/null || true
    sleep 2
    pkill -KILL -f "$tests_binary" 2>/dev/null || true
    coord_log "the whole output is in $test_log"
fi
exit "$status"
