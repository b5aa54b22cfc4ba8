#!/usr/bin/env bash
# Write availability benchmarks (issue 14) on a cluster this script starts
# itself, in a temporary directory on free ports: etcd, two leader-eligible
# nodes A (`mode = master`, with data) and B (`mode = slave`, `candidate =
# true`), a plain follower C, and the gateway.
#
# 1. Write throughput and batch latency with `[replication] sync_replicas`
#    0 and 1, same run: `kamaitachi-bench --scenario ingest` through the
#    gateway (one writer, batches of $BATCH rows, $SECS s each).
# 2. Takeover time, $ROUNDS times, with `[etcd] ttl = $TTL`: a write loop
#    through the gateway (one 1-row batch every 50 ms); kill -9 of the
#    leader; the time from the kill to the first acknowledged write after
#    it. The killed node is restarted (it rejoins as a follower) before the
#    next round.
#
#   BIN=bin TTL=10 ROUNDS=5 SECS=15 BATCH=100 bench/write_ha.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
TTL=${TTL:-10}
ROUNDS=${ROUNDS:-5}
SECS=${SECS:-15}
BATCH=${BATCH:-100}
SUBJECTS=${SUBJECTS:-2000}
for b in kamaitachi-node kamaitachi-gateway kamaitachi-bench; do
  [ -x "$BIN/$b" ] || { echo "write_ha: missing $BIN/$b (make build)" >&2; exit 1; }
done
command -v etcd >/dev/null || { echo "write_ha: etcd missing: run scripts/install-deps.sh" >&2; exit 1; }

TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  [ -n "${ETCD_PID:-}" ] && kill -9 "$ETCD_PID" 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then echo "write_ha: kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_ms() { date +%s%3N; }
up() { curl -sf -m 1 "http://127.0.0.1:$1/health" >/dev/null 2>&1; }
wait_up() { for _ in $(seq 1 600); do up "$1" && return 0; sleep 0.1; done; echo "write_ha: :$1 not healthy" >&2; exit 1; }

head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$TMP/admin.token"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$TMP/cluster.secret"
chmod 600 "$TMP/admin.token" "$TMP/cluster.secret"
"$BIN/kamaitachi-node" gen-data --db "$TMP/seed.db" --subjects "$SUBJECTS" >/dev/null

ETCD_PORT=$(free_port); ETCD_PEER=$(free_port)
etcd --name wha --data-dir "$TMP/etcd" --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" \
  --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" --initial-cluster "wha=http://127.0.0.1:$ETCD_PEER" \
  >"$TMP/etcd.log" 2>&1 &
ETCD_PID=$!
for _ in $(seq 1 100); do curl -sf -m 1 "http://127.0.0.1:$ETCD_PORT/health" >/dev/null && break; sleep 0.1; done

declare -A PORT PID
# node NAME MODE CANDIDATE SYNC PREFIX: writes its config and starts it.
node() {
  local name=$1 mode=$2 candidate=$3 sync=$4 prefix=$5
  [ -n "${PORT[$name]:-}" ] || PORT[$name]=$(free_port)
  cat >"$TMP/$name.ini" <<EOF
[server]
port = ${PORT[$name]}
mode = $mode
bind = 127.0.0.1
service_name = kamaitachi-node
service_addr = localhost:${PORT[$name]}
[database]
path = $TMP/$name-$prefix.db
[cache]
max_bytes = 268435456
[etcd]
endpoints = 127.0.0.1:$ETCD_PORT
prefix = /$prefix
ttl = $TTL
[replication]
candidate = $candidate
sync_replicas = $sync
[security]
admin_token_file = $TMP/admin.token
cluster_secret_file = $TMP/cluster.secret
[log]
level = ${LOG:-warn}
EOF
  "$BIN/kamaitachi-node" -config "$TMP/$name.ini" >>"$TMP/$name.log" 2>&1 &
  PID[$name]=$!
  PIDS+=("$!")
}

gateway() {
  local prefix=$1
  GW_PORT=$(free_port)
  cat >"$TMP/gateway-$prefix.ini" <<EOF
[server]
port = $GW_PORT
mode = gateway
bind = 127.0.0.1
service_addr = localhost:$GW_PORT
[etcd]
endpoints = 127.0.0.1:$ETCD_PORT
prefix = /$prefix
[gateway]
health_interval_ms = 500
[security]
admin_token_file = $TMP/admin.token
cluster_secret_file = $TMP/cluster.secret
[log]
level = ${LOG:-warn}
EOF
  "$BIN/kamaitachi-gateway" -config "$TMP/gateway-$prefix.ini" >>"$TMP/gateway.log" 2>&1 &
  GW_PID=$!
  PIDS+=("$!")
  wait_up "$GW_PORT"
}

