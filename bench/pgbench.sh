#!/usr/bin/env bash
# pgbench through pgmix against direct Postgres (and PgBouncer, where installed), in one run.
#
# Starts its own Postgres and one pgmix node (release build), then runs select-only and
# simple-update with -M prepared, alternating the targets round by round so that machine noise
# hits all of them alike. Prints the median TPS of each target and its ratio to direct Postgres,
# then each proxy's own CPU time per transaction (from /proc), which compares pgmix with PgBouncer
# even when the machine's noise moves tps by more than their difference.
#
#   bash bench/pgbench.sh                      # defaults below
#   DURATION=20 ROUNDS=5 CLIENTS=8 bash bench/pgbench.sh
#   CLUSTER=1 bash bench/pgbench.sh            # pgmix as a 1-node cluster: pgbench's tables strong
#
# With CLUSTER=1 the node is a cluster of one with no schema file, so every table is strong:
# select-only takes the strong read path (the read barrier, which a lone leader confirms at
# once). Only select-only runs then: strong tables refuse writes that do not come through pgmix,
# so direct Postgres and PgBouncer could not run simple-update on them.
set -euo pipefail

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
SCALE=${SCALE:-10}
MODE=${MODE:-prepared}
CLUSTER=${CLUSTER:-0}
scripts=(select-only simple-update)
[[ $CLUSTER == 1 ]] && scripts=(select-only)

root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/pgmix-bench.XXXXXX)
chmod 755 "$work"
as_pg=()
[[ $(id -u) == 0 ]] && as_pg=(runuser -u postgres --)
bindir=$(dirname "$(command -v initdb || ls -d /usr/lib/postgresql/*/bin/initdb | tail -1)")

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PG_PORT=$(free_port); MIX_PORT=$(free_port); BOUNCER_PORT=$(free_port)

cleanup() {
  [[ -n ${MIX_PID:-} ]] && kill "$MIX_PID" 2>/dev/null || true
  [[ -n ${BOUNCER_PID:-} ]] && kill "$BOUNCER_PID" 2>/dev/null || true
  "${as_pg[@]}" "$bindir/pg_ctl" -D "$work/pgdata" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "bench: building pgmix (release)"
(cd "$root" && cargo build --release --quiet)

echo "bench: starting Postgres on port $PG_PORT"
[[ $(id -u) == 0 ]] && chown postgres: "$work"
"${as_pg[@]}" "$bindir/initdb" -D "$work/pgdata" -U postgres --auth=trust --no-locale -E UTF8 -N >/dev/null
cat >>"$work/pgdata/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$work'
max_connections = 100
max_prepared_transactions = 16
CONF
"${as_pg[@]}" "$bindir/pg_ctl" -D "$work/pgdata" -l "$work/pg.log" -o "-p $PG_PORT" -w start >/dev/null

cat >"$work/proxy.toml" <<CONF
node_name = "bench"
listen = "127.0.0.1:$MIX_PORT"
[backend]
host = "$work"
port = $PG_PORT
user = "postgres"
[[users]]
name = "postgres"
password = "bench"
CONF
if [[ $CLUSTER == 1 ]]; then
  "$root/target/release/pgmix" certs --dir "$work/certs" --nodes bench >/dev/null
  cat >>"$work/proxy.toml" <<CONF
[cluster]
id = "bench"
node_id = 1
listen = "127.0.0.1:$(free_port)"
ca = "$work/certs/ca.crt"
cert = "$work/certs/bench.crt"
key = "$work/certs/bench.key"
CONF
fi
echo "bench: starting pgmix on port $MIX_PORT"
env PGMIX_LOG=warn ${PGMIX_ENV:-} "$root/target/release/pgmix" serve --config "$work/proxy.toml" &
MIX_PID=$!

targets=(direct pgmix)
if command -v pgbouncer >/dev/null; then
  cat >"$work/pgbouncer.ini" <<CONF
[databases]
postgres = host=$work port=$PG_PORT user=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = trust
auth_file = $work/userlist.txt
pool_mode = session
max_client_conn = 100
default_pool_size = 20
logfile = $work/pgbouncer.log
CONF
  echo '"postgres" "bench"' >"$work/userlist.txt"
  chmod 644 "$work"/pgbouncer.ini "$work"/userlist.txt
  "${as_pg[@]}" pgbouncer -q "$work/pgbouncer.ini" &
  BOUNCER_PID=$!
  targets+=(pgbouncer)
  sleep 0.5
  # Under runuser the PID above is runuser's; the CPU to measure is pgbouncer's own.
  for pid in $(pgrep -f "$work/pgbouncer.ini"); do
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == pgbouncer ]] && BOUNCER_CPU_PID=$pid
  done
