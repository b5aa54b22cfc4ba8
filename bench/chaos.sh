#!/usr/bin/env bash
# A long randomized fault run against the write path, through the test
# kit's fault harness (testkit/src/chaos/, the same one gateway/tests/chaos.rs
# uses): three candidate nodes, a 3-member etcd with auth, ttl 2 s,
# sync_replicas 1, the gateway; a seeded random schedule of every fault
# (kill -9, pause past the ttl, slow and cut links, etcd member loss, etcd
# wipe and restore, gateway restart) while clients write and read; then
# P1 (no acknowledged write lost), P2 (no phantom read), P3 (one leader per
# term, terms grow) and convergence are checked. Prints one CHAOS-RESULT
# line of counts per run; exits non-zero when any run found a violation.
#
#   bench/chaos.sh [--seed N] [--minutes M] [--runs R]
#
# --seed: the first run's seed (default 1; run k uses seed + k);
# --minutes: length of each run's schedule (default 10);
# --runs: how many runs (default 1).
set -euo pipefail
cd "$(dirname "$0")/.."
SEED=1
MINUTES=10
RUNS=1
while [ $# -gt 0 ]; do
  case "$1" in
    --seed) SEED=$2; shift 2 ;;
    --minutes) MINUTES=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "chaos: unknown argument $1 (--seed N, --minutes M, --runs R)" >&2; exit 2 ;;
  esac
done
for v in "$SEED" "$MINUTES" "$RUNS"; do
  [[ "$v" =~ ^[0-9]+$ ]] || { echo "chaos: expected a number, got $v" >&2; exit 2; }
done
command -v etcd >/dev/null || { echo "chaos: etcd missing: run scripts/install-deps.sh" >&2; exit 1; }
# Quiet unless the build fails (then again, with its errors).
cargo build --workspace --quiet 2>/dev/null || cargo build --workspace
cargo test -p kamaitachi-gateway --test chaos --no-run --quiet 2>/dev/null ||
  cargo test -p kamaitachi-gateway --test chaos --no-run

failed=0
for k in $(seq 0 $((RUNS - 1))); do
  seed=$((SEED + k))
  log=$(mktemp -t "chaos-seed-$seed.XXXXXX.log")
  if CHAOS_SEED=$seed CHAOS_MINUTES=$MINUTES cargo test -q -p kamaitachi-gateway --test chaos \
      a_random_schedule_from_the_environment -- --ignored --nocapture --exact >"$log" 2>&1; then
    status=ok
  else
    status="VIOLATED (log: $log)"
    failed=1
  fi
  line=$(grep -m1 '^CHAOS-RESULT' "$log" 2>/dev/null || grep -m1 "^chaos run" "$log" 2>/dev/null || true)
  echo "seed $seed, $MINUTES min: $status ${line:-}"
  # Why writes were not acknowledged (the commonest answers), then any violation.
  grep -E '^  [0-9]+ writes not acknowledged' "$log" | head -5 || true
  if [ "$status" = ok ]; then rm -f "$log"; else grep -E '^  (P1|P2|convergence)' "$log" | head -10 || true; fi
done
exit $failed
