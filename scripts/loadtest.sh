#!/usr/bin/env bash
# Builds in release mode and runs the load test, then prints its reports:
#   1. coordbench kv      the store: put, get, txn compare-and-swap from 16 clients, the
#                         Redis ceiling for the same put script (redis-benchmark FCALL),
#                         and Redis memory per live key after compaction (skip with
#                         LOADTEST_KV=0);
#   2. coordbench primitives  locks (uncontended, contended handoff), election
#                         handoff, STM bank transfers and fortress visits from 16
#                         workers, next to plain puts (skip with LOADTEST_PRIMITIVES=0);
#   3. coordbench client  the Redis client: SET/GET from 64 tasks, pipelined and not,
#                         next to redis-benchmark (skip with LOADTEST_CLIENT=0);
#   4. etcd 3.4 vs coordproxy  the Go load generator (scripts/loadgen, etcd's own
#                         clientv3) drives a private etcd 3.4 and a private coordproxy
#                         over a private Redis, side by side (each workload's rounds
#                         alternate between the two): put, get, txn, lock,
#                         lock-handoff, election-handoff, stm, watch, v3lock, with the
#                         servers' CPU per operation; prints one table and writes an
#                         HTML report with latency plots (skip with LOADTEST_ETCD=0).
#                         LOADTEST_DURATION (3s per round), LOADTEST_ROUNDS (3),
#                         LOADTEST_WORKLOADS (all) are passed to loadgen run;
#                         LOADTEST_COORDPROXY=/path/to/coordproxy measures that binary
#                         instead of building coordproxy in release mode;
#                         sections 1 and 2 write the "Swift library direct" column to
#                         <report dir>/library.json, which the report includes;
#                         LOADTEST_LIBRARY_JSON=file names another such file;
#                         LOADTEST_REPORT_DIR (default .build/loadtest) keeps the results.
#   5. Redis clients      redis-benchmark SET/GET (50 clients, with and without -P 16)
#                         against a private Redis directly and through coordproxy's
#                         RESP listener in the same run, with the ratio and coordproxy's
#                         CPU per request, COORD.PUT/COORD.GET from 16 clients, and
#                         coordbench resp: COORD.PUT and COORD.LOCK/UNLOCK, uncontended
#                         and handed off between 16 connections; the uncontended lock
#                         in alternating rounds with etcd's v3lock Lock/Unlock from the
#                         Go load generator against a private etcd (etcd's round first
#                         in odd rounds), both up (skip etcd with LOADTEST_RESP_ETCD=0; skip the
#                         section with LOADTEST_RESP=0). The redis-benchmark runs go in
#                         LOADTEST_RESP_ROUNDS rounds (3), each alternating direct and
#                         through coordproxy, and the report gives each one's median
#                         run (by requests/s; its latencies and CPU come with it):
#                         LOADTEST_RESP_REQUESTS requests per unpipelined run (200000),
#                         LOADTEST_RESP_PIPELINED_REQUESTS per -P 16 run (1000000: a
#                         second or so, where 200000 lasted a fifth of one), and
#                         LOADTEST_RESP_COORD_REQUESTS per COORD.PUT/GET run (20000).
#
# Without REDIS_URL, coordbench starts a private redis-server on a loopback port
# and stops it at the end; with REDIS_URL it measures that server (it writes the
# namespaces "bench", "bench-memory" and "bench-primitives" and the key "key:bench").
# Section 4 always starts its own etcd, redis-server and coordproxy on free loopback
# ports, under the run's private TMPDIR, and stops them by pid when the script exits.
#
# Usage: scripts/loadtest.sh [coordbench kv options, see coordbench kv --help]
#   e.g. scripts/loadtest.sh --requests 200000 --rounds 5
#   section 4 alone, with a given coordproxy and short rounds:
#   LOADTEST_KV=0 LOADTEST_PRIMITIVES=0 LOADTEST_CLIENT=0 \
#     LOADTEST_COORDPROXY=.build/debug/coordproxy LOADTEST_DURATION=1s LOADTEST_ROUNDS=1 \
#     scripts/loadtest.sh
set -euo pipefail
COORD_SCRIPT=loadtest.sh
cd "$(dirname "$0")/.."
. scripts/lib.sh

