#!/usr/bin/env bash
# check_package.sh installed|subdirectory|examples <build dir> <source dir> <cmake>
# Builds tests/package/consumer against the toolkit and runs it. `examples`
# instead builds each program under examples/ as its own project against the
# installed tree and runs it briefly.
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
  *) echo "usage: check_package.sh installed|subdirectory|examples BUILD SOURCE CMAKE" >&2; exit 2 ;;
esac
"$cmake" --build "$work/build" --parallel 2
"$work/build/consumer" "$work"
