# Sourced by the shell tests (tests/package/check_package.sh,
# tests/examples/jetstream_walkthrough.sh): the daemons a script started, by
# pid, and a bounded wait for a condition.

# Started daemons; stop_daemons kills them by pid (call it from an EXIT trap).
pids=()
stop_daemons() {
  local pid
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
}

# wait_for <seconds> <command...>: polls the command until it succeeds.
wait_for() {
  local seconds="$1" i
  shift
  for ((i = 0; i < seconds * 20; i++)); do
    "$@" && return 0
    sleep 0.05
  done
  echo "gave up waiting for: $*" >&2
  return 1
}
