#!/usr/bin/env bash
# Cold path benchmarks (issue 13): a peer build and this build, side by side
# in one run, each on its own copy of the same database, on its own port.
#
#   guide    the guide's test (kamaitachi-bench --requests 5000
#            --concurrency 100) right after a cache reset (cold), then the
#            same command again (warm); cold/warm ratio per build
#   warm     the warm paths, wrk -t1 -c50 for DURATION each: a cache hit
#            (snapshot_hot.lua), random subjects with every series cached
#            (snapshot_random.lua), and a bare responder (nginx answering
#            `return 200` with the hit's body) as the ceiling
#   topic    (BIG_DB only) the cold topic question: top 100 of
#            stock_a_listing_pool by operating_income right after a cache
#            reset; wall time and the node's CPU time (user+sys from
#            /proc), then a new as-of date from the cached series
#
# BIN       this build            (default target/release/kamaitachi-node)
# PEER_BIN  the peer build        (required: e.g. the build of the commit
#                                  before issue 13, copied aside)
# BENCH     kamaitachi-bench      (default target/release/kamaitachi-bench)
# DB        a gen-data database   (default data/master.db)
# BIG_DB    optional: e.g. gen-data --subjects 20000 --years 1995..2024
# READERS   [database] readers for both nodes (default 2)
# ROUNDS    repetitions, alternating the builds (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/kamaitachi-node}
BENCH=${BENCH:-target/release/kamaitachi-bench}
DB=${DB:-data/master.db}
READERS=${READERS:-2}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
: "${PEER_BIN:?set PEER_BIN to the peer build of kamaitachi-node}"
for f in "$BIN" "$PEER_BIN" "$BENCH"; do [ -x "$f" ] || { echo "cold: $f missing" >&2; exit 1; }; done
[ -f "$DB" ] || { echo "cold: $DB missing: run 'make data'" >&2; exit 1; }

TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
echo "cold-path-bench-token-0123456789" >"$TMP/token"
chmod 600 "$TMP/token"

free_port() {
  local p
  for p in $(seq 18400 18999); do
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
  echo "cold: no free port" >&2; exit 1
}

# start NAME BIN DB -> PORT, PID
start() {
  local name=$1 bin=$2 db=$3
  rm -f "$TMP/$name.db" "$TMP/$name.db-wal" "$TMP/$name.db-shm"   # no stale WAL from a previous copy
  cp "$db" "$TMP/$name.db"
  PORT=$(free_port)
  cat >"$TMP/$name.ini" <<EOF
[server]
port = $PORT
mode = master
[database]
path = $TMP/$name.db
readers = $READERS
[cache]
max_bytes = 4294967296
[security]
admin_token_file = $TMP/token
EOF
  "$bin" -config "$TMP/$name.ini" >"$TMP/$name.log" 2>&1 &
  PID=$!
  PIDS+=("$PID")
  for _ in $(seq 1 1200); do
    curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "cold: node $name did not start:" >&2; cat "$TMP/$name.log" >&2; exit 1
}

reset() {
  curl -sf -XPOST -H "Authorization: Bearer $(cat "$TMP/token")" \
    "http://127.0.0.1:$1/kamaitachi/api/data/v1/cache/reset" >/dev/null
}

qps() { "$BENCH" --requests 5000 --concurrency 100 --target "http://127.0.0.1:$1" --json | sed 's/.*"qps":\([0-9.]*\).*/\1/'; }

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

echo "cold path, $(nproc) cores, readers = $READERS, load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "db $DB: $(stat -c %s "$DB") bytes"
start peer "$PEER_BIN" "$DB"; PEER_PORT=$PORT
start this "$BIN" "$DB"; THIS_PORT=$PORT
echo "db after this build's open: $(stat -c %s "$TMP/this.db") bytes (peer's copy: $(stat -c %s "$TMP/peer.db"))"
echo
echo "guide test: kamaitachi-bench --requests 5000 --concurrency 100, cold (after reset) then warm"
for r in $(seq 1 "$ROUNDS"); do
  for side in peer this; do
    port=$PEER_PORT; [ $side = this ] && port=$THIS_PORT
    reset "$port"
    cold=$(qps "$port")
    warm=$(qps "$port")
    printf '  round %d %-4s cold %8.0f qps  warm %8.0f qps  cold/warm %.2f\n' \
      "$r" "$side" "$cold" "$warm" "$(echo "$cold / $warm" | bc -l)"
  done
