#!/bin/sh
# What a busy timeout is worth: one writer (the Python producer of tests/relay,
# tables from docs/schema.md, BEGIN IMMEDIATE + one business row + one message
# per transaction) while outbox-relay forwards the same database to
# outbox-broker. Run once without a busy timeout and once with 5 s; prints how
# many transactions failed with "database is locked".
#
#   bench/outbox/busy_timeout.sh BUILD_DIR [TRANSACTIONS]    (default 3000)
#
# Loopback only, everything in a temporary directory, only its own pids killed.
set -eu
build=${1:?usage: busy_timeout.sh BUILD_DIR [TRANSACTIONS]}
count=${2:-3000}
root=$(cd "$(dirname "$0")/../.." && pwd)
producer="$root/tests/relay/sql_contract_producer.py"
work=$(mktemp -d)
broker_pid=
relay_pid=
cleanup() {
  for pid in $relay_pid $broker_pid; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

"$build/bin/outbox-broker" serve --db "$work/broker.db" --bind 'tcp://127.0.0.1:*' \
  --endpoint-file "$work/endpoint" --sync normal >"$work/broker.log" 2>&1 &
broker_pid=$!
tries=0
while [ ! -s "$work/endpoint" ]; do
  tries=$((tries + 1))
  if [ "$tries" -gt 3000 ] || ! kill -0 "$broker_pid" 2>/dev/null; then
    echo "busy_timeout.sh: outbox-broker did not start:" >&2
    cat "$work/broker.log" >&2
    exit 1
  fi
  sleep 0.01
done
endpoint=$(head -n 1 "$work/endpoint")

for timeout_ms in 0 5000; do
  db="$work/app-$timeout_ms.db"
  python3 "$producer" create "$db" "$root/docs/schema.md"
  "$build/bin/outbox-relay" run --db "$db" --broker "$endpoint" 2>"$work/relay.log" &
  relay_pid=$!
  result=$(python3 "$producer" enqueue "$db" "$count" 16 --busy-timeout-ms "$timeout_ms")
  kill "$relay_pid"
  wait "$relay_pid" || true
  relay_pid=
  delivered=$("$build/bin/outbox-relay" status --db "$db" --json | sed -n 's/.*"delivered_total":\([0-9]*\).*/\1/p')
  echo "busy_timeout ${timeout_ms} ms: ${result} (of ${count} transactions; relay delivered ${delivered} meanwhile)"
done
