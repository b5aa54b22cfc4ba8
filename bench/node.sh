#!/usr/bin/env bash
# Node-direct benchmarks (issue 2's targets), each against a node started
# for the run on a free loopback port over data/master.db:
#   hit      cache-hit snapshot, 1 subject, 2 ids        wrk -t1 -c50
#   miss     cache disabled, random subjects             wrk -t1 -c50
#   topic    pool of 5,000, top 100: cached bytes / computed from cached
#            series / cache disabled (SQLite only)        wrk -t1 -c1
#   rss      max_bytes 64 MiB, every subject touched; peak RSS vs bound
# DURATION (default 10s) sets each wrk run.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
BIN=${BIN:-target/release/kamaitachi-node}
DB=${DB:-data/master.db}
[ -x "$BIN" ] || { echo "bench: $BIN missing: run 'make build'" >&2; exit 1; }
[ -f "$DB" ] || { echo "bench: $DB missing: run 'make data'" >&2; exit 1; }
command -v wrk >/dev/null || { echo "bench: wrk missing: run scripts/install-deps.sh" >&2; exit 1; }

TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT

free_port() {
  local p
  for p in $(seq 18100 18999); do
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
  echo "bench: no free port" >&2; exit 1
}

# start_node NAME MAX_BYTES -> sets PORT and PID
start_node() {
  local name=$1 max=$2
  PORT=$(free_port)
  cat >"$TMP/$name.ini" <<EOF
[server]
port = $PORT
mode = master
[database]
path = $DB
[cache]
max_bytes = $max
EOF
  "$BIN" -config "$TMP/$name.ini" >"$TMP/$name.log" 2>&1 &
  PID=$!
  PIDS+=("$PID")
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "bench: node $name did not start:" >&2; cat "$TMP/$name.log" >&2; exit 1
}

ROWS=()
# run LABEL CONNS SCRIPT URL
run() {
  local label=$1 conns=$2 script=$3 url=$4 line
  line=$(wrk -t1 -c"$conns" -d"$DURATION" -s "bench/wrk/$script" "$url" 2>&1 | grep '^KMT' || true)
  [ -n "$line" ] || { echo "bench: wrk gave no result for $label" >&2; exit 1; }
  ROWS+=("$label|$conns|$line")
  echo "  $label: $line"
}

echo "node-direct benchmarks, $DURATION each, on $(nproc) cores"
start_node cached $((2 << 30))
URL="http://127.0.0.1:$PORT"
curl -s -XPOST "$URL/kamaitachi/api/data/v1/snapshot" \
  -d '{"ids":"operating_income","topic":"stock_a_listing_pool","limit":1}' >/dev/null  # load every series
run "hit: snapshot 1 subject, 2 ids" 50 snapshot_hot.lua "$URL"
run "topic top 100, cached bytes" 1 topic.lua "$URL"
run "topic top 100, from cached series" 1 topic_uncached.lua "$URL"
run "random subject, warm series" 50 snapshot_random.lua "$URL"
kill "$PID"

start_node nocache 0
URL="http://127.0.0.1:$PORT"
run "miss: random subject, cache off" 50 snapshot_random.lua "$URL"
run "period: random subject, cache off" 50 period.lua "$URL"
run "topic top 100, cache off (SQLite)" 1 topic_uncached.lua "$URL"
kill "$PID"

BOUND=$((64 << 20))
start_node rss $BOUND
URL="http://127.0.0.1:$PORT"
run "rss: random subjects, 64 MiB cache" 50 snapshot_random.lua "$URL"
run "rss: random periods, 64 MiB cache" 50 period.lua "$URL"
HWM_KB=$(awk '/VmHWM/ {print $2}' "/proc/$PID/status")
CACHE_BYTES=$(curl -s "$URL/kamaitachi/api/data/v1/stats" | sed -n 's/.*"bytes":\([0-9]*\).*/\1/p')
kill "$PID"

echo
printf '| %-38s | %5s | %10s | %8s | %8s | %6s |\n' scenario conns req/s p50_ms p99_ms errors
printf '|%s|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..40})" "-------" "------------" "----------" "----------" "--------"
for r in "${ROWS[@]}"; do
  IFS='|' read -r label conns line <<<"$r"
  rps=$(sed -n 's/.*rps=\([0-9.]*\).*/\1/p' <<<"$line")
  p50=$(sed -n 's/.*p50_ms=\([0-9.]*\).*/\1/p' <<<"$line")
  p99=$(sed -n 's/.*p99_ms=\([0-9.]*\).*/\1/p' <<<"$line")
  err=$(sed -n 's/.*errors=\([0-9]*\) non2xx=\([0-9]*\).*/\1+\2/p' <<<"$line")
  printf '| %-38s | %5s | %10s | %8s | %8s | %6s |\n' "$label" "$conns" "$rps" "$p50" "$p99" "$err"
done
echo
echo "rss: peak RSS $((HWM_KB / 1024)) MiB with max_bytes $((BOUND >> 20)) MiB (bound + 100 MiB = $(((BOUND >> 20) + 100)) MiB); cache bytes at end: $CACHE_BYTES"
