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
trap 'rm -rf "$work"' EXIT

consumer="$source_dir/tests/package/consumer"
case "$mode" in
  installed)
    "$cmake" --install "$build_dir" --prefix "$work/prefix" >"$work/install.log" 2>&1 \
      || { cat "$work/install.log"; exit 1; }
    "$cmake" -S "$consumer" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_PREFIX_PATH="$work/prefix"
    ;;
  subdirectory)
    "$cmake" -S "$consumer" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DOUTBOX_SOURCE_DIR="$source_dir"
    ;;
  examples)
    "$cmake" --install "$build_dir" --prefix "$work/prefix" >"$work/install.log" 2>&1 \
      || { cat "$work/install.log"; exit 1; }
    for example in order_service shipping_consumer idgen_usage; do
      "$cmake" -S "$source_dir/examples/$example" -B "$work/$example" -G Ninja \
        -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$work/prefix"
      "$cmake" --build "$work/$example" --parallel 2
    done
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
    "$cmake" -S "$work/readme" -B "$work/readme/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_PREFIX_PATH="$work/prefix"
    "$cmake" --build "$work/readme/build" --parallel 2
    (cd "$work" && "$work/readme/build/producer") | grep -q "^queued .* at seq 1$"
    status="$("$work/prefix/bin/outbox-relay" status --db "$work/shop.db" --json)"
    grep -q '"pending":1' <<<"$status"
    echo "readme ok: the producer and consumer snippets build against the installed tree"
    exit 0
    ;;
  *) echo "usage: check_package.sh installed|subdirectory|examples|readme BUILD SOURCE CMAKE" >&2; exit 2 ;;
esac
"$cmake" --build "$work/build" --parallel 2
"$work/build/consumer" "$work"
