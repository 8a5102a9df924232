#!/usr/bin/env bash
# check_package.sh installed|subdirectory <build dir> <source dir> <cmake>
# Builds tests/package/consumer against the toolkit and runs it.
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
  *) echo "usage: check_package.sh installed|subdirectory BUILD SOURCE CMAKE" >&2; exit 2 ;;
esac
"$cmake" --build "$work/build" --parallel 2
"$work/build/consumer" "$work"
