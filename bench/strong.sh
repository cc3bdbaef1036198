#!/usr/bin/env bash
# Strong writes: pgbench tpcb-like on strong tables, with clients spread over the 3 nodes of a
# `pgmix up`, in one run against
#   1. PostgreSQL with synchronous replication to 2 standbys
#      (synchronous_standby_names = 'ANY 1 (s1, s2)', synchronous_commit = remote_apply), and
#   2. one direct Postgres (the same primary with synchronous_commit = local for its sessions).
# Then it kills the leader's node process and reports the time from the kill to the first
# successful strong write through another node.
# Targets: TPS >= 1.0x sync-rep, failover within 2 s.
#
#   bash bench/strong.sh
#   DURATION=20 CLIENTS=12 SCALE=5 bash bench/strong.sh
set -euo pipefail

DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-6}
SCALE=${SCALE:-1}
BASE=${BASE:-27432}

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
work=$(mktemp -d /tmp/pgmix-strong-bench.XXXXXX)
chmod 755 "$work"
as_pg=()
[[ $(id -u) == 0 ]] && as_pg=(runuser -u postgres --) && chown postgres: "$work"
bindir=$(dirname "$(command -v initdb || ls -d /usr/lib/postgresql/*/bin/initdb | tail -1)")
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P0=$(free_port); P1=$(free_port); P2=$(free_port)

cleanup() {
  [[ -n ${UP_PID:-} ]] && kill "$UP_PID" 2>/dev/null && wait "$UP_PID" 2>/dev/null || true
  for d in primary s1 s2; do "${as_pg[@]}" "$bindir/pg_ctl" -D "$work/$d" -m immediate stop >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

echo "bench: building pgmix (release)"
(cd "$root" && cargo build --release --quiet)

echo "bench: starting a primary with 2 synchronous standbys (ports $P0, $P1, $P2)"
"${as_pg[@]}" "$bindir/initdb" -D "$work/primary" -U postgres --auth=trust --no-locale -E UTF8 >/dev/null
cat >>"$work/primary/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$work'
max_connections = 100
wal_level = replica
max_wal_senders = 10
synchronous_standby_names = 'ANY 1 (s1, s2)'
synchronous_commit = remote_apply
CONF
echo "host replication all 127.0.0.1/32 trust" >>"$work/primary/pg_hba.conf"
"${as_pg[@]}" "$bindir/pg_ctl" -D "$work/primary" -l "$work/primary.log" -o "-p $P0" -w start >/dev/null
for s in s1 s2; do
  port=$([[ $s == s1 ]] && echo "$P1" || echo "$P2")
  "${as_pg[@]}" pg_basebackup -h 127.0.0.1 -p "$P0" -U postgres -D "$work/$s" -X stream >/dev/null
  cat >>"$work/$s/postgresql.conf" <<CONF
primary_conninfo = 'host=127.0.0.1 port=$P0 user=postgres application_name=$s'
hot_standby = on
CONF
  "${as_pg[@]}" touch "$work/$s/standby.signal"
  "${as_pg[@]}" "$bindir/pg_ctl" -D "$work/$s" -l "$work/$s.log" -o "-p $port" -w start >/dev/null
done
until [[ $(psql -Atq -h 127.0.0.1 -p "$P0" -U postgres -c "SELECT count(*) FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum')") == 2 ]]; do
  sleep 0.2
done

printf 'default = "strong"\n' >"$work/schema.toml"
start_up

export PGSSLMODE=disable
echo "bench: pgbench -i -s $SCALE on the primary and through pgmix node1"
pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$P0" -U postgres postgres >/dev/null 2>&1
until PGPASSWORD=pgmix pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$BASE" -U pgmix pgmix >"$work/init.out" 2>&1; do
  echo "bench: pgbench -i through pgmix failed (no leader yet?), again"; sleep 1
done

tps_of() { sed -n 's/^tps = \([0-9.]*\).*/\1/p' | awk '{s += $1} END {print s}'; }
pg() { pgbench -n -h 127.0.0.1 -p "$P0" -U postgres -c "$CLIENTS" -j 2 -T "$DURATION" --max-tries=20 "$@" postgres 2>&1; }

echo "bench: sync-rep, $CLIENTS clients, ${DURATION}s"
s_tps=$(pg | tps_of)
echo "bench: direct, $CLIENTS clients, ${DURATION}s"
d_tps=$(PGOPTIONS='-c synchronous_commit=local' pg | tps_of)
echo "bench: pgmix, $CLIENTS clients over 3 nodes, ${DURATION}s"
per=$(( (CLIENTS + 2) / 3 )); pids=()
for i in 0 1 2; do
  PGPASSWORD=pgmix pgbench -n -h 127.0.0.1 -p $((BASE + i)) -U pgmix -c "$per" -j 1 -T "$DURATION" --max-tries=20 pgmix \
    >"$work/node$i.out" 2>&1 & pids+=($!)
done
wait "${pids[@]}"
m_tps=$(cat "$work"/node{0,1,2}.out | tps_of)
failed=$(cat "$work"/node{0,1,2}.out | sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' | awk '{s += $1} END {print s + 0}')
sums=$(PGPASSWORD=pgmix psql -Atq -h 127.0.0.1 -p "$BASE" -U pgmix pgmix -c \
  "SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT sum(delta) FROM pgbench_history)")

echo "bench: killing the leader's node process"
leader=$(leader_node)
pid=$(sed -n "s/^pgmix: node$leader: node process \([0-9]*\).*/\1/p" "$work/up.log" | tail -1)
other=$(( leader % 3 ))   # a node index (0-based) that is not the leader's
write() { PGPASSWORD=pgmix psql -Atq -h 127.0.0.1 -p $((BASE + other)) -U pgmix pgmix \
  -c "UPDATE pgbench_branches SET bbalance = bbalance WHERE bid = 1" >/dev/null 2>&1; }
write || true
start=$(date +%s.%N)
kill -KILL "$pid"
until write; do sleep 0.02; done
failover=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN {printf "%.2f", e - s}')

echo
echo "pgbench tpcb-like, scale $SCALE, $CLIENTS clients, ${DURATION}s (pgmix: clients spread over 3 nodes)"
printf '%-44s %10s\n' setup TPS
printf '%-44s %10.0f\n' "direct Postgres" "$d_tps"
printf '%-44s %10.0f\n' "Postgres, sync rep ANY 1 (s1, s2), remote_apply" "$s_tps"
printf '%-44s %10.0f\n' "pgmix, strong, 3 nodes" "$m_tps"
echo "pgmix / sync-rep: $(awk -v a="$m_tps" -v b="$s_tps" 'BEGIN {printf "%.2fx", a / b}') (target >= 1.0x)"
echo "pgmix / direct:   $(awk -v a="$m_tps" -v b="$d_tps" 'BEGIN {printf "%.2fx", a / b}')"
echo "pgmix failed transactions: $failed; sum(abalance) = sum(delta): $sums"
echo "failover: leader (node$leader) killed to first strong write through node$((other + 1)): ${failover}s (target <= 2 s)"
