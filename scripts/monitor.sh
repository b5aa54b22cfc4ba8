#!/usr/bin/env bash
# A real Prometheus for the local cluster (what `make monitor` runs).
#
#   scripts/monitor.sh start   render deploy/prometheus/ into run/prometheus/
#                              with the gateway's port, start Debian's
#                              prometheus on 127.0.0.1:$PROMETHEUS_PORT
#   scripts/monitor.sh stop    stop it (make stop does too)
#
# Targets come from the gateway's /prometheus/targets, so every node (and
# the ones added later with make node) is scraped. Data in data/prometheus,
# log in logs/prometheus.log, pid in run/prometheus.pid.
set -euo pipefail
cd "$(dirname "$0")/.."

GATEWAY_PORT=${GATEWAY_PORT:-9000}
PROMETHEUS_PORT=${PROMETHEUS_PORT:-9090}
RUN=run; LOGS=logs; DATA=data
mkdir -p "$RUN/prometheus" "$LOGS" "$DATA/prometheus"

die() { echo "monitor: $*" >&2; exit 1; }
pid_of() { cat "$RUN/prometheus.pid" 2>/dev/null || true; }
alive() { local p; p=$(pid_of); [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }

start() {
  command -v prometheus >/dev/null || die "prometheus is not installed (scripts/install-deps.sh installs it)"
  alive && die "prometheus already runs (pid $(pid_of)); make stop first"
  curl -s -m 2 "http://127.0.0.1:$GATEWAY_PORT/prometheus/targets" >/dev/null ||
    die "the gateway does not answer on :$GATEWAY_PORT; start the cluster first (make cluster)"
  sed -e "s/localhost:9000/localhost:$GATEWAY_PORT/" deploy/prometheus/prometheus.yml >"$RUN/prometheus/prometheus.yml"
  cp deploy/prometheus/rules.yml "$RUN/prometheus/rules.yml"
  promtool check config "$RUN/prometheus/prometheus.yml" >/dev/null || die "promtool rejects the rendered config"
  nohup prometheus --config.file="$RUN/prometheus/prometheus.yml" \
    --storage.tsdb.path="$DATA/prometheus" \
    --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" >"$LOGS/prometheus.log" 2>&1 &
  echo $! >"$RUN/prometheus.pid"
  for _ in $(seq 1 100); do
    curl -s -m 1 "http://127.0.0.1:$PROMETHEUS_PORT/-/ready" >/dev/null 2>&1 && break
    alive || die "prometheus exited: see $LOGS/prometheus.log"
    sleep 0.2
  done
  echo "monitor: Prometheus on http://127.0.0.1:$PROMETHEUS_PORT (targets: http://127.0.0.1:$PROMETHEUS_PORT/targets)"
  echo "monitor: Grafana: import deploy/grafana/kamaitachi.json with this Prometheus as its data source"
}

stop() {
  local pid; pid=$(pid_of)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$RUN/prometheus.pid"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) die "usage: $0 start|stop" ;;
esac