else
  echo "bench: pgbouncer not installed; comparing pgmix with direct Postgres only"
fi
sleep 1

# CPU time (user + system, in clock ticks) a proxy has used so far; empty for direct.
cpu_pid_of() { case $1 in pgmix) echo "$MIX_PID" ;; pgbouncer) echo "${BOUNCER_CPU_PID:-}" ;; esac; }
cpu_ticks() { [[ -n $1 ]] && awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

port_of() { case $1 in direct) echo "$PG_PORT" ;; pgmix) echo "$MIX_PORT" ;; pgbouncer) echo "$BOUNCER_PORT" ;; esac; }
export PGPASSWORD=bench PGSSLMODE=disable
echo "bench: pgbench -i -s $SCALE"
# In a cluster the tables are made through pgmix, so they get strong capture.
init_port=$PG_PORT; [[ $CLUSTER == 1 ]] && init_port=$MIX_PORT
for try in 1 2 3 4 5; do
  pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$init_port" -U postgres postgres >"$work/init.log" 2>&1 && break
  [[ $try == 5 ]] && { cat "$work/init.log"; echo "bench: pgbench -i failed"; exit 1; }
  sleep 2
done

declare -A results cpu
for script in "${scripts[@]}"; do
  flag=-S; [[ $script == simple-update ]] && flag=-N
  for round in $(seq 1 "$ROUNDS"); do
    for t in "${targets[@]}"; do
      cpu_pid=$(cpu_pid_of "$t")
      before=$(cpu_ticks "$cpu_pid" || true)
      out=$(pgbench -n "$flag" -M "$MODE" -c "$CLIENTS" -j "$THREADS" -T "$DURATION" -h 127.0.0.1 -p "$(port_of "$t")" -U postgres postgres 2>&1)
      tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1)
      failed=$(echo "$out" | sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p')
      [[ -z $tps ]] && { echo "$out"; echo "bench: pgbench against $t failed"; exit 1; }
      echo "bench: $script round $round/$ROUNDS $t: $tps tps (failed: ${failed:-0})"
      results[$script,$t]+="$tps "
      after=$(cpu_ticks "$cpu_pid" || true)
      txns=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
      if [[ -n $before && -n $after && ${txns:-0} -gt 0 ]]; then
        cpu[$script,$t]+="$(awk -v b="$before" -v a="$after" -v n="$txns" -v hz="$HZ" 'BEGIN {print (a - b) / hz * 1e6 / n}') "
      fi
    done
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
echo
[[ $CLUSTER == 1 ]] && echo "pgmix as a 1-node cluster: pgbench's tables are strong"
echo "pgbench -M $MODE, $CLIENTS clients, $THREADS threads, ${DURATION}s x $ROUNDS rounds, scale $SCALE (median tps)"
printf '%-14s' script; for t in "${targets[@]}"; do printf '%14s' "$t"; done; for t in "${targets[@]:1}"; do printf '%18s' "$t/direct"; done; echo
for script in "${scripts[@]}"; do
  direct=$(echo "${results[$script,direct]}" | median)
  printf '%-14s' "$script"
  for t in "${targets[@]}"; do printf '%14.0f' "$(echo "${results[$script,$t]}" | median)"; done
  for t in "${targets[@]:1}"; do
    printf '%17.2fx' "$(echo "$(echo "${results[$script,$t]}" | median) $direct" | awk '{print $1/$2}')"
  done
  echo
done
echo
echo "proxy CPU per transaction (user + system, median µs): the proxy's own cost, steadier than tps on a noisy machine"
for script in "${scripts[@]}"; do
  printf '%-14s' "$script"
  for t in "${targets[@]:1}"; do
    [[ -n ${cpu[$script,$t]:-} ]] && printf '%14s %6.2f µs' "$t" "$(echo "${cpu[$script,$t]}" | median)"
  done
  echo
done