done

echo
echo "warm paths: wrk -t1 -c50 -d$DURATION (every series cached first)"
topic='{"ids":"operating_income","topic":"stock_a_listing_pool","limit":1}'
for port in $PEER_PORT $THIS_PORT; do
  curl -s -XPOST "http://127.0.0.1:$port/kamaitachi/api/data/v1/snapshot" -d "$topic" >/dev/null
done
HIT_BODY=$(curl -s -XPOST "http://127.0.0.1:$THIS_PORT/kamaitachi/api/data/v1/snapshot" \
  -d '{"ids":"operating_income,net_profit","subjects":"33:000001"}')
BARE=""
if command -v nginx >/dev/null; then
  # The bare responder: nginx answering every request with the hit's body.
  BARE=$(free_port)
  mkdir -p "$TMP/nginx"
  printf '%s' "$HIT_BODY" >"$TMP/nginx/body.json"
  cat >"$TMP/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $TMP/nginx;
  server {
    listen 127.0.0.1:$BARE;
    location / { default_type application/json; return 200 '$HIT_BODY'; }
  }
}
EOF
  nginx -c "$TMP/nginx.conf" -p "$TMP/nginx" >/dev/null 2>&1 &
  PIDS+=("$!")
  sleep 0.5
fi
wrk_rps() {
  wrk -t1 -c50 -d"$DURATION" -s "bench/wrk/$1" "http://127.0.0.1:$2" 2>&1 | sed -n 's/.*rps=\([0-9.]*\).*/\1/p'
}
for r in $(seq 1 "$ROUNDS"); do
  line="  round $r"
  for side in peer this; do
    port=$PEER_PORT; [ $side = this ] && port=$THIS_PORT
    line="$line  $side: hit $(wrk_rps snapshot_hot.lua "$port") random-warm $(wrk_rps snapshot_random.lua "$port")"
  done
  [ -z "$BARE" ] || line="$line  bare: $(wrk_rps snapshot_hot.lua "$BARE")"
  echo "$line"
done
kill "${PIDS[@]}" 2>/dev/null || true
PIDS=()

[ -n "${BIG_DB:-}" ] || exit 0
echo
echo "cold topic question on $BIG_DB ($(stat -c %s "$BIG_DB") bytes)"
start peer "$PEER_BIN" "$BIG_DB"; PEER_PORT=$PORT; PEER_PID=$PID
start this "$BIN" "$BIG_DB"; THIS_PORT=$PORT; THIS_PID=$PID
grep -h "subject_blob" "$TMP/this.log" | sed 's/^/  this build at open: /' || true
echo "  db after this build's open: $(stat -c %s "$TMP/this.db") bytes"
Q='{"ids":"operating_income","topic":"stock_a_listing_pool","field":"operating_income","limit":100}'
Q2='{"ids":"operating_income","topic":"stock_a_listing_pool","field":"operating_income","limit":100,"timestamp":1500000000}'
for r in $(seq 1 "$ROUNDS"); do
  for side in peer this; do
    port=$PEER_PORT pid=$PEER_PID; [ $side = this ] && port=$THIS_PORT pid=$THIS_PID
    reset "$port"
    sleep 1
    t0=$(cpu_ticks "$pid")
    wall=$(curl -s -o "$TMP/$side.json" -w '%{time_total}' -XPOST "http://127.0.0.1:$port/kamaitachi/api/data/v1/snapshot" -d "$Q")
    t1=$(cpu_ticks "$pid")
    asof=$(curl -s -o /dev/null -w '%{time_total}' -XPOST "http://127.0.0.1:$port/kamaitachi/api/data/v1/snapshot" -d "$Q2")
    printf '  round %d %-4s cold %6.3f s (node CPU %5.2f s)  new as-of from cached series %6.3f s\n' \
      "$r" "$side" "$wall" "$(echo "($t1 - $t0) / $(getconf CLK_TCK)" | bc -l)" "$asof"
  done
done
cmp -s "$TMP/peer.json" "$TMP/this.json" && echo "  same answer from both builds" || echo "  ANSWERS DIFFER"