coord_install_dependencies
coord_private_tmpdir

LOADTEST_KV=${LOADTEST_KV:-1}
LOADTEST_PRIMITIVES=${LOADTEST_PRIMITIVES:-1}
LOADTEST_CLIENT=${LOADTEST_CLIENT:-1}
LOADTEST_ETCD=${LOADTEST_ETCD:-1}

# coordbench kv and primitives also write their results here, for section 4's report
# (the "Swift library direct" column), unless LOADTEST_LIBRARY_JSON names another file.
library_json_dir=${LOADTEST_REPORT_DIR:-.build/loadtest}
mkdir -p "$library_json_dir"
library_json="$(cd "$library_json_dir" && pwd)/library.json"
if [ -z "${LOADTEST_LIBRARY_JSON:-}" ] && { [ "$LOADTEST_KV" != 0 ] || [ "$LOADTEST_PRIMITIVES" != 0 ]; }; then
    rm -f "$library_json"
    LOADTEST_LIBRARY_JSON=$library_json
fi

bin=
if [ "$LOADTEST_KV" != 0 ] || [ "$LOADTEST_PRIMITIVES" != 0 ] || [ "$LOADTEST_CLIENT" != 0 ]; then
    coord_log "building coordbench (release)"
    swift build -c release --product coordbench
    bin=$(swift build -c release --show-bin-path)
fi
if [ "$LOADTEST_KV" != 0 ]; then
    coord_log "running: coordbench kv $*"
    "$bin/coordbench" kv --json "$library_json" "$@"