# cluster SYNC PREFIX: A (with data), B, C and a gateway on a fresh prefix.
cluster() {
  local sync=$1 prefix=$2
  cp "$TMP/seed.db" "$TMP/a-$prefix.db"
  node a master true "$sync" "$prefix"
  wait_up "${PORT[a]}"
  node b slave true "$sync" "$prefix"
  node c slave false "$sync" "$prefix"
  wait_up "${PORT[b]}"; wait_up "${PORT[c]}"
  gateway "$prefix"
  # Until the gateway routes writes to a leader.
  for _ in $(seq 1 200); do
    write_once && return 0
    sleep 0.1
  done
  echo "write_ha: no write accepted through the gateway" >&2; tail -5 "$TMP/a.log" >&2; exit 1
}

stop_cluster() {
  for p in "${PID[a]}" "${PID[b]}" "${PID[c]}" "$GW_PID"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PID[a]}" "${PID[b]}" "${PID[c]}" "$GW_PID"; do
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  unset 'PORT[a]' 'PORT[b]' 'PORT[c]'
}

N=0
write_once() {
  N=$((N + 1))
  local body
  body=$(printf '{"records":[{"subject":"33:%06d","name":"HA %d","report_date":1735603200,"end_date":"2024-12-31","year":"2024","period":"Q4","declare_date":"2025-03-30","values":{"net_profit":%d}}]}' $((990000 + N % 100)) "$N" "$N")
  [ "$(curl -s -m 3 -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer $(cat "$TMP/admin.token")" \
    --data "$body" "http://127.0.0.1:$GW_PORT/data/kamaitachi/api/data/v1/ingest")" = 200 ]
}

echo "== write throughput through the gateway (kamaitachi-bench --scenario ingest --batch $BATCH --duration $SECS, one writer)"
printf '%-14s %10s %12s %12s %12s %8s\n' sync_replicas rows/s batch_p50 batch_p99 batch_max errors
for sync in ${SYNCS:-0 1}; do
  cluster "$sync" "wha$sync"
  out=$("$BIN/kamaitachi-bench" --scenario ingest --batch "$BATCH" --duration "$SECS" --subjects "$SUBJECTS" \
    --target "http://127.0.0.1:$GW_PORT/data" --token-file "$TMP/admin.token" --json 2>/dev/null)
  python3 - "$sync" "$out" <<'EOF'
import json, sys
sync, r = sys.argv[1], json.loads(sys.argv[2])
def find(d, *names):
    for n in names:
        if isinstance(d, dict) and n in d: return d[n]
    return None
lat = find(r, "latency_ms", "batch_latency_ms", "latency") or {}
rows = find(r, "rows_per_sec", "rows_per_s", "rows/s", "qps")
errs = r.get("errors_total")
fmt = lambda v: f"{v:.2f}" if isinstance(v, (int, float)) else str(v)
if r.get("first_error"): print("first error:", r.get("first_error"), file=sys.stderr)
print(f"{sync:<14} {fmt(rows):>10} {fmt(lat.get('p50')):>12} {fmt(lat.get('p99')):>12} {fmt(lat.get('max')):>12} {fmt(errs):>8}")
EOF
  stop_cluster
done

echo
echo "== takeover: kill -9 of the leader under a write loop (ttl $TTL s, sync_replicas 1), $ROUNDS rounds"
cluster 1 what
for round in $(seq 1 "$ROUNDS"); do
  leader=""
  for n in a b; do
    curl -s -m 1 "http://127.0.0.1:${PORT[$n]}/health" | grep -q '"role":"master"' && leader=$n
  done
  [ -n "$leader" ] || { echo "write_ha: no leader found" >&2; exit 1; }
  kill -9 "${PID[$leader]}"
  killed=$(now_ms)
  ok_at=""
  deadline=$((killed + (TTL + 30) * 1000))
  while [ "$(now_ms)" -lt "$deadline" ]; do
    if write_once; then ok_at=$(now_ms); break; fi
    sleep 0.05
  done
  if [ -z "$ok_at" ]; then
    echo "round $round: no write accepted within $((TTL + 30)) s of killing $leader" >&2; exit 1
  fi
  printf 'round %d: killed %s (leader); writes accepted again after %.2f s\n' "$round" "$leader" "$(echo "($ok_at - $killed) / 1000" | bc -l)"
  # The killed node comes back and follows.
  if [ "$leader" = a ]; then mode=master; else mode=slave; fi
  node "$leader" "$mode" true 1 what
  wait_up "${PORT[$leader]}"
  sleep 2
done
stop_cluster
