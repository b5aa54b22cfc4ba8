#!/usr/bin/env bash
# `make bench`: the same wrk scripts and settings against (a) a node
# directly, (b) the gateway, (c) a second gateway with `read_fast_path =
# false` (every request through pingora's own proxy), (d) an nginx reverse
# proxy to the same nodes (keepalive upstream, one worker per core); (c) and
# (d) are started for the run on free ports. Printed side by side; then the
# original guide's kamaitachi-bench run through the gateway. Needs the
# cluster running (`make cluster`).
#   DURATION=10s CONNS=50 bench/compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNS=${CONNS:-50}
MASTER_PORT=${MASTER_PORT:-8080}
SLAVE1_PORT=${SLAVE1_PORT:-8081}
SLAVE2_PORT=${SLAVE2_PORT:-8082}
GATEWAY_PORT=${GATEWAY_PORT:-9000}
SCENARIOS=${SCENARIOS:-"snapshot_hot snapshot_random period"}

for p in "$MASTER_PORT" "$GATEWAY_PORT"; do
  curl -sf -m 2 "http://127.0.0.1:$p/health" >/dev/null || {
    echo "bench: nothing healthy on :$p: start the cluster first (make cluster)" >&2; exit 1; }
done
command -v wrk >/dev/null || { echo "bench: wrk missing: run scripts/install-deps.sh" >&2; exit 1; }
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || { echo "bench: nginx missing: run scripts/install-deps.sh" >&2; exit 1; }

