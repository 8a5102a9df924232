#!/usr/bin/env bash
# idgen from the shell: time-ordered ids for scripts, fixtures and SQL.
#   examples/idgen_shell.sh [path/to/idgen]     (default: idgen on PATH, else build/bin/idgen)
set -euo pipefail

idgen="${1:-}"
if [ -z "$idgen" ]; then
  if command -v idgen >/dev/null 2>&1; then
    idgen="$(command -v idgen)"
  else
    idgen="$(cd "$(dirname "$0")/.." && pwd)/build/bin/idgen"
  fi
fi
state_dir="$(mktemp -d "${TMPDIR:-/tmp}/idgen-shell-XXXXXX")"
trap 'rm -rf "$state_dir"' EXIT

echo "# three ids from worker 7 (each running generator needs its own worker id)"
"$idgen" gen -n 3 --worker 7

echo "# the worker id can come from the environment; base62 is shorter"
IDGEN_WORKER_ID=8 "$idgen" gen -n 2 --format base62

echo "# a state file: a later run never repeats an id, even after the clock is set back"
first="$("$idgen" gen --worker 9 --state-file "$state_dir/worker-9.state")"
second="$("$idgen" gen --worker 9 --state-file "$state_dir/worker-9.state")"
echo "$first then $second"
[ "$second" -gt "$first" ]

echo "# what an id holds"
"$idgen" decode "$second" --json

echo "# the id a time, worker and sequence map to (e.g. a lower bound for a range query)"
lower="$("$idgen" compose --time 2026-03-01T00:00:00Z --worker 0 --seq 0)"
echo "SELECT * FROM outbox_messages WHERE CAST(msg_id AS INTEGER) >= $lower;"

echo "# the layout: bits, epoch, ids per second, expiry"
"$idgen" layout

echo "# UUIDs when no worker id can be assigned"
"$idgen" uuid --v7 -n 2
