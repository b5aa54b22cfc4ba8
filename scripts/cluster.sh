#!/usr/bin/env bash
# Start, stop and inspect the local Kamaitachi cluster.
#   scripts/cluster.sh start | stop | status
# Processes are tracked by pid files under run/ (never by name); logs go to
# logs/. Ports come from the conf/ files.
set -euo pipefail
cd "$(dirname "$0")/.."

RUN=run; LOGS=logs; DATA=data; BIN=bin
NODES="master:conf/master.ini:8080 slave1:conf/slave.ini:8081 slave2:conf/slave2.ini:8082"
ETCD_PORT=${ETCD_PORT:-2379}
mkdir -p "$RUN" "$LOGS" "$DATA"

die() { echo "cluster: $*" >&2; exit 1; }
alive() { [ -f "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
health() { curl -s -m 2 "http://127.0.0.1:$1/health" || true; }

stop_one() {
  local name=$1 pid
  [ -f "$RUN/$name.pid" ] || return 0
  pid=$(cat "$RUN/$name.pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { echo "cluster: $name ($pid) ignored SIGTERM; killing"; kill -KILL "$pid" || true; }
  fi
  rm -f "$RUN/$name.pid"
}

start_etcd() {
  if curl -s -m 1 "http://127.0.0.1:$ETCD_PORT/health" >/dev/null 2>&1; then
    echo "cluster: etcd already answers on :$ETCD_PORT"
    return 0
  fi
  command -v etcd >/dev/null || die "etcd not found: run scripts/install-deps.sh"
  port_busy "$ETCD_PORT" && die "port $ETCD_PORT is in use by something that is not etcd; stop it or set ETCD_PORT"
  etcd --name kamaitachi --data-dir "$DATA/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-cluster "kamaitachi=http://127.0.0.1:$((ETCD_PORT + 1))" >"$LOGS/etcd.log" 2>&1 &
  echo $! >"$RUN/etcd.pid"
  for _ in $(seq 1 50); do
    curl -s -m 1 "http://127.0.0.1:$ETCD_PORT/health" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  tail -n 20 "$LOGS/etcd.log" >&2
  die "etcd did not become healthy on :$ETCD_PORT (log above: $LOGS/etcd.log)"
}

start() {
  [ -x "$BIN/kamaitachi-node" ] || die "missing $BIN/kamaitachi-node: run 'make build'"
  [ -f "$DATA/master.db" ] || die "missing $DATA/master.db: run 'make data'"
  [ -s "$RUN/admin.token" ] || { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$RUN/admin.token"; chmod 600 "$RUN/admin.token"; }
  # Clean up what an earlier run left (by pid file only).
  for entry in $NODES; do stop_one "${entry%%:*}"; done
  start_etcd
  # Until replication lands (issue 5), each slave starts from a copy of the
  # master's database.
  for db in slave slave2; do
    [ -f "$DATA/$db.db" ] || cp "$DATA/master.db" "$DATA/$db.db"
  done
  for entry in $NODES; do
    IFS=: read -r name conf port <<<"$entry"
    port_busy "$port" && die "port $port ($name) is in use: stop whatever listens there (ss -ltnp | grep :$port) or change $conf"
    "$BIN/kamaitachi-node" -config "$conf" >"$LOGS/$name.log" 2>&1 &
    echo $! >"$RUN/$name.pid"
  done
  for entry in $NODES; do
    IFS=: read -r name conf port <<<"$entry"
    ok=
    for _ in $(seq 1 100); do
      if curl -sf -m 1 "http://127.0.0.1:$port/health" >/dev/null 2>&1; then ok=1; break; fi
      alive "$name" || break
      sleep 0.1
    done
    if [ -z "$ok" ]; then
      echo "cluster: $name did not become healthy on :$port; last lines of $LOGS/$name.log:" >&2
      tail -n 20 "$LOGS/$name.log" >&2
      exit 1
    fi
  done
  status
  cat <<EOF

Try:
  curl -s -X POST http://localhost:8080/kamaitachi/api/data/v1/snapshot -d '{"ids":"operating_income,net_profit","subjects":"33:000001,17:600000"}'
  curl -s -X POST http://localhost:8081/kamaitachi/api/data/v1/period -d '{"ids":"net_profit","subjects":"33:000001","from":1672531200,"to":1735603200}'
  curl -s http://localhost:8082/kamaitachi/api/data/v1/stats
(The gateway on :9000 arrives with its issue; until then, talk to the nodes directly.)
EOF
}

status() {
  printf '%-8s %-6s %-8s %-8s %-9s %-9s %s\n' NAME PORT PID ROLE DATA_VER HIT_RATE HEALTH
  for entry in $NODES; do
    IFS=: read -r name conf port <<<"$entry"
    pid=-; alive "$name" && pid=$(cat "$RUN/$name.pid")
    h=$(health "$port")
    role=$(sed -n 's/.*"mode":"\([a-z]*\)".*/\1/p' <<<"$h")
    ver=$(sed -n 's/.*"data_version":\([0-9]*\).*/\1/p' <<<"$h")
    rate=$(curl -s -m 2 "http://127.0.0.1:$port/kamaitachi/api/data/v1/stats" | sed -n 's/.*"hit_rate":\([0-9.]*\).*/\1/p')
    st=$(sed -n 's/.*"status":"\([a-z]*\)".*/\1/p' <<<"$h")
    printf '%-8s %-6s %-8s %-8s %-9s %-9s %s\n' "$name" "$port" "$pid" "${role:--}" "${ver:--}" "${rate:--}" "${st:-down}"
  done
  if command -v etcdctl >/dev/null; then
    echo; echo "etcd registry (etcdctl get --prefix /kamaitachi):"
    ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$ETCD_PORT" --dial-timeout 1s get --prefix /kamaitachi 2>&1 || true
  fi
}

stop() {
  for entry in $NODES; do stop_one "${entry%%:*}"; done
  stop_one etcd
  echo "cluster: stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) die "usage: $0 start|stop|status" ;;
esac
