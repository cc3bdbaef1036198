#!/usr/bin/env bash
# A large strong COPY: SIZE_MB of rows COPYed into a strong table through a follower of a 3-node
# `pgmix up`. Reports the time, the rate, each node process's peak memory (VmHWM) and whether
# every node holds every row. The effects go on the log in chunks (`cluster.strong_chunk_kib`,
# 1 MiB by default), so no node's peak should grow with SIZE_MB.
#
#   bash bench/strong_copy.sh
#   SIZE_MB=20 bash bench/strong_copy.sh
set -euo pipefail

SIZE_MB=${SIZE_MB:-100}
BASE=${BASE:-28432}

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
work=$(mktemp -d /tmp/pgmix-copy-bench.XXXXXX)
chmod 755 "$work"
cleanup() {
  [[ -n ${UP_PID:-} ]] && kill "$UP_PID" 2>/dev/null && wait "$UP_PID" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "bench: building pgmix (release)"
(cd "$root" && cargo build --release --quiet)

printf 'default = "strong"\n' >"$work/schema.toml"
start_up

export PGSSLMODE=disable PGPASSWORD=pgmix
node_sql() { psql -Atq -v ON_ERROR_STOP=1 -h 127.0.0.1 -p $((BASE + $1)) -U pgmix pgmix -c "$2"; }
leader=$(leader_node)
until [[ -n $leader ]]; do sleep 0.2; leader=$(leader_node); done
via=$(( leader % 3 ))   # a node index (0-based) that is not the leader's
until node_sql "$via" "CREATE TABLE big (id bigint PRIMARY KEY, body text NOT NULL)" 2>/dev/null; do sleep 0.5; done

rows=$(( SIZE_MB * 1024 * 1024 / 210 ))
echo "bench: writing $rows rows (${SIZE_MB} MB of COPY text)"
awk -v n="$rows" 'BEGIN { pad = sprintf("%200s", ""); gsub(/ /, "x", pad); for (i = 1; i <= n; i++) print i "\t" pad }' \
  >"$work/rows.tsv"
peak() { sed -n 's/^VmHWM:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$1/status"; }
pids=()
for i in 1 2 3; do pids+=("$(sed -n "s/^pgmix: node$i: node process \([0-9]*\).*/\1/p" "$work/up.log" | tail -1)"); done
before=(); for p in "${pids[@]}"; do before+=("$(peak "$p")"); done

echo "bench: COPY through node$((via + 1)) (the leader is node$leader)"
start=$(date +%s.%N)
node_sql "$via" "\\copy big FROM '$work/rows.tsv'"
secs=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN {printf "%.1f", e - s}')

echo
echo "strong COPY of ${SIZE_MB} MB ($rows rows) through a follower: ${secs}s ($(awk -v m="$SIZE_MB" -v s="$secs" 'BEGIN {printf "%.1f", m / s}') MB/s)"
printf '%-8s %-9s %14s %14s %10s\n' node role "peak before" "peak after" rows
for i in 1 2 3; do
  role=follower; [[ $i == "$leader" ]] && role=leader
  n=$(node_sql $((i - 1)) "SELECT count(*) FROM big")
  printf '%-8s %-9s %11s kB %11s kB %10s\n' "node$i" "$role" "${before[$((i - 1))]}" "$(peak "${pids[$((i - 1))]}")" "$n"
done
