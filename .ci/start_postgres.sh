#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on a free loopback port for the multi-worker tuning test and print
# "<url> <data folder>": .ci/run stops it on exit (`pg_ctl -D <data folder> stop`), so a second CI run on
# the same machine starts its own. Installs Debian's postgresql when the binaries are missing (CI is root).
set -euo pipefail
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
bin=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)")
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
data=$(mktemp -d /tmp/distillbench-pg.XXXXXX)
chown postgres "$data"
runuser -u postgres -- "$bin/initdb" -D "$data" --auth=trust -U postgres >/dev/null
runuser -u postgres -- "$bin/pg_ctl" -D "$data" -l "$data/log" -w \
  -o "-p $port -k $data -c listen_addresses=127.0.0.1" start >/dev/null
runuser -u postgres -- "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres distillbench
echo "postgresql://postgres@127.0.0.1:$port/distillbench $data"
