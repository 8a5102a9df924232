#!/usr/bin/env bash
# check_package.sh installed|subdirectory|examples|readme <build dir> <source dir> <cmake>
# Builds tests/package/consumer against the toolkit and runs it. `examples`
# instead builds each program under examples/ as its own project against the
# installed tree and runs it briefly. `readme` builds the C++ snippets of
# README.md against the installed tree, runs the producer and inspects its
# database with the installed outbox-relay, as a reader of the README would.
set -euo pipefail
mode="$1" build_dir="$2" source_dir="$3" cmake="$4"
work="$(mktemp -d "${TMPDIR:-/tmp}/outbox-package-XXXXXX")"

# pids, stop_daemons (started daemons, stopped by pid on the way out), wait_for.
source "$source_dir/tests/support/daemons.sh"
trap 'stop_daemons; rm -rf "$work"' EXIT

delivered() { "$bin/outbox-relay" status --db "$1" --json | grep -q "\"delivered_total\":$2,"; }

# stop_daemon <pid>: SIGTERM, and the daemon must exit 0.
stop_daemon() {
  kill -TERM "$1"
  wait "$1"
}

# The README's "Running the pipeline" block and the configuration files of
# docs/operations.md, run as written on the producer's shop.db. The only
# changes: the broker binds a port the system picks (the documented 7750 may be
# taken) and later commands use the endpoint it reports; paths under /var/lib
# point into the scratch directory.
run_documented_commands() {
  bin="$work/prefix/bin"
  cd "$work"
  local endpoint="" line command output
  local block
  block="$(awk '/^## Running the pipeline/ { f = 1 } f && /^```sh$/ { g = 1; next }
                g && /^```$/ { exit } g { print }' "$source_dir/README.md")"
  [ -n "$block" ] || { echo "README lost its pipeline commands" >&2; return 1; }
  while IFS= read -r line; do
    command="${line%%#*}"
    command="${command//build\/bin\//$bin/}"
    if [[ $command == *"outbox-broker serve"* ]]; then
      $command --bind 'tcp://127.0.0.1:*' --endpoint-file "$work/endpoint" >broker.log 2>&1 &
      pids+=($!)
      wait_for 20 test -s "$work/endpoint"
      endpoint="$(head -n 1 "$work/endpoint")"
      continue
    fi
    command="${command//tcp:\/\/127.0.0.1:7750/$endpoint}"
    if [[ $command == *"outbox-relay run"* ]]; then
      $command >relay.log 2>&1 &
      pids+=($!)
      wait_for 30 delivered shop.db 1 || { cat relay.log >&2; return 1; }
      continue
    fi
    output="$($command)" || { echo "documented command failed: $command" >&2; return 1; }
    printf '%s\n' "$output" >>outputs
  done <<<"$block"
  grep -q '"delivered_total":1,' outputs
  grep -q '"stored":1,' outputs
  grep -q '"topic":"orders"' outputs
  stop_daemon "${pids[1]}"
  stop_daemon "${pids[0]}"
  pids=()

  # The README's idgen commands; <id> is an id the first one printed.
  local id
  id="$("$bin/idgen" gen -n 1 --worker 3)"
  block="$(awk '/^### idgen/ { f = 1 } f && /^```sh$/ { g = 1; next }
                g && /^```$/ { exit } g { print }' "$source_dir/README.md")"
  [ -n "$block" ] || { echo "README lost its idgen commands" >&2; return 1; }
  while IFS= read -r line; do
    command="${line%%#*}"
    command="${command//build\/bin\//$bin/}"
    command="${command//<id>/$id}"
    $command >/dev/null || { echo "documented command failed: $command" >&2; return 1; }
  done <<<"$block"

  # docs/operations.md: the broker's and the relay's configuration files.
  awk '/^`\/etc\/outbox\/broker.toml`/ { f = 1 } f && /^```toml$/ { g = 1; next }
       g && /^```$/ { exit } g { print }' "$source_dir/docs/operations.md" |
    sed -e "s|/var/lib/outbox/|$work/ops-|" -e 's|tcp://127.0.0.1:7750|tcp://127.0.0.1:*|' >broker.toml
  echo "endpoint-file = \"$work/ops-endpoint\"" >>broker.toml
  grep -q '^\[serve\]' broker.toml
  "$bin/outbox-broker" serve --config broker.toml >ops-broker.log 2>&1 &
  pids+=($!)
  wait_for 20 test -s "$work/ops-endpoint" || { cat ops-broker.log >&2; return 1; }
  endpoint="$(head -n 1 "$work/ops-endpoint")"
  awk '/^`\/etc\/outbox\/relay-shop.toml`/ { f = 1 } f && /^```toml$/ { g = 1; next }
       g && /^```$/ { exit } g { print }' "$source_dir/docs/operations.md" |
    sed -e "s|/var/lib/shop/app.db|$work/shop.db|" -e "s|tcp://127.0.0.1:7750|$endpoint|" >relay.toml
  grep -q '^\[run\]' relay.toml
  # The message was delivered before; the relay takes the lease and opens a
  # session with the broker its configuration names.
  "$bin/outbox-relay" run --config relay.toml >ops-relay.log 2>&1 &
  pids+=($!)
  session_opened() {
    "$bin/outbox-broker" stats --connect "$endpoint" --json | grep -q '"sessions_opened":1,'
  }
  wait_for 30 session_opened || { cat ops-relay.log >&2; return 1; }
  grep -q "active: holding the relay lease" ops-relay.log
  stop_daemon "${pids[1]}"
  stop_daemon "${pids[0]}"
  pids=()

  # docs/operations.md: the online backup of an outbox, then status on the copy.
  command="$(grep -o 'sqlite3 /var/lib/shop/app.db "[^"]*"' "$source_dir/docs/operations.md")"
  [ -n "$command" ] || { echo "docs/operations.md lost its backup command" >&2; return 1; }
  command="${command//\/var\/lib\/shop\/app.db/$work/shop.db}"
  command="${command//\/backup\//$work/backup-}"
  eval "$command"
  "$bin/outbox-relay" status --db "$work/backup-app.db" --json | grep -q '"delivered_total":1,'
}

consumer="$source_dir/tests/package/consumer"
# What these checks build (the consumer, the examples, the README's snippets, and in
# `subdirectory` mode the toolkit's libraries) is built without optimisation: they
# check that a project outside the tree finds, compiles, links and runs the toolkit,
# which -O2 does not change, and the subdirectory build took 79 s of CPU in Release
# against 50 s without a build type.
unoptimised=(-DCMAKE_BUILD_TYPE=)
case "$mode" in
  installed)
    "$cmake" --install "$build_dir" --prefix "$work/prefix" >"$work/install.log" 2>&1 \
      || { cat "$work/install.log"; exit 1; }
    "$cmake" -S "$consumer" -B "$work/build" -G Ninja "${unoptimised[@]}" \
      -DCMAKE_PREFIX_PATH="$work/prefix"
    ;;
  subdirectory)
    "$cmake" -S "$consumer" -B "$work/build" -G Ninja "${unoptimised[@]}" \
      -DOUTBOX_SOURCE_DIR="$source_dir"
    ;;
  examples)
    "$cmake" --install "$build_dir" --prefix "$work/prefix" >"$work/install.log" 2>&1 \
      || { cat "$work/install.log"; exit 1; }
    examples=(order_service shipping_consumer idgen_usage)
    # The JetStream consumer needs libnats (Debian: libnats-dev).
    [ -e /usr/include/nats/nats.h ] && examples+=(jetstream_consumer)
    for example in "${examples[@]}"; do
      "$cmake" -S "$source_dir/examples/$example" -B "$work/$example" -G Ninja \
        "${unoptimised[@]}" -DCMAKE_PREFIX_PATH="$work/prefix"
      "$cmake" --build "$work/$example" --parallel 2
    done
    if [ -x "$work/jetstream_consumer/jetstream_consumer" ]; then
      out="$("$work/jetstream_consumer/jetstream_consumer" run --help)"
      grep -q -- "--max-ack-pending" <<<"$out"
    fi
    out="$("$work/order_service/order_service" --db "$work/shop.db" --count 20)"
    grep -q "committed 20 orders" <<<"$out"
    out="$("$work/shipping_consumer/shipping_consumer" --help)"
    grep -q -- "--broker" <<<"$out"
    out="$("$work/idgen_usage/idgen_usage" "$work/ids.state" 5 3)"
    grep -q "worker 5," <<<"$out"
    # The shell example against the installed idgen CLI.
    bash "$source_dir/examples/idgen_shell.sh" "$work/prefix/bin/idgen" >/dev/null
    echo "examples ok: built against the installed tree"
    exit 0
    ;;
  readme)
    "$cmake" --install "$build_dir" --prefix "$work/prefix" >"$work/install.log" 2>&1 \
      || { cat "$work/install.log"; exit 1; }
    mkdir -p "$work/readme"
    # Every ```cpp block of the README becomes snippet_N.cpp.
    awk -v dir="$work/readme" '
      /^```cpp$/ { n++; file = dir "/snippet_" n ".cpp"; inside = 1; next }
      /^```$/ && inside { inside = 0; close(file); next }
      inside { print > file }' "$source_dir/README.md"
    producer="$(grep -l 'Outbox::open' "$work/readme"/snippet_*.cpp | head -n 1)"
    consumer="$(grep -l 'Inbox::open' "$work/readme"/snippet_*.cpp | head -n 1)"
    [ -n "$producer" ] && [ -n "$consumer" ] || { echo "README lost its producer or consumer snippet" >&2; exit 1; }
    cp "$producer" "$work/readme/producer.cpp"
    cp "$consumer" "$work/readme/consumer.cpp"
    # The consumer snippet declares ship(); a reader writes their own.
    cat > "$work/readme/ship.cpp" <<'CPP'
#include <sqlite3.h>
#include <wire/protocol.hpp>
void ship(sqlite3*, const wire::StoredMessage&) {}
CPP
    cat > "$work/readme/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.20)
project(readme_snippets LANGUAGES CXX)
find_package(outbox CONFIG REQUIRED)
add_executable(producer producer.cpp)
target_link_libraries(producer PRIVATE outbox::outbox)
add_executable(consumer consumer.cpp ship.cpp)
target_link_libraries(consumer PRIVATE outbox::outbox outbox::broker)
CMAKE
    "$cmake" -S "$work/readme" -B "$work/readme/build" -G Ninja "${unoptimised[@]}" \
      -DCMAKE_PREFIX_PATH="$work/prefix"
    "$cmake" --build "$work/readme/build" --parallel 2
    (cd "$work" && "$work/readme/build/producer") | grep -q "^queued .* at seq 1$"
    status="$("$work/prefix/bin/outbox-relay" status --db "$work/shop.db" --json)"
    grep -q '"pending":1' <<<"$status"
    run_documented_commands
    echo "readme ok: the snippets build against the installed tree and the documented commands run"
    exit 0
    ;;
  *) echo "usage: check_package.sh installed|subdirectory|examples|readme BUILD SOURCE CMAKE" >&2; exit 2 ;;
esac
"$cmake" --build "$work/build" --parallel 2
"$work/build/consumer" "$work"
