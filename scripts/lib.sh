# Shared by scripts/test.sh and scripts/loadtest.sh. Source it; do not run it.
#
# coord_install_dependencies: makes sure the system packages the project needs are
#   present. As root it installs what is missing (one `apt-get update` first); as
#   another user it prints the exact command to run and fails.
# coord_python_env: a virtual environment with the PyPI clients (etcd3gw, python-etcd3, redis-py, hiredis).
# coord_private_tmpdir: creates a scratch directory for this run and exports TMPDIR,
#   so that every private redis-server and etcd the run starts lives under it; on
#   exit, any server left running there (a crashed test cannot stop its own) is
#   stopped by its pid file, and the directory is removed.

coord_log() { printf '%s: %s\n' "${COORD_SCRIPT:-coord}" "$*" >&2; }

# Prints the Debian packages whose files are missing, one per line.
coord_missing_packages() {
    command -v redis-server >/dev/null 2>&1 || echo redis-server
    command -v redis-benchmark >/dev/null 2>&1 || echo redis-tools
    [ -f /usr/include/hiredis/hiredis.h ] || echo libhiredis-dev
    command -v pkg-config >/dev/null 2>&1 || echo pkg-config
    command -v etcd >/dev/null 2>&1 || echo etcd-server
    command -v etcdctl >/dev/null 2>&1 || echo etcd-client
    command -v go >/dev/null 2>&1 || echo golang-go
    [ -d /usr/share/gocode/src/go.etcd.io/etcd/clientv3/concurrency ] || echo golang-etcd-server-dev
    command -v python3 >/dev/null 2>&1 || echo python3
    # A virtual environment for the PyPI clients needs venv and ensurepip (Debian
    # splits them into python3-venv).
    python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || echo python3-venv
}

# The Python clients the tests drive, from PyPI, at the versions the tests were
# written against.
COORD_PYTHON_PACKAGES="etcd3gw==2.7.0 etcd3==0.12.0 redis==8.1.0 hiredis==3.5.0"

# coord_python_env <dir>: makes (or reuses) a virtual environment at <dir> with
#   COORD_PYTHON_PACKAGES installed from PyPI, and exports COORD_PYTHON.
coord_python_env() {
    local dir=${1:?coord_python_env: give the directory for the virtual environment} stamp
    stamp="$dir/.coord-packages"
    if [ -x "$dir/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$COORD_PYTHON_PACKAGES" ]; then
        export COORD_PYTHON="$dir/bin/python"
        return 0
    fi
    rm -rf "$dir"
    python3 -m venv "$dir"
    # shellcheck disable=SC2086
    if ! "$dir/bin/python" -m pip install --quiet --disable-pip-version-check $COORD_PYTHON_PACKAGES; then
        coord_log "pip could not install $COORD_PYTHON_PACKAGES from PyPI (is https://pypi.org reachable? a proxy goes in PIP_INDEX_URL)"
        return 1
    fi
    echo "$COORD_PYTHON_PACKAGES" >"$stamp"
    export COORD_PYTHON="$dir/bin/python"
}

# coord_build_go_clientcheck <output>: builds the clientv3 checks of the etcd API
#   tests (Tests/EtcdAPITests/GoClient) with Debian's Go and etcd sources, in GOPATH
#   mode, and exports COORD_GO_CLIENTCHECK.
coord_build_go_clientcheck() {
    local output=$1
    mkdir -p "$(dirname "$output")"
    GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE="${GOCACHE:-$(pwd)/.build/gocache}" \
        go build -o "$output" Tests/EtcdAPITests/GoClient/*.go
    export COORD_GO_CLIENTCHECK=$output
}

# coord_build_go_loadgen <output>: builds the load generator (scripts/loadgen, etcd's
#   clientv3 driving an etcd v3 endpoint) the same way, and exports COORD_GO_LOADGEN.
coord_build_go_loadgen() {
    local output=$1
    mkdir -p "$(dirname "$output")"
    GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE="${GOCACHE:-$(pwd)/.build/gocache}" \
        go build -o "$output" scripts/loadgen/main.go
    export COORD_GO_LOADGEN=$output
}

coord_install_dependencies() {
    local missing
    missing=$(coord_missing_packages | sort -u | tr '\n' ' ')
    missing=${missing% }
    if [ -z "$missing" ]; then
        coord_log "system packages present (redis-server, libhiredis-dev, etcd, go, etcd Go sources, python3 with venv)"
        return 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        coord_log "missing packages: $missing"
        coord_log "install them as root, then run this script again:"
        coord_log "  sudo apt-get update && sudo apt-get install -y $missing"
        return 1
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        coord_log "missing packages: $missing, and apt-get is not available; install the equivalents for your system"
        return 1
    fi
    coord_log "installing: $missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
    local still
    still=$(coord_missing_packages | tr '\n' ' ')
    if [ -n "${still// /}" ]; then
        coord_log "still missing after apt-get install: $still"
        return 1
    fi
    coord_log "installed: $missing"
}

coord_cleanup_tmpdir() {
    local dir=$1 pidfile pid
    [ -d "$dir" ] || return 0
    for pidfile in "$dir"/coord-*/*.pid; do
        # owner.pid names the process that started the server (the tests), not a server.
        [ -f "$pidfile" ] && [ "$(basename "$pidfile")" != owner.pid ] || continue
        pid=$(cat "$pidfile" 2>/dev/null || true)
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            coord_log "stopping leftover server (pid $pid, $(basename "$(dirname "$pidfile")"))"
            kill -TERM "$pid" 2>/dev/null || true
            sleep 0.5
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$dir"
}

coord_private_tmpdir() {
    COORD_RUN_DIR=$(mktemp -d /tmp/coord-run.XXXXXX)
    export TMPDIR="$COORD_RUN_DIR"
    trap 'coord_cleanup_tmpdir "$COORD_RUN_DIR"' EXIT
}
