#!/usr/bin/env bash
# A throw-away PostgreSQL server on loopback for the multi-machine storage test (and for trying a cluster
# setup on one machine). Installs PostgreSQL from Debian's packages when it is missing.
#
#   eval "$(scripts/start_test_postgres.sh)"      # starts it; exports TGBENCH_TEST_POSTGRES=postgresql://...
#   scripts/start_test_postgres.sh stop           # stops it and deletes its data ($TGBENCH_TEST_POSTGRES_DATA)
#
# Only the export lines go to stdout; progress goes to stderr. PostgreSQL refuses to run as root, so as root
# the server runs as the `postgres` system user (created if missing).
set -euo pipefail

as_server_user() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

if [ "${1:-start}" = stop ]; then
    data="${TGBENCH_TEST_POSTGRES_DATA:?TGBENCH_TEST_POSTGRES_DATA is not set (nothing started by this script)}"
    bin="$(cat "$data/.bindir")"
    as_server_user "$bin/pg_ctl" -D "$data/db" -m fast -w stop >&2 || true
    rm -rf "$data"
    exit 0
fi

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    echo "installing PostgreSQL from the Debian packages ..." >&2
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >&2
fi
bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    useradd --system --home-dir /nonexistent --shell /usr/sbin/nologin postgres
fi

data="$(mktemp -d /tmp/tgbench-postgres.XXXXXX)"
echo "$bin" > "$data/.bindir"
if [ "$(id -u)" = 0 ]; then chown postgres "$data"; fi
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"

as_server_user "$bin/initdb" -D "$data/db" -U tgbench --auth=trust -E UTF8 --no-sync >"$data/initdb.log" 2>&1 ||
    { cat "$data/initdb.log" >&2; exit 1; }
as_server_user "$bin/pg_ctl" -D "$data/db" -l "$data/db/server.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $data -c fsync=off" start >&2
as_server_user "$bin/createdb" -h 127.0.0.1 -p "$port" -U tgbench tgbench_test >&2

echo "export TGBENCH_TEST_POSTGRES=postgresql://tgbench@127.0.0.1:$port/tgbench_test"
echo "export TGBENCH_TEST_POSTGRES_DATA=$data"
