#!/usr/bin/env bash
# jetstream_walkthrough.sh <source dir> <bin dir> <nats-server>
# Runs the scale-out walkthrough of README.md ("Forwarding to NATS JetStream")
# line by line, as a reader would, against a single nats-server -js, after
# checking that docs/jetstream.md shows the same lines. The only changes: the
# server listens on 127.0.0.1 on a port the system picked instead of 4222,
# stores under a scratch directory, and build/bin/ is the build's own.
# Exit 77 (skipped) without nats-server.
set -euo pipefail
source_dir="$1" bin="$2" nats_server="${3:-}"
if [ -z "$nats_server" ] || [ ! -x "$nats_server" ]; then
  echo "nats-server is not installed (Debian: apt-get install nats-server); skipping" >&2
  exit 77
fi
work="$(mktemp -d "${TMPDIR:-/tmp}/outbox-walkthrough-XXXXXX")"
# pids, stop_daemons (started daemons, stopped by pid on the way out), wait_for.
source "$source_dir/tests/support/daemons.sh"
trap 'stop_daemons; rm -rf "$work"' EXIT

# The first ```sh block after the walkthrough's heading in a file.
block() {
  awk -v heading="$2" 'index($0, heading) == 1 { f = 1 } f && /^```sh$/ { g = 1; next }
                       g && /^```$/ { exit } g { print }' "$1"
}
readme="$(block "$source_dir/README.md" "### Forwarding to NATS JetStream")"
docs="$(block "$source_dir/docs/jetstream.md" "## Scale-out walkthrough")"
[ -n "$readme" ] || { echo "README lost its JetStream walkthrough" >&2; exit 1; }
[ "$readme" == "$docs" ] || {
  echo "README.md and docs/jetstream.md show different walkthroughs" >&2
  diff <(echo "$readme") <(echo "$docs") >&2 || true
  exit 1
}

# A free port on 127.0.0.1 for nats-server.
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
cd "$work"
delivered() { "$bin/outbox-relay" status --db shop.db --json | grep -q "\"delivered_total\":$1,"; }
nats_ready() { grep -q "Server is ready" nats.log; }
ran=0
while IFS= read -r line; do
  command="${line%%#*}"
  command="${command%"${command##*[![:space:]]}"}"
  [ -n "$command" ] || continue
  command="${command//build\/bin\//$bin/}"
  command="${command//nats:\/\/127.0.0.1:4222/nats://127.0.0.1:$port}"
  ran=$((ran + 1))
  if [[ $command == nats-server* ]]; then
    command="${command%&}"
    command="${command/nats-server/$nats_server -a 127.0.0.1 -p $port}"
    command="${command//\/var\/lib\/nats/$work/nats-store}"
    (eval "exec $command" >nats.log 2>&1) &
    pids+=($!)
    wait_for 30 nats_ready || { cat nats.log >&2; exit 1; }
    continue
  fi
  if [[ $command == *"&" ]]; then
    command="${command%&}"
    (eval "exec $command" >relay.log 2>&1) &
    pids+=($!)
    wait_for 60 delivered 100 || { cat relay.log >&2; exit 1; }
    continue
  fi
  output="$(eval "$command" 2>&1)" || { echo "documented command failed: $command" >&2; echo "$output" >&2; exit 1; }
  printf '%s\n' "$output" >>outputs
done <<<"$readme"
[ "$ran" -eq 6 ] || { echo "expected 6 commands in the walkthrough, ran $ran" >&2; exit 1; }
grep -q "^stream OUTBOX:" outputs
grep -q "committed 100 orders" outputs
grep -q "applied 100 messages" outputs
grep -q "^delivered: *100 kept, 100 in all" outputs
# The relay stops cleanly on SIGTERM.
kill -TERM "${pids[1]}"
wait "${pids[1]}"
echo "walkthrough ok: $ran commands against nats-server on port $port"