elif [ $# -gt 0 ]; then
    coord_log "LOADTEST_KV=0: ignoring the coordbench kv options $*"
fi
if [ "$LOADTEST_PRIMITIVES" != 0 ]; then
    coord_log "running: coordbench primitives"
    "$bin/coordbench" primitives --json "$library_json"
fi
if [ "$LOADTEST_CLIENT" != 0 ]; then
    coord_log "running: coordbench client"
    "$bin/coordbench" client
fi

# --- 4. etcd 3.4 vs coordproxy, driven by the Go load generator --------------------

# Servers this section started, in start order, as "name:pid"; stopped in reverse.
loadtest_servers=()
loadtest_logs_to=

loadtest_stop_servers() {
    local i entry name pid waited
    if [ -n "${loadtest_loadgen_pid:-}" ] && kill -0 "$loadtest_loadgen_pid" 2>/dev/null; then
        coord_log "stopping loadgen (pid $loadtest_loadgen_pid)"
        kill -TERM "$loadtest_loadgen_pid" 2>/dev/null || true
        wait "$loadtest_loadgen_pid" 2>/dev/null || true
    fi
    loadtest_loadgen_pid=
    for ((i = ${#loadtest_servers[@]} - 1; i >= 0; i--)); do
        entry=${loadtest_servers[$i]}
        name=${entry%%:*}
        pid=${entry#*:}
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            waited=0
            while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt 100 ]; do
                sleep 0.1
                waited=$((waited + 1))
            done
            if kill -0 "$pid" 2>/dev/null; then
                coord_log "$name (pid $pid) did not stop within 10 s of SIGTERM; sending SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
            fi
            wait "$pid" 2>/dev/null || true
            coord_log "stopped $name (pid $pid)"
        fi
    done
    loadtest_servers=()
    # Keep the servers' logs next to the results (the private TMPDIR is removed).
    if [ -n "$loadtest_logs_to" ] && [ -d "${loadtest_dir:-}" ]; then
        mkdir -p "$loadtest_logs_to"
        cp "$loadtest_dir"/*.log "$loadtest_logs_to"/ 2>/dev/null || true
    fi
}

# loadtest_free_port <var>: sets <var> to a loopback TCP port that nothing accepts
# connections on and that this section has not handed out yet.
loadtest_used_ports=" "
loadtest_free_port() {
    local port tries
    for ((tries = 0; tries < 500; tries++)); do
        port=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
        case "$loadtest_used_ports" in *" $port "*) continue ;; esac
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            loadtest_used_ports+="$port "
            printf -v "$1" '%s' "$port"
            return 0
        fi
    done
    coord_log "found no free loopback port"
    return 1
}

# loadtest_wait <name> <pid> <log> <command...>: waits up to 30 s until the command
# succeeds; fails with the log's tail if the server exits or never answers.
loadtest_wait() {
    local name=$1 pid=$2 log=$3 tries
    shift 3
    for ((tries = 0; tries < 300; tries++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            coord_log "$name (pid $pid) exited during startup; the end of $log:"
            tail -n 20 "$log" >&2 || true
            return 1
        fi
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    coord_log "$name (pid $pid) did not become healthy within 30 s; the end of $log:"
    tail -n 20 "$log" >&2 || true
    return 1
}

# loadtest_loadgen <args...>: runs loadgen in the background and waits for it, so that
# a signal to this script stops it (by pid, in loadtest_stop_servers) at once.
loadtest_loadgen_pid=
loadtest_loadgen() {
    local status=0
    "$loadgen" "$@" &
    loadtest_loadgen_pid=$!
    wait "$loadtest_loadgen_pid" || status=$?
    loadtest_loadgen_pid=
    return "$status"
}

# loadtest_coordproxy: sets coordproxy (the binary) and coordproxy_build (what it is):
# $LOADTEST_COORDPROXY, else a release build (built once).
coordproxy=
loadtest_coordproxy() {
    [ -n "$coordproxy" ] && return 0
    if [ -n "${LOADTEST_COORDPROXY:-}" ]; then
        coordproxy=$LOADTEST_COORDPROXY
        if [ ! -x "$coordproxy" ]; then
            coord_log "LOADTEST_COORDPROXY=$coordproxy is not an executable"
            exit 1
        fi
        coordproxy=$(cd "$(dirname "$coordproxy")" && pwd)/$(basename "$coordproxy")
        coordproxy_build="given binary $coordproxy"
    else
        coord_log "building coordproxy (release)"
        swift build -c release --product coordproxy
        coordproxy=$(swift build -c release --show-bin-path)/coordproxy
        coordproxy_build="release build"
    fi
}

# loadtest_start_etcd: starts a private etcd 3.4 (single member, fsync on every write,
# its default) with its data under $loadtest_dir, waits until it is healthy, and sets
# etcd_port, etcd_pid and etcd_version.
loadtest_start_etcd() {
    local etcd_peer_port etcd_url etcd_peer
    mkdir -p "$loadtest_dir/etcd-data"
    loadtest_free_port etcd_port
    loadtest_free_port etcd_peer_port
    etcd_url=http://127.0.0.1:$etcd_port
    etcd_peer=http://127.0.0.1:$etcd_peer_port
    etcd --name loadtest --data-dir "$loadtest_dir/etcd-data" \
        --listen-client-urls "$etcd_url" --advertise-client-urls "$etcd_url" \
        --listen-peer-urls "$etcd_peer" --initial-advertise-peer-urls "$etcd_peer" \
        --initial-cluster "loadtest=$etcd_peer" --initial-cluster-state new \
        --logger zap --log-outputs "$loadtest_dir/etcd.log" \
        >"$loadtest_dir/etcd-stdout.log" 2>&1 &
    etcd_pid=$!
    loadtest_servers+=("etcd:$etcd_pid")
    echo "$etcd_pid" >"$loadtest_dir/etcd.pid"
    loadtest_wait etcd "$etcd_pid" "$loadtest_dir/etcd.log" \
        env ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$etcd_port" --dial-timeout 2s --command-timeout 3s endpoint health
    etcd_version=$(etcd --version 2>/dev/null | sed -n 's/^etcd Version: //p')
    coord_log "etcd ${etcd_version:-?} (pid $etcd_pid) serves 127.0.0.1:$etcd_port"
}

loadtest_redis_ready() {
    [ "$(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = PONG ]
}

if [ "$LOADTEST_ETCD" != 0 ]; then
    trap 'loadtest_stop_servers; coord_cleanup_tmpdir "$COORD_RUN_DIR"' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    report_dir=${LOADTEST_REPORT_DIR:-.build/loadtest}
    mkdir -p "$report_dir"
    report_dir=$(cd "$report_dir" && pwd)
    rm -f "$report_dir/etcd.json" "$report_dir/coordproxy.json"
    loadtest_logs_to=$report_dir/logs
    rm -rf "$loadtest_logs_to"

    coord_log "building the load generator (Go, clientv3)"
    coord_build_go_loadgen "$(pwd)/.build/go/loadgen"
    loadgen=$COORD_GO_LOADGEN

    loadtest_coordproxy

    loadtest_dir=$TMPDIR/coord-loadtest
    mkdir -p "$loadtest_dir/etcd-data" "$loadtest_dir/redis"
    fs_type=$(stat -f -c %T "$loadtest_dir" 2>/dev/null || echo unknown)

    loadtest_start_etcd

    # Redis with its append-only file, fsync once a second; coordproxy over it.
    loadtest_free_port redis_port
    redis-server --port "$redis_port" --bind 127.0.0.1 --daemonize no \
        --appendonly yes --appendfsync everysec --save '' \
        --dir "$loadtest_dir/redis" --notify-keyspace-events Kx \
        --logfile "$loadtest_dir/redis.log" \
        >"$loadtest_dir/redis-stdout.log" 2>&1 &
    redis_pid=$!
    loadtest_servers+=("redis-server:$redis_pid")
    echo "$redis_pid" >"$loadtest_dir/redis.pid"
    loadtest_wait redis-server "$redis_pid" "$loadtest_dir/redis.log" \
        loadtest_redis_ready "$redis_port"
    redis_version=$(redis-server --version 2>/dev/null | sed -n 's/.*v=\([^ ]*\).*/\1/p')
    coord_log "redis-server ${redis_version:-?} (pid $redis_pid) serves 127.0.0.1:$redis_port"

    loadtest_free_port proxy_port
    "$coordproxy" --redis-url "redis://127.0.0.1:$redis_port" \
        --listen-client-urls "http://127.0.0.1:$proxy_port" \
        >"$loadtest_dir/coordproxy.log" 2>&1 &
    proxy_pid=$!
    loadtest_servers+=("coordproxy:$proxy_pid")
    echo "$proxy_pid" >"$loadtest_dir/coordproxy.pid"
    loadtest_wait coordproxy "$proxy_pid" "$loadtest_dir/coordproxy.log" \
        env ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$proxy_port" --dial-timeout 2s --command-timeout 3s endpoint health
    coord_log "coordproxy ($coordproxy_build, pid $proxy_pid) serves 127.0.0.1:$proxy_port"

    loadgen_args=(-duration "${LOADTEST_DURATION:-3s}" -rounds "${LOADTEST_ROUNDS:-3}")
    if [ -n "${LOADTEST_WORKLOADS:-}" ]; then
        loadgen_args+=(-workloads "$LOADTEST_WORKLOADS")
    fi
    loadgen_failed=
    # One run measures both: each workload's rounds alternate between etcd and
    # coordproxy, so that the host's other work falls on both sides alike.
    coord_log "running: loadgen run against etcd and coordproxy, rounds alternating ${loadgen_args[*]}"
    loadtest_loadgen run -endpoints "127.0.0.1:$etcd_port" -label "etcd 3.4" \
        -pids "etcd=$etcd_pid" -out "$report_dir/etcd.json" \
        -notes "etcd ${etcd_version:-?}, single member, fsync per write, data dir on $fs_type" \
        -vs-endpoints "127.0.0.1:$proxy_port" -vs-label "coordproxy" \
        -vs-pids "coordproxy=$proxy_pid,redis=$redis_pid" -vs-out "$report_dir/coordproxy.json" \
        -vs-notes "coordproxy ($coordproxy_build) over redis-server ${redis_version:-?}, appendonly yes, appendfsync everysec, dir on $fs_type" \
        "${loadgen_args[@]}" || loadgen_failed=1

    loadtest_stop_servers

    report_files=()
    for f in "$report_dir/etcd.json" "$report_dir/coordproxy.json"; do
        [ -f "$f" ] && report_files+=("$f")
    done
    if [ -n "${LOADTEST_LIBRARY_JSON:-}" ]; then
        if [ -f "$LOADTEST_LIBRARY_JSON" ]; then
            report_files+=("$LOADTEST_LIBRARY_JSON")
        else
            coord_log "LOADTEST_LIBRARY_JSON=$LOADTEST_LIBRARY_JSON does not exist; the report leaves it out"
        fi
    fi
    if [ ${#report_files[@]} -gt 0 ]; then
        {
            "$loadgen" report -html "$report_dir/loadtest-report.html" "${report_files[@]}"
            echo
            echo "durability: etcd fsyncs each write before answering (single member); Redis appendonly yes, appendfsync everysec (a crash can lose up to 1 s of acknowledged writes)"
        } | tee "$report_dir/loadtest-report.txt"
    fi
    coord_log "results in $report_dir: loadtest-report.html, loadtest-report.txt, etcd.json, coordproxy.json, logs/"
    if [ -n "$loadgen_failed" ]; then
        coord_log "loadgen failed (its messages above say against which server; the notes in the result files too)"
        exit 1
    fi
fi

# --- 5. Redis clients through coordproxy's RESP listener -----------------------------

# loadtest_cpu_ticks <pid>: the process's user + system CPU so far, in clock ticks.
loadtest_cpu_ticks() {
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}

# loadtest_bench <label> <port> <requests> <pid or -> <redis-benchmark args...>: runs
# redis-benchmark against 127.0.0.1:<port> and appends one line to $resp_results:
# label, requests/s, p50 ms, p99 ms, CPU µs per request of <pid> (- when not measured).
loadtest_bench() {
    local label=$1 port=$2 requests=$3 pid=$4 before after csv rps p50 p99 cpu=-
    shift 4
    [ "$pid" != - ] && before=$(loadtest_cpu_ticks "$pid")
    csv=$(redis-benchmark -h 127.0.0.1 -p "$port" -n "$requests" --csv "$@" 2>/dev/null | tail -n 1)
    [ "$pid" != - ] && after=$(loadtest_cpu_ticks "$pid")
    rps=$(echo "$csv" | awk -F'","' '{ print $2 }')
    p50=$(echo "$csv" | awk -F'","' '{ print $5 }')
    p99=$(echo "$csv" | awk -F'","' '{ print $7 }')
    if [ -z "$rps" ]; then
        coord_log "redis-benchmark $label printed nothing it could read: $csv"
        return 1
    fi
    if [ "$pid" != - ]; then
        cpu=$(awk -v t=$((after - before)) -v n="$requests" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", t * 1e6 / hz / n }')
    fi
    printf '%s\t%s\t%s\t%s\t%s\n' "$label" "$rps" "$p50" "$p99" "$cpu" >>"$resp_results"
    coord_log "$label: $rps requests/s, p50 $p50 ms, p99 $p99 ms, coordproxy CPU $cpu µs/request"
}

if [ "${LOADTEST_RESP:-1}" != 0 ]; then
    trap 'loadtest_stop_servers; coord_cleanup_tmpdir "$COORD_RUN_DIR"' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    loadtest_coordproxy
    report_dir=${LOADTEST_REPORT_DIR:-.build/loadtest}
    mkdir -p "$report_dir"
    report_dir=$(cd "$report_dir" && pwd)
    loadtest_logs_to=$report_dir/resp-logs
    rm -rf "$loadtest_logs_to"
    loadtest_dir=$TMPDIR/coord-resp
    mkdir -p "$loadtest_dir/redis"
    resp_results=$report_dir/resp.tsv
    : >"$resp_results"
    requests=${LOADTEST_RESP_REQUESTS:-200000}
    pipelined_requests=${LOADTEST_RESP_PIPELINED_REQUESTS:-1000000}
    coord_requests=${LOADTEST_RESP_COORD_REQUESTS:-20000}
    resp_rounds=${LOADTEST_RESP_ROUNDS:-3}

    rm -f "$report_dir"/resp-lock-round-* "$report_dir/resp-etcd-v3lock.json"
    loadtest_free_port resp_redis_port
    redis-server --port "$resp_redis_port" --bind 127.0.0.1 --daemonize no \
        --appendonly yes --appendfsync everysec --save '' \
        --dir "$loadtest_dir/redis" --notify-keyspace-events Kx \
        --logfile "$loadtest_dir/redis.log" >"$loadtest_dir/redis-stdout.log" 2>&1 &
    resp_redis_pid=$!
    loadtest_servers+=("redis-server:$resp_redis_pid")
    echo "$resp_redis_pid" >"$loadtest_dir/redis.pid"
    loadtest_wait redis-server "$resp_redis_pid" "$loadtest_dir/redis.log" loadtest_redis_ready "$resp_redis_port"

    loadtest_free_port resp_grpc_port
    loadtest_free_port resp_port
    "$coordproxy" --redis-url "redis://127.0.0.1:$resp_redis_port" \
        --listen-client-urls "http://127.0.0.1:$resp_grpc_port" --listen-resp "127.0.0.1:$resp_port" \
        >"$loadtest_dir/coordproxy.log" 2>&1 &
    resp_proxy_pid=$!
    loadtest_servers+=("coordproxy:$resp_proxy_pid")
    echo "$resp_proxy_pid" >"$loadtest_dir/coordproxy.pid"
    loadtest_wait coordproxy "$resp_proxy_pid" "$loadtest_dir/coordproxy.log" loadtest_redis_ready "$resp_port"
    coord_log "coordproxy ($coordproxy_build, pid $resp_proxy_pid) serves RESP on 127.0.0.1:$resp_port over redis-server (pid $resp_redis_pid) on $resp_redis_port"

    for round in $(seq 1 "$resp_rounds"); do
        coord_log "round $round of $resp_rounds: redis-benchmark SET/GET, 50 clients, $requests requests each ($pipelined_requests with -P 16), direct and through coordproxy"
        loadtest_bench "redis SET" "$resp_redis_port" "$requests" - -c 50 -t set
        loadtest_bench "proxy SET" "$resp_port" "$requests" "$resp_proxy_pid" -c 50 -t set
        loadtest_bench "redis GET" "$resp_redis_port" "$requests" - -c 50 -t get
        loadtest_bench "proxy GET" "$resp_port" "$requests" "$resp_proxy_pid" -c 50 -t get
        loadtest_bench "redis SET -P 16" "$resp_redis_port" "$pipelined_requests" - -c 50 -P 16 -t set
        loadtest_bench "proxy SET -P 16" "$resp_port" "$pipelined_requests" "$resp_proxy_pid" -c 50 -P 16 -t set
        loadtest_bench "redis GET -P 16" "$resp_redis_port" "$pipelined_requests" - -c 50 -P 16 -t get
        loadtest_bench "proxy GET -P 16" "$resp_port" "$pipelined_requests" "$resp_proxy_pid" -c 50 -P 16 -t get
        coord_log "round $round of $resp_rounds: redis-benchmark COORD.PUT/COORD.GET, 16 clients, $coord_requests requests each"
        loadtest_bench "proxy COORD.PUT" "$resp_port" "$coord_requests" "$resp_proxy_pid" -c 16 -r 10000 COORD.PUT "key:__rand_int__" value
        loadtest_bench "proxy COORD.GET" "$resp_port" "$coord_requests" "$resp_proxy_pid" -c 16 -r 10000 COORD.GET "key:__rand_int__"
    done
    if [ -z "$bin" ]; then
        coord_log "building coordbench (release)"
        swift build -c release --product coordbench
        bin=$(swift build -c release --show-bin-path)
    fi
    resp_duration=${LOADTEST_DURATION:-3s}
    lock_rounds=${LOADTEST_ROUNDS:-3}

    # Lock + unlock, uncontended, 16 workers with a lock each: COORD.LOCK/UNLOCK
    # through coordproxy (coordbench resp) against etcd's own Lock service (v3lock,
    # the Go load generator, clientv3), in alternating rounds with both servers up
    # (etcd's round first in odd rounds, coordproxy's in even ones), as section 4
    # does: one after the other, the ratio followed the host's load on each half.
    if [ "${LOADTEST_RESP_ETCD:-1}" != 0 ]; then
        coord_log "building the load generator (Go, clientv3)"
        coord_build_go_loadgen "$(pwd)/.build/go/loadgen"
        loadgen=$COORD_GO_LOADGEN
        loadtest_start_etcd
    fi
    # loadtest_v3lock_round <round>: one round of etcd's v3lock; its pairs/s and
    # etcd's CPU per pair go to resp-lock-round-<round>.etcd.
    loadtest_v3lock_round() {
        local json=$report_dir/resp-lock-round-$1.etcd.json
        coord_log "lock round $1 of $lock_rounds: loadgen v3lock against etcd"
        if loadtest_loadgen run -endpoints "127.0.0.1:$etcd_port" -label "etcd 3.4" -workloads v3lock \
            -pids "etcd=$etcd_pid" -out "$json" -duration "$resp_duration" -rounds 1 \
            -notes "etcd ${etcd_version:-?}, single member, fsync per write; lock round $1" >/dev/null; then
            python3 -c 'import json, sys
for r in json.load(open(sys.argv[1]))["results"]:
    if r["workload"] == "v3lock": print(round(r["ops_per_sec"]), r["cpu_us_per_op"].get("etcd", "-"))' "$json" >"$report_dir/resp-lock-round-$1.etcd"
        else
            coord_log "loadgen v3lock against etcd failed in round $1; the report leaves that round out"
        fi
    }
    # loadtest_resp_lock_round <round>: one round of COORD.LOCK/UNLOCK; its pairs/s
    # and coordproxy's and Redis's CPU per pair go to resp-lock-round-<round>.coordproxy.
    loadtest_resp_lock_round() {
        local proxy_before redis_before proxy_after redis_after pairs
        coord_log "lock round $1 of $lock_rounds: coordbench resp lock through coordproxy"
        proxy_before=$(loadtest_cpu_ticks "$resp_proxy_pid")
        redis_before=$(loadtest_cpu_ticks "$resp_redis_pid")
        "$bin/coordbench" resp --url "redis://127.0.0.1:$resp_port" --duration "${resp_duration%s}" --rounds 1 --workloads lock \
            >"$report_dir/resp-lock-round-$1.coordbench.txt"
        proxy_after=$(loadtest_cpu_ticks "$resp_proxy_pid")
        redis_after=$(loadtest_cpu_ticks "$resp_redis_pid")
        pairs=$(awk '$1 == "lock" { print $2 }' "$report_dir/resp-lock-round-$1.coordbench.txt")
        [ -n "$pairs" ] || return 0
        awk -v n="$pairs" -v s="${resp_duration%s}" -v p=$((proxy_after - proxy_before)) -v r=$((redis_after - redis_before)) \
            -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%s %.0f %.0f\n", n, p * 1e6 / hz / (n * s), r * 1e6 / hz / (n * s) }' \
            >"$report_dir/resp-lock-round-$1.coordproxy"
    }
    for round in $(seq 1 "$lock_rounds"); do
        if [ "${LOADTEST_RESP_ETCD:-1}" != 0 ] && [ $((round % 2)) = 1 ]; then loadtest_v3lock_round "$round"; fi
        loadtest_resp_lock_round "$round"
        if [ "${LOADTEST_RESP_ETCD:-1}" != 0 ] && [ $((round % 2)) = 0 ]; then loadtest_v3lock_round "$round"; fi
    done

    coord_log "running: coordbench resp (COORD.PUT, COORD.LOCK/UNLOCK handed off between 16 connections)"
    "$bin/coordbench" resp --url "redis://127.0.0.1:$resp_port" --duration "${resp_duration%s}" --rounds "${LOADTEST_ROUNDS:-3}" \
        --workloads put,lock-handoff | tee "$report_dir/resp-coordbench.txt"
    loadtest_stop_servers

    # loadtest_median <label>: the line of $resp_results for <label> whose requests/s
    # is the median of that label's rounds (the lower middle one for an even count).
    loadtest_median() {
        awk -F'\t' -v l="$1" '$1 == l' "$resp_results" | sort -t"$(printf '\t')" -k2,2g |
            awk '{ line[NR] = $0 } END { if (NR) print line[int((NR + 1) / 2)] }'
    }
    {
        echo "Redis clients through coordproxy (redis-benchmark, same run, medians of $resp_rounds rounds; ratio = through coordproxy / Redis directly)"
        printf '%-22s %12s %12s %7s %8s %9s %9s %14s\n' workload redis proxy ratio target "p50 ms" "p99 ms" "proxy µs/req"
        for workload in "SET" "GET" "SET -P 16" "GET -P 16"; do
            direct=$(loadtest_median "redis $workload" | awk -F'\t' '{ print $2 }')
            through=$(loadtest_median "proxy $workload")
            [ -n "$direct" ] && [ -n "$through" ] || continue
            case "$workload" in *-P*) target=">= 0.60" ;; *) target=">= 0.80" ;; esac
            echo "$through" | awk -F'\t' -v d="$direct" -v w="$workload" -v t="$target" \
                '{ printf "%-22s %12.0f %12.0f %7.2f %8s %9s %9s %14s\n", w, d, $2, $2 / d, t, $3, $4, $5 }'
        done
        for workload in "COORD.PUT" "COORD.GET"; do
            loadtest_median "proxy $workload" | awk -F'\t' -v w="$workload (16 clients)" \
                '{ printf "%-22s %12s %12.0f %7s %8s %9s %9s %14s\n", w, "-", $2, "-", "-", $3, $4, $5 }'
        done
        echo "durability: Redis appendonly yes, appendfsync everysec; coordproxy's CPU from /proc/<pid>/stat over each run"
        cat "$report_dir/resp-coordbench.txt"
        # The rounds' pairs/s, and each side's median round (the lower middle one
        # for an even count), with its CPU per pair.
        loadtest_lock_median() {
            { cat "$report_dir"/resp-lock-round-*."$1" 2>/dev/null || true; } | sort -k1,1g |
                awk '{ line[NR] = $0 } END { if (NR) print line[int((NR + 1) / 2)] }'
        }
        resp_lock=$(loadtest_lock_median coordproxy)
        etcd_lock=$(loadtest_lock_median etcd)
        if [ -n "$resp_lock" ]; then
            echo
            echo "lock+unlock pairs/s, uncontended, 16 workers with a lock each; alternating rounds of ${resp_duration}, etcd's first in odd rounds:"
            for round in $(seq 1 "$lock_rounds"); do
                printf '  round %d: COORD.LOCK/UNLOCK %s pairs/s (coordproxy %s + Redis %s µs of CPU per pair)' "$round" \
                    $(cat "$report_dir/resp-lock-round-$round.coordproxy" 2>/dev/null || echo "- - -")
                if [ -f "$report_dir/resp-lock-round-$round.etcd" ]; then
                    printf ', etcd v3lock %s pairs/s (etcd %s µs)' $(cat "$report_dir/resp-lock-round-$round.etcd")
                fi
                echo
            done
            echo "$resp_lock" | awk '{ printf "  %-48s %8.0f  (coordproxy %s + Redis %s µs of CPU per pair)\n", "COORD.LOCK/UNLOCK through coordproxy (RESP), median", $1, $2, $3 }'
            if [ -n "$etcd_lock" ]; then
                echo "$etcd_lock" | awk '{ printf "  %-48s %8.0f  (etcd %s µs of CPU per pair)\n", "etcd v3lock Lock/Unlock (Go clientv3), median", $1, $2 }'
                awk -v p="${resp_lock%% *}" -v e="${etcd_lock%% *}" 'BEGIN {
                    printf "  %-48s %8.2f  (target >= 3; %s)\n", "ratio of the medians", p / e, (p / e >= 3 ? "met" : "not met") }'
            fi
        fi
    } | tee "$report_dir/resp-report.txt"
    coord_log "results in $report_dir: resp-report.txt, resp.tsv, resp-coordbench.txt, resp-lock-round-*, resp-logs/"
fi
