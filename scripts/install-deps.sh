#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build, run and test Kamaitachi.
# Idempotent: does nothing when everything is already there.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have cmake   || need+=(cmake)
have protoc  || need+=(protobuf-compiler)
# protoc's well-known types (google/protobuf/*.proto), needed by etcd-client.
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
have etcd    || need+=(etcd-server)
have etcdctl || need+=(etcd-client)
have wrk     || need+=(wrk)
have sqlite3 || need+=(sqlite3)
have nginx   || need+=(nginx-light)
have curl    || need+=(curl)
# Network namespaces for the partition test (ip netns, veth, bridge).
have ip      || need+=(iproute2)
# Monitoring (make monitor, gateway/tests/monitor.rs): prometheus and promtool.
have prometheus || need+=(prometheus)
have promtool   || need+=(prometheus)
# The status page's browser test.
have chromium   || need+=(chromium)

if [ ${#need[@]} -gt 0 ]; then
  echo "install-deps: installing ${need[*]}"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u)
  # Debian starts services on install; the project runs its own on its own ports.
  for svc in etcd nginx prometheus prometheus-node-exporter; do
    $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true
    $SUDO service "$svc" stop >/dev/null 2>&1 || true
  done
fi

if ! have cargo; then
  echo "install-deps: cargo not found; install Rust with rustup (https://rustup.rs)" >&2
  exit 1
fi
