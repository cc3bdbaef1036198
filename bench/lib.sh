# Shared by the benchmark scripts: source it after setting `root` (the checkout) and `work` (a
# scratch directory with `schema.toml` in it).

# Starts a 3-node `pgmix up` on ports BASE..BASE+2 with $work/schema.toml, and waits until it is
# ready; its output goes to $work/up.log and its pid to UP_PID.
start_up() {
  echo "bench: starting a 3-node pgmix up (ports $BASE-$((BASE + 2)))"
  "$root/target/release/pgmix" up --nodes 3 --port "$BASE" --data-dir "$work/up" --schema "$work/schema.toml" \
    --status-every 0 >"$work/up.log" 2>&1 &
  UP_PID=$!
  for _ in $(seq 1 240); do
    grep -q "cluster ready" "$work/up.log" && break
    kill -0 "$UP_PID" 2>/dev/null || { cat "$work/up.log"; echo "bench: pgmix up failed"; exit 1; }
    sleep 0.5
  done
  grep -q "cluster ready" "$work/up.log" || { cat "$work/up.log"; echo "bench: pgmix up did not get ready"; exit 1; }
}

# The node (1 to 3) that leads now, from the nodes' metrics.
leader_node() {
  local i
  for i in 1 2 3; do
    curl -s "http://127.0.0.1:$((BASE + 999 + i))/metrics" | grep -q "pgmix_raft_is_leader{node=\"node$i\"} 1" && echo "$i"
  done
  return 0
}