TMP=$(mktemp -d)
PINGORA_PID=
cleanup() {
  [ -f "$TMP/nginx.pid" ] && kill "$(cat "$TMP/nginx.pid")" 2>/dev/null
  [ -n "$PINGORA_PID" ] && kill "$PINGORA_PID" 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT
free_port() { for p in $(seq "$1" "$(($1 + 899))"); do (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }; done; }
NGINX_PORT=$(free_port 19100)
cat >"$TMP/nginx.conf" <<EOF
worker_processes $(nproc);
pid $TMP/nginx.pid;
error_log $TMP/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream kamaitachi {
    server 127.0.0.1:$MASTER_PORT;
    server 127.0.0.1:$SLAVE1_PORT;
    server 127.0.0.1:$SLAVE2_PORT;
    keepalive 256;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location /data/ {
      proxy_pass http://kamaitachi/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
"$NGINX" -c "$TMP/nginx.conf" -p "$TMP" -e "$TMP/error.log"
for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$NGINX_PORT") 2>/dev/null && break; sleep 0.1; done

# The peer gateway: the running gateway's config, another port, pingora only.
TARGETS="direct gateway nginx"
GATEWAY_CONF=${GATEWAY_CONF:-run/conf/gateway.ini}
if [ -f "$GATEWAY_CONF" ] && [ -x bin/kamaitachi-gateway ]; then
  PINGORA_PORT=$(free_port 19200)
  sed -e "s/^port = [0-9]*/port = $PINGORA_PORT/" -e "s/^read_fast_path = .*/read_fast_path = false/" \
    "$GATEWAY_CONF" >"$TMP/pingora.ini"
  grep -q '^read_fast_path' "$TMP/pingora.ini" || sed -i 's/^\[gateway\]/[gateway]\nread_fast_path = false/' "$TMP/pingora.ini"
  bin/kamaitachi-gateway -config "$TMP/pingora.ini" 2>"$TMP/pingora.log" &
  PINGORA_PID=$!
  want=$(curl -s -m 2 "http://127.0.0.1:$GATEWAY_PORT/health" | grep -o '"healthy_nodes":[0-9]*')
  for _ in $(seq 1 100); do
    [ "$(curl -s -m 1 "http://127.0.0.1:$PINGORA_PORT/health" | grep -o '"healthy_nodes":[0-9]*')" = "$want" ] && break
    sleep 0.1
  done
  TARGETS="direct gateway pingora nginx"
fi

declare -A RPS P50 P99 BAD
run() { # run KEY URL SCRIPT
  local line
  line=$(wrk -t1 -c"$CONNS" -d"$DURATION" -s "bench/wrk/$3.lua" "$2" 2>&1 | grep '^KMT' || true)
  [ -n "$line" ] || { echo "bench: wrk gave no result for $1" >&2; exit 1; }
  RPS[$1]=$(sed -n 's/.*rps=\([0-9.]*\).*/\1/p' <<<"$line")
  P50[$1]=$(sed -n 's/.*p50_ms=\([0-9.]*\).*/\1/p' <<<"$line")
  P99[$1]=$(sed -n 's/.*p99_ms=\([0-9.]*\).*/\1/p' <<<"$line")
  BAD[$1]=$(sed -n 's/.*errors=\([0-9]*\) non2xx=\([0-9]*\).*/\1+\2/p' <<<"$line")
}

echo "wrk -t1 -c$CONNS -d$DURATION on $(nproc) cores; node :$MASTER_PORT, gateway :$GATEWAY_PORT, pingora-only gateway :${PINGORA_PORT:--}, nginx :$NGINX_PORT"
for s in $SCENARIOS; do
  run "$s/direct" "http://127.0.0.1:$MASTER_PORT" "$s"
  run "$s/gateway" "http://127.0.0.1:$GATEWAY_PORT/data" "$s"
  [ -n "${PINGORA_PORT:-}" ] && run "$s/pingora" "http://127.0.0.1:$PINGORA_PORT/data" "$s"
  run "$s/nginx" "http://127.0.0.1:$NGINX_PORT/data" "$s"
done

echo
printf '| %-16s | %-8s | %10s | %8s | %8s | %7s | %8s | %8s |\n' scenario target req/s p50_ms p99_ms errors gw/nginx gw/direct
printf '|%s|%s|%s|%s|%s|%s|%s|%s|\n' ------------------ ---------- ------------ ---------- ---------- --------- ---------- ----------
for s in $SCENARIOS; do
  for t in $TARGETS; do
    k="$s/$t"; r1=""; r2=""
    if [ "$t" = gateway ] || [ "$t" = pingora ]; then
      r1=$(awk -v a="${RPS[$k]}" -v b="${RPS[$s/nginx]}" 'BEGIN { printf "%.2fx", a / b }')
      r2=$(awk -v a="${RPS[$k]}" -v b="${RPS[$s/direct]}" 'BEGIN { printf "%.2fx", a / b }')
    fi
    printf '| %-16s | %-8s | %10s | %8s | %8s | %7s | %8s | %8s |\n' "$s" "$t" "${RPS[$k]}" "${P50[$k]}" "${P99[$k]}" "${BAD[$k]}" "$r1" "$r2"
  done
done

BENCH=${BENCH:-bin/kamaitachi-bench}
if [ -x "$BENCH" ]; then
  echo
  echo "kamaitachi-bench --requests 5000 --concurrency 100 --target http://localhost:$GATEWAY_PORT/data"
  "$BENCH" --requests 5000 --concurrency 100 --target "http://localhost:$GATEWAY_PORT/data"

  # HTML reports: the same kamaitachi-bench run against each target, one
  # page each, and a page comparing them (bench/reports/, REPORTS=dir).
  REPORTS=${REPORTS:-bench/reports}
  mkdir -p "$REPORTS"
  jsons=()
  for t in $TARGETS; do
    case $t in
      direct) url="http://127.0.0.1:$MASTER_PORT" ;;
      gateway) url="http://127.0.0.1:$GATEWAY_PORT/data" ;;
      pingora) url="http://127.0.0.1:${PINGORA_PORT:-}/data" ;;
      nginx) url="http://127.0.0.1:$NGINX_PORT/data" ;;
    esac
    "$BENCH" --requests 20000 --concurrency "$CONNS" --repeat 1000 --target "$url" --json \
      --html "$REPORTS/$t.html" >"$REPORTS/$t.json"
    jsons+=("$REPORTS/$t.json")
  done
  "$BENCH" --compare-json "$(IFS=,; echo "${jsons[*]}")" --html "$REPORTS/compare.html"
  echo
  echo "HTML reports: $REPORTS/{$(echo "$TARGETS" | tr ' ' ',')}.html, comparison: $REPORTS/compare.html"
fi
