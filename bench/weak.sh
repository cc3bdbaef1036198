#!/usr/bin/env bash
# Weak writes: pgbench updating a weak copy of pgbench_accounts, with clients spread over the 3
# nodes of a `pgmix up`, against one direct Postgres, in one run. Reports:
#   1. the TPS ratio at full load (the 3 nodes summed, against direct Postgres);
#   2. the replication lag under load at half of pgmix's full-load TPS (pgmix_weak_lag_seconds
#      sampled on every node for every peer: p50, p99, max);
#   3. the latency ratio with 1 client (node1 against direct).
# Targets: TPS >= 0.7x direct, lag p99 < 1 s, 1-client latency <= 1.3x direct.
#
#   bash bench/weak.sh
#   DURATION=20 CLIENTS=12 SCALE=5 bash bench/weak.sh
set -euo pipefail

DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-6}
SCALE=${SCALE:-2}
BASE=${BASE:-26432}

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
work=$(mktemp -d /tmp/pgmix-weak-bench.XXXXXX)
chmod 755 "$work"
as_pg=()
[[ $(id -u) == 0 ]] && as_pg=(runuser -u postgres --)
bindir=$(dirname "$(command -v initdb || ls -d /usr/lib/postgresql/*/bin/initdb | tail -1)")
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PG_PORT=$(free_port)

cleanup() {
  [[ -n ${UP_PID:-} ]] && kill "$UP_PID" 2>/dev/null && wait "$UP_PID" 2>/dev/null || true
  "${as_pg[@]}" "$bindir/pg_ctl" -D "$work/pgdata" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "bench: building pgmix (release)"
(cd "$root" && cargo build --release --quiet)

echo "bench: starting direct Postgres on port $PG_PORT"
[[ $(id -u) == 0 ]] && chown postgres: "$work"
"${as_pg[@]}" "$bindir/initdb" -D "$work/pgdata" -U postgres --auth=trust --no-locale -E UTF8 -N >/dev/null
cat >>"$work/pgdata/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$work'
max_connections = 100
CONF
"${as_pg[@]}" "$bindir/pg_ctl" -D "$work/pgdata" -l "$work/pg.log" -o "-p $PG_PORT" -w start >/dev/null

cat >"$work/schema.toml" <<'CONF'
[tables.weak_accounts]
consistency = "weak"
CONF
start_up

rows=$((SCALE * 100000))
# Filled as it is created, before capture is installed: DDL goes on the log and runs on every
# node, so each node starts from the same rows without shipping them (the bulk load of a new
# cluster).
fill="CREATE TABLE weak_accounts AS SELECT g AS aid, (g - 1) / 100000 + 1 AS bid, 0 AS abalance, ''::char(84) AS filler
      FROM generate_series(1, $rows) g;
      ALTER TABLE weak_accounts ADD PRIMARY KEY (aid);"
export PGSSLMODE=disable
echo "bench: $rows rows on direct Postgres and on each node"
psql -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -c "$fill" >/dev/null
until PGPASSWORD=pgmix psql -q -h 127.0.0.1 -p "$BASE" -U pgmix -d pgmix -c "$fill" >/dev/null; do
  echo "bench: creating the table through node1 failed (no leader yet?), again"; sleep 1
done
for i in 0 1 2; do
  until [[ $(PGPASSWORD=pgmix psql -Atq -h 127.0.0.1 -p $((BASE + i)) -U pgmix -d pgmix \
    -c "SELECT count(*) FROM pgmix.tables WHERE tbl = '\"public\".\"weak_accounts\"'") == 1 ]]; do sleep 0.2; done
done

cat >"$work/update.sql" <<SQL
\set aid random(1, $rows)
\set delta random(-5000, 5000)
UPDATE weak_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SQL

tps_of() { sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1; }
lat_of() { sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' | head -1; }
direct() { pgbench -n -M prepared -f "$work/update.sql" -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@" postgres 2>&1; }
on_node() { local i=$1; shift; PGPASSWORD=pgmix pgbench -n -M prepared -f "$work/update.sql" -h 127.0.0.1 -p $((BASE + i)) -U pgmix "$@" pgmix 2>&1; }

# Clients spread over the nodes: one pgbench per node, run together, TPS summed.
spread() {
  local per=$(( (CLIENTS + 2) / 3 )) pids=() i
  for i in 0 1 2; do on_node "$i" -c "$per" -j 1 "$@" >"$work/node$i.out" & pids+=($!); done
  wait "${pids[@]}"
  cat "$work"/node{0,1,2}.out | tps_of_all
}
tps_of_all() { sed -n 's/^tps = \([0-9.]*\).*/\1/p' | awk '{s += $1} END {print s}'; }

echo "bench: full load, $CLIENTS clients, ${DURATION}s"
d_tps=$(direct -c "$CLIENTS" -j 2 -T "$DURATION" | tps_of)
echo "bench: direct $d_tps tps"
m_tps=$(spread -T "$DURATION")
echo "bench: pgmix (3 nodes) $m_tps tps"

lag_samples() {
  while kill -0 "$1" 2>/dev/null; do
    for i in 0 1 2; do
      curl -s "http://127.0.0.1:$((BASE + 1000 + i))/metrics" 2>/dev/null | sed -n 's/^pgmix_weak_lag_seconds{.*} \([0-9.]*\)$/\1/p'
    done
    sleep 0.2
  done
}
half=$(awk -v t="$m_tps" 'BEGIN {r = t / 2 / 3; print (r < 1 ? 1 : int(r))}')
echo "bench: half load, $half tps per node, ${DURATION}s, sampling the lag"
( spread -T "$DURATION" -R "$half" >"$work/half.tps" ) &
load=$!
lag_samples "$load" >"$work/lag.txt"
wait "$load" || true
read -r p50 p99 max < <(sort -g "$work/lag.txt" | awk '{a[NR]=$1} END {if (NR == 0) {print "n/a n/a n/a"; exit}
  i50 = int(NR * 0.50); if (i50 < 1) i50 = 1; i99 = int(NR * 0.99); if (i99 < 1) i99 = 1; print a[i50], a[i99], a[NR]}')

echo "bench: 1 client, ${DURATION}s"
d_lat=$(direct -c 1 -T "$DURATION" | lat_of)
m_lat=$(on_node 0 -c 1 -T "$DURATION" | lat_of)

echo
echo "weak update on a weak copy of pgbench_accounts ($rows rows), $CLIENTS clients"
printf '%-34s %12s %12s %10s %s\n' measure direct pgmix ratio target
printf '%-34s %12.0f %12.0f %9.2fx %s\n' "TPS, full load (3 nodes summed)" "$d_tps" "$m_tps" "$(awk -v a="$m_tps" -v b="$d_tps" 'BEGIN {print a / b}')" ">= 0.7x"
printf '%-34s %12.3f %12.3f %9.2fx %s\n' "latency, 1 client (ms)" "$d_lat" "$m_lat" "$(awk -v a="$m_lat" -v b="$d_lat" 'BEGIN {print a / b}')" "<= 1.3x"
echo "replication lag at half load ($(cat "$work/half.tps") tps): p50 ${p50}s, p99 ${p99}s, max ${max}s ($(wc -l <"$work/lag.txt") samples; target p99 < 1 s)"
echo "bench: checking that the nodes converged"
sleep 2
"$root/target/release/pgmix" verify --data-dir "$work/up" | sed 's/^/bench: verify: /'
