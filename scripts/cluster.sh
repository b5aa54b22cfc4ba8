#!/usr/bin/env bash
# The local Kamaitachi cluster: etcd, a master, two slaves and the gateway.
# ETCD_MEMBERS=3 runs etcd as a 3-member cluster (client ports ETCD_PORT,
# ETCD_PORT+100, ETCD_PORT+200; peers one above each); every process is
# given all endpoints.
#
#   scripts/cluster.sh start        start everything (what `make cluster` runs)
#   scripts/cluster.sh stop         graceful stop of what start started
#   scripts/cluster.sh status       health, role, data version, hit rate; etcd's registry
#   scripts/cluster.sh add N        one more slave, "slaveN", on the next free port
#
# Processes are tracked by pid files under run/ (never by name); logs go to
# logs/. The configs actually used are written to run/conf/ from conf/*.ini
# with the ports below (override them in the environment, e.g.
# MASTER_PORT=18080 make cluster).
set -euo pipefail
cd "$(dirname "$0")/.."

MASTER_PORT=${MASTER_PORT:-8080}
SLAVE1_PORT=${SLAVE1_PORT:-8081}
SLAVE2_PORT=${SLAVE2_PORT:-8082}
GATEWAY_PORT=${GATEWAY_PORT:-9000}
ETCD_PORT=${ETCD_PORT:-2379}
ETCD_PEER_PORT=${ETCD_PEER_PORT:-$((ETCD_PORT + 1))}
# How many etcd members: remembered for stop/status/add of the same run.
ETCD_MEMBERS=${ETCD_MEMBERS:-$(cat run/etcd-members 2>/dev/null || echo 1)}
[[ "$ETCD_MEMBERS" =~ ^[135]$ ]] || { echo "cluster: ETCD_MEMBERS must be 1, 3 or 5 (got $ETCD_MEMBERS)" >&2; exit 1; }
BIN=${BIN:-bin}
RUN=run; LOGS=logs; DATA=data; CONF=$RUN/conf
mkdir -p "$RUN" "$LOGS" "$DATA" "$CONF"

