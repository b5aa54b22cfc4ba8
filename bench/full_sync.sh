#!/bin/bash
# usage: bench/full_sync.sh BIN LABEL -- full sync of /tmp/kmt-bench/big.db (make it with
#   kamaitachi-node gen-data --db /tmp/kmt-bench/big.db --subjects 20000 --years 1995..2024)
#   from a master to an empty slave; prints the time and both sides' peak RSS
set -u
BIN=$1; LABEL=$2; D=/tmp/kmt-bench/$LABEL
rm -rf $D; mkdir -p $D
echo -n "test-admin-token-0123456789abcdef" > $D/token
MP=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
SP=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
cat > $D/m.ini <<EOI
[server]
port = $MP
mode = master
bind = 127.0.0.1
service_addr = 127.0.0.1:$MP
[database]
path = /tmp/kmt-bench/big.db
[cache]
max_bytes = 268435456
[security]
admin_token_file = $D/token
EOI
cat > $D/s.ini <<EOI
[server]
port = $SP
mode = slave
bind = 127.0.0.1
service_addr = 127.0.0.1:$SP
[database]
path = $D/slave.db
[cache]
max_bytes = 268435456
[security]
admin_token_file = $D/token
[replication]
master = 127.0.0.1:$MP
EOI
$BIN -config $D/m.ini 2> $D/m.log & MPID=$!
until curl -sf http://127.0.0.1:$MP/health >/dev/null; do sleep 0.1; done
M_IDLE=$(awk '/VmRSS/{print $2}' /proc/$MPID/status)
T0=$(date +%s.%N)
$BIN -config $D/s.ini 2> $D/s.log & SPID=$!
until curl -sf http://127.0.0.1:$SP/health >/dev/null; do sleep 0.1; done
T1=$(date +%s.%N)
M_PEAK=$(awk '/VmHWM/{print $2}' /proc/$MPID/status)
S_PEAK=$(awk '/VmHWM/{print $2}' /proc/$SPID/status)
echo "$LABEL: slave healthy after $(echo "$T1 - $T0" | bc) s; $(grep -o 'database copied.*' $D/s.log | sed 's/\x1b\[[0-9;]*m//g')"
echo "$LABEL: master idle RSS $((M_IDLE/1024)) MiB, master peak RSS $((M_PEAK/1024)) MiB, slave peak RSS $((S_PEAK/1024)) MiB"
kill $SPID $MPID; wait $SPID $MPID 2>/dev/null
ls -la $D/slave.db | awk '{print "slave db bytes: "$5}'