die() { echo "cluster: $*" >&2; exit 1; }
pid_of() { cat "$RUN/$1.pid" 2>/dev/null || true; }
alive() { local p; p=$(pid_of "$1"); [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# Member i (1-based) of etcd: its client and peer ports, its name.
member_port() { echo $((ETCD_PORT + 100 * ($1 - 1))); }
member_peer_port() { if [ "$1" = 1 ]; then echo "$ETCD_PEER_PORT"; else echo $((ETCD_PEER_PORT + 100 * ($1 - 1))); fi; }
member_name() { if [ "$ETCD_MEMBERS" = 1 ]; then echo kamaitachi; else echo "kamaitachi-$1"; fi; }
member_pid() { if [ "$1" = 1 ]; then echo etcd; else echo "etcd-$1"; fi; }
# The endpoints every process is given: host:port,host:port,...
etcd_endpoints() {
  local i out=""
  for i in $(seq 1 "$ETCD_MEMBERS"); do out="$out${out:+,}localhost:$(member_port "$i")"; done
  echo "$out"
}
member_up() { curl -s -m 1 "http://127.0.0.1:$(member_port "$1")/health" 2>/dev/null | grep -q '"health":"true"'; }
# The cluster answers (its quorum is up) on any member.
etcd_up() {
  local i
  for i in $(seq 1 "$ETCD_MEMBERS"); do member_up "$i" && return 0; done
  return 1
}

# etcd credentials (made once, random, mode 600): root administers etcd; the
# processes connect as $ETCD_USER, whose role may read/write only under
# $ETCD_PREFIX/.
ETCD_USER=kamaitachi
ETCD_PREFIX=/kamaitachi
ROOT_PW_FILE=$RUN/etcd-root.password
USER_PW_FILE=$RUN/etcd-kamaitachi.password
make_secret() {
  [ -s "$1" ] && return 0
  (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$1")
}
# etcdctl as USER (root|kamaitachi|anonymous); the password goes through the
# environment, not the command line.
ctl() {
  local who=$1; shift
  local user=""
  case "$who" in
    root) user="root:$(cat "$ROOT_PW_FILE")" ;;
    "$ETCD_USER") user="$ETCD_USER:$(cat "$USER_PW_FILE")" ;;
  esac
  if [ -n "$user" ]; then
    ETCDCTL_API=3 ETCDCTL_USER="$user" etcdctl --endpoints "$(etcd_endpoints)" --dial-timeout 2s "$@"
  else
    ETCDCTL_API=3 etcdctl --endpoints "$(etcd_endpoints)" --dial-timeout 2s "$@"
  fi
}

# Turns etcd's auth on (etcd 3.4 needs a root user with the root role first)
# with a role limited to the prefix; a no-op on an etcd that has it already.
etcd_auth() {
  make_secret "$ROOT_PW_FILE"
  make_secret "$USER_PW_FILE"
  if ctl "$ETCD_USER" get --prefix --keys-only --limit 1 "$ETCD_PREFIX/" >/dev/null 2>&1 &&
     ! ctl anonymous put "$ETCD_PREFIX/.auth-check" x >/dev/null 2>&1; then
    return 0   # auth on, and our user gets in
  fi
  ctl anonymous put "$ETCD_PREFIX/.auth-check" x >/dev/null 2>&1 && ctl anonymous del "$ETCD_PREFIX/.auth-check" >/dev/null 2>&1
  local rootpw userpw
  rootpw=$(cat "$ROOT_PW_FILE"); userpw=$(cat "$USER_PW_FILE")
  ctl anonymous user add root --new-user-password="$rootpw" >/dev/null 2>&1 || true
  ctl anonymous user grant-role root root >/dev/null 2>&1 || true
  ctl anonymous role add "$ETCD_USER" >/dev/null 2>&1 || true
  ctl anonymous role grant-permission "$ETCD_USER" readwrite --prefix=true "$ETCD_PREFIX/" >/dev/null 2>&1 || true
  ctl anonymous user add "$ETCD_USER" --new-user-password="$userpw" >/dev/null 2>&1 || true
  ctl anonymous user grant-role "$ETCD_USER" "$ETCD_USER" >/dev/null 2>&1 || true
  ctl anonymous auth enable >/dev/null 2>&1 || true
  if ! ctl "$ETCD_USER" get --prefix --keys-only --limit 1 "$ETCD_PREFIX/" >/dev/null 2>&1; then
    die "etcd on :$ETCD_PORT has auth on, but user $ETCD_USER cannot log in with $USER_PW_FILE (made for another etcd?): restore the password files, or stop that etcd and remove $DATA/etcd"
  fi
  if ctl anonymous put "$ETCD_PREFIX/.auth-check" x >/dev/null 2>&1; then
    die "etcd on :$ETCD_PORT still accepts anonymous writes: auth could not be enabled (log: $LOGS/etcd.log)"
  fi
  echo "cluster: etcd auth on (users root and $ETCD_USER; passwords in $ROOT_PW_FILE, $USER_PW_FILE)"
}

# Every node the cluster runs: name:template:port. Added slaves are
# remembered in run/extra-nodes.
nodes() {
  echo "master:master:$MASTER_PORT slave1:slave:$SLAVE1_PORT slave2:slave2:$SLAVE2_PORT"
  [ -f "$RUN/extra-nodes" ] && cat "$RUN/extra-nodes"
  return 0
}

# render TEMPLATE NAME PORT -> run/conf/NAME.ini with this run's ports.
render() {
  local template=$1 name=$2 port=$3 db=$4
  sed -e "s/^port = [0-9]*/port = $port/" \
      -e "s/^service_addr = localhost:[0-9]*/service_addr = localhost:$port/" \
      -e "s/^master = localhost:[0-9]*/master = localhost:$MASTER_PORT/" \
      -e "s/^endpoints = localhost:[0-9]*/endpoints = $(etcd_endpoints)/" \
      -e "s#^path = [^ ]*#path = ./data/$db.db#" \
      -e "s#^snapshot_path = [^ ]*#snapshot_path = ./data/${db}_snapshot.dat#" \
      "conf/$template.ini" | with_etcd_credentials >"$CONF/$name.ini"
}

# Adds [etcd] username and password_file to a config on stdin.
with_etcd_credentials() {
  if [ -s "$USER_PW_FILE" ]; then
    sed -e "/^\[etcd\]/a username = $ETCD_USER\npassword_file = ./$USER_PW_FILE" \
        -e '/^username *=/d' -e '/^password_file *=/d'
  else
    cat
  fi
}

stop_one() {
  local name=$1 pid
  pid=$(pid_of "$name")
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "cluster: $name ($pid) did not stop on SIGTERM in 10 s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$RUN/$name.pid"
}

# wait_health NAME PORT [SECONDS]: until /health answers 200, or show the log.
wait_health() {
  local name=$1 port=$2 secs=${3:-60}
  for _ in $(seq 1 $((secs * 10))); do
    curl -sf -m 1 "http://127.0.0.1:$port/health" >/dev/null 2>&1 && return 0
    alive "$name" || break
    sleep 0.1
  done
  echo "cluster: $name did not become healthy on :$port; last lines of $LOGS/$name.log:" >&2
  tail -n 20 "$LOGS/$name.log" >&2 || true
  # A node often waits on another (a slave on the leader): say what each
  # of the others reports, election and replication included.
  local entry other oport
  for entry in $(nodes); do
    IFS=: read -r other _ oport <<<"$entry"
    [ "$other" = "$name" ] && continue
    echo "cluster: $other (:$oport) /health: $(curl -s -m 1 "http://127.0.0.1:$oport/health" 2>&1 || echo 'no answer')" >&2
  done
  exit 1
}

start_etcd() {
  if etcd_up; then
    echo "cluster: etcd already answers on $(etcd_endpoints); using it"
    return 0
  fi
  command -v etcd >/dev/null || die "etcd not found: run scripts/install-deps.sh (Debian package etcd-server)"
  local i initial="" dir
  for i in $(seq 1 "$ETCD_MEMBERS"); do
    port_busy "$(member_port "$i")" && die "port $(member_port "$i") is in use by something that is not a healthy etcd; stop it or set ETCD_PORT"
    initial="$initial${initial:+,}$(member_name "$i")=http://127.0.0.1:$(member_peer_port "$i")"
  done
  echo "$ETCD_MEMBERS" >"$RUN/etcd-members"
  for i in $(seq 1 "$ETCD_MEMBERS"); do
    # One data directory per cluster shape: a single-member data dir cannot
    # join a 3-member cluster, nor the other way round.
    dir="$DATA/etcd"; [ "$ETCD_MEMBERS" = 1 ] || dir="$DATA/etcd-$ETCD_MEMBERS-$i"
    etcd --name "$(member_name "$i")" --data-dir "$dir" \
      --listen-client-urls "http://127.0.0.1:$(member_port "$i")" --advertise-client-urls "http://127.0.0.1:$(member_port "$i")" \
      --listen-peer-urls "http://127.0.0.1:$(member_peer_port "$i")" --initial-advertise-peer-urls "http://127.0.0.1:$(member_peer_port "$i")" \
      --initial-cluster-token "kamaitachi-$ETCD_MEMBERS" --initial-cluster "$initial" >"$LOGS/$(member_pid "$i").log" 2>&1 &
    echo $! >"$RUN/$(member_pid "$i").pid"
  done
  local up
  for _ in $(seq 1 150); do
    up=0
    for i in $(seq 1 "$ETCD_MEMBERS"); do member_up "$i" && up=$((up + 1)); done
    [ "$up" = "$ETCD_MEMBERS" ] && { [ "$ETCD_MEMBERS" = 1 ] || echo "cluster: etcd runs as $ETCD_MEMBERS members ($(etcd_endpoints))"; return 0; }
    sleep 0.2
  done
  tail -n 20 "$LOGS/etcd.log" >&2
  die "etcd did not become healthy on $(etcd_endpoints) (logs: $LOGS/etcd*.log)"
}

start_node() {
  local name=$1 template=$2 port=$3 db
  db=$name; [ "$name" = slave1 ] && db=slave
  alive "$name" && die "$name is already running (pid $(pid_of "$name")); run 'make stop' first"
  port_busy "$port" && die "port $port ($name) is in use: stop what listens there (ss -ltnp | grep :$port) or set ${name^^}_PORT"
  render "$template" "$name" "$port" "$db"
  "$BIN/kamaitachi-node" -config "$CONF/$name.ini" >>"$LOGS/$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
}

start() {
  for b in kamaitachi-node kamaitachi-gateway; do
    [ -x "$BIN/$b" ] || die "missing $BIN/$b: run 'make build'"
  done
  [ -f "$DATA/master.db" ] || die "missing $DATA/master.db: run 'make data'"
  if [ ! -s "$RUN/admin.token" ]; then
    (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$RUN/admin.token")
  fi
  # The cluster secret (nodes and gateways prove it to each other): another
  # file than the admin token, so a client's token cannot pose as a node.
  if [ ! -s "$RUN/cluster.secret" ]; then
    (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$RUN/cluster.secret")
  fi
  # Clean up what an earlier run left behind (by pid file only).
  stop_all quiet
  rm -f "$RUN/extra-nodes"
  start_etcd
  etcd_auth
  local name template port
  for entry in $(nodes); do
    IFS=: read -r name template port <<<"$entry"
    start_node "$name" "$template" "$port"
  done
  for entry in $(nodes); do
    IFS=: read -r name template port <<<"$entry"
    wait_health "$name" "$port" 120
  done
  alive gateway && die "the gateway is already running"
  port_busy "$GATEWAY_PORT" && die "port $GATEWAY_PORT (gateway) is in use: stop what listens there or set GATEWAY_PORT"
  sed -e "s/^port = [0-9]*/port = $GATEWAY_PORT/" -e "s/^endpoints = localhost:[0-9]*/endpoints = $(etcd_endpoints)/" \
    -e "s/^service_addr = localhost:[0-9]*/service_addr = localhost:$GATEWAY_PORT/" \
    conf/gateway.ini | with_etcd_credentials >"$CONF/gateway.ini"
  "$BIN/kamaitachi-gateway" -config "$CONF/gateway.ini" >>"$LOGS/gateway.log" 2>&1 &
  echo $! >"$RUN/gateway.pid"
  wait_health gateway "$GATEWAY_PORT" 30
  local want; want=$(nodes | wc -w)
  for _ in $(seq 1 100); do
    curl -s -m 1 "http://127.0.0.1:$GATEWAY_PORT/health" | grep -q "\"healthy_nodes\":$want" && break
    sleep 0.1
  done
  status
  cat <<EOF

Try (through the gateway; /data is stripped and the rest goes to a node):
  curl -s -X POST http://localhost:$GATEWAY_PORT/data/kamaitachi/api/data/v1/snapshot -d '{"ids":"operating_income,net_profit","subjects":"33:000001,17:600000"}'
  curl -s -X POST http://localhost:$GATEWAY_PORT/data/kamaitachi/api/data/v1/period -d '{"ids":"net_profit","subjects":"33:000001","from":1672531200,"to":1735603200}'
  curl -s http://localhost:$GATEWAY_PORT/kamaitachi/api/data/v1/stats
Stop with: make stop
EOF
}

status() {
  # ROLE is the role a node plays now (master while it leads for writes);
  # LEADER is "yes" on the node etcd elected, TERM the leader's term as
  # the node sees it (issue 14).
  printf '%-8s %-6s %-8s %-8s %-6s %-6s %-9s %-6s %-9s %s\n' NAME PORT PID ROLE LEADER TERM DATA_VER LAG HIT_RATE HEALTH
  local name template port h role ver lag rate st pid leads term
  for entry in $(nodes) gateway:gateway:$GATEWAY_PORT; do
    IFS=: read -r name template port <<<"$entry"
    pid=-; alive "$name" && pid=$(pid_of "$name")
    h=$(curl -s -m 2 "http://127.0.0.1:$port/health" || true)
    role=$(sed -n 's/.*"role":"\([a-z]*\)".*/\1/p' <<<"$h")
    [ -n "$role" ] || role=$(sed -n 's/.*"mode":"\([a-z]*\)".*/\1/p' <<<"$h")
    leads=-; grep -q '"term":[0-9]' <<<"$(sed 's/"leader":{[^}]*}//' <<<"$h")" && leads=yes
    term=$(sed -n 's/.*"leader":{[^}]*"term":\([0-9]*\).*/\1/p' <<<"$h")
    ver=$(sed -n 's/.*"data_version":\([0-9]*\).*/\1/p' <<<"$h")
    lag=$(sed -n 's/.*"lag":\([0-9]*\).*/\1/p' <<<"$h")
    rate=$(curl -s -m 2 "http://127.0.0.1:$port/kamaitachi/api/data/v1/stats" | grep -o '"hit_rate":[0-9.]*' | tail -n 1 | cut -d: -f2 || true)
    st=$(sed -n 's/^{"[^}]*"status":"\([a-z]*\)".*/\1/p; s/.*,"status":"\([a-z]*\)".*/\1/p' <<<"$h" | head -n 1)
    printf '%-8s %-6s %-8s %-8s %-6s %-6s %-9s %-6s %-9s %s\n' "$name" "$port" "$pid" "${role:--}" "$leads" "${term:--}" "${ver:--}" "${lag:--}" \
      "${rate:0:6}" "${st:-down}"
  done
  echo
  if [ "$ETCD_MEMBERS" != 1 ]; then
    local i
    for i in $(seq 1 "$ETCD_MEMBERS"); do
      if member_up "$i"; then st=healthy; else st=down; fi
      echo "etcd member $(member_name "$i") :$(member_port "$i") $st"
    done
  fi
  if etcd_up; then
    echo "etcd :$ETCD_PORT registry (etcdctl get --prefix $ETCD_PREFIX/, as $ETCD_USER):"
    if [ -s "$USER_PW_FILE" ]; then
      ctl "$ETCD_USER" get --prefix "$ETCD_PREFIX/" 2>&1 | sed 's/^/  /' || true
    else
      ctl anonymous get --prefix "$ETCD_PREFIX/" 2>&1 | sed 's/^/  /' || true
    fi
  else
    echo "etcd :$ETCD_PORT is not answering"
  fi
}

stop_all() {
  stop_one gateway
  local name template port
  for entry in $(nodes); do
    IFS=: read -r name template port <<<"$entry"
    stop_one "$name"
  done
  local i
  for i in $(seq 1 5); do stop_one "$(member_pid "$i")"; done
  rm -f "$RUN/extra-nodes" "$RUN/etcd-members"
  [ "${1:-}" = quiet ] || echo "cluster: stopped (pid files removed)"
}

add() {
  local n=${1:-}
  [[ "$n" =~ ^[0-9]+$ ]] || die "usage: $0 add N (N a number, e.g. 3)"
  local name=slave$n port=$((MASTER_PORT + n))
  grep -qs "^$name:" "$RUN/extra-nodes" && alive "$name" && die "$name already runs"
  while port_busy "$port"; do port=$((port + 1)); done
  etcd_up || die "etcd is not answering on :$ETCD_PORT: start the cluster first (make cluster)"
  start_node "$name" slave "$port"
  grep -qs "^$name:" "$RUN/extra-nodes" || echo "$name:slave:$port" >>"$RUN/extra-nodes"
  wait_health "$name" "$port" 120
  echo "cluster: $name runs on :$port (config $CONF/$name.ini); the gateway picks it up through etcd"
}

case "${1:-}" in
  start) start ;;
  stop) stop_all ;;
  status) status ;;
  add) add "${2:-}" ;;
  *) die "usage: $0 start|stop|status|add N" ;;
esac
