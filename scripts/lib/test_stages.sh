# shellcheck shell=bash
# The stages of scripts/test. Source after common.sh; each function returns the
# stage's exit code.

OUTBOX_SANITIZER_DIR="$OUTBOX_ROOT/tests/sanitizers"

outbox_jobs() { nproc 2>/dev/null || echo 2; }

# outbox_children_cpu <variable>: sets <variable> to the CPU seconds (user + system)
# of every child process this shell has waited for so far, with theirs (compilers
# under ninja, tests under ctest, daemons under tests). Its difference over a stage
# is that stage's CPU time, which unlike the wall time does not depend on what else
# the machine runs. Call it directly, never in $(...): a subshell has no children.
outbox_children_cpu() {
  local file
  file="$(mktemp)" || return 1
  times >"$file"
  # Second line: "0m12.345s 0m1.234s" (the children's user and system time).
  printf -v "$1" '%s' "$(awk 'NR == 2 {
      total = 0
      for (i = 1; i <= 2; ++i) { split($i, part, "m"); total += part[1] * 60 + part[2] }
      printf "%.0f", total
    }' "$file")"
  rm -f "$file"
}

# The plain build (build/, RelWithDebInfo, warnings as errors) and the whole suite;
# the arguments go to ctest.
# With OUTBOX_STATIC_BACKGROUND=1 (scripts/test when the static stage runs too) the
# static stage starts in the background as soon as the build is done (see
# outbox_static_start).
# CI (CI=true) builds it with -g1 instead of -g: line tables without the variables'
# and types' debug information, which nothing in a CI run reads; it takes 15 to 42
# per cent of the CPU time off each file (the Catch2 test files the most, see
# README's CI paragraph), and the same warnings are checked. CI also builds it in
# unity batches (OUTBOX_UNITY_BUILD, as the sanitizer and fuzz trees): a third less
# CPU (README's CI paragraph). The libraries' and daemons' files still compile one
# by one in the static stage's clang-tidy tree (an include a file lacks is caught
# there); a developer's build/ stays one file per unit, where an edit recompiles one
# file rather than its batch, and compiles the tests and benchmarks one by one too.
outbox_stage_plain() {
  local flags=()
  [ "${CI:-}" != true ] ||
    flags+=(-DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O2 -g1 -DNDEBUG" -DOUTBOX_UNITY_BUILD=ON)
  outbox_build "$OUTBOX_ROOT/build" RelWithDebInfo -DOUTBOX_WARNINGS_AS_ERRORS=ON "${flags[@]}" ||
    return $?
  [ "${OUTBOX_STATIC_BACKGROUND:-}" != 1 ] || outbox_static_start
  outbox_log "running tests (build/)"
  # The console output goes to build/ctest-console.log too (outbox_failed_tests).
  ctest --test-dir "$OUTBOX_ROOT/build" --output-on-failure --parallel "$(outbox_jobs)" "$@" |
    tee "$OUTBOX_ROOT/build/ctest-console.log"
  return "${PIPESTATUS[0]}"
}

# Formatting and clang-tidy over the project's own sources (tidy configures its own
# tree of unity batches, build/tidy-unity, and builds nothing: see scripts/check-tidy).
outbox_stage_static() {
  local status=0
  bash "$OUTBOX_ROOT/scripts/check-format" || status=$?
  local tidy_status=0
  bash "$OUTBOX_ROOT/scripts/check-tidy" "$OUTBOX_ROOT/build" || tidy_status=$?
  [ $status -ne 0 ] || status=$tidy_status
  return $status
}

# outbox_static_start: runs the static stage in the background at the lowest CPU
# priority (nice 19), its output in build/static-stage.log; outbox_static_finish
# waits for it. clang-tidy is minutes of CPU that need no build (it configures
# trees of its own, scripts/check-tidy), and the suites leave part of the cores idle
# (their tests wait on daemons, sockets and child processes): in the background it
# takes that idle time during the plain, fuzz and sanitizer stages instead of
# minutes of its own, and at nice 19 it takes next to nothing from a build or a test
# that wants the core.
# Sets OUTBOX_STATIC_PID. The job runs in a process group of its own (set -m), so
# that outbox_static_stop can end it and its clang-tidy processes, and a Ctrl-C
# reaches scripts/test, whose exit trap does that.
outbox_static_start() {
  local log="$OUTBOX_ROOT/build/static-stage.log" started cpu_started=0 cpu_now=0 result
  outbox_log "static stage started in the background at nice 19 (log: $log)"
  set -m
  (
    renice -n 19 -p "$BASHPID" >/dev/null
    started=$SECONDS
    outbox_children_cpu cpu_started
    outbox_stage_static
    result=$?
    outbox_children_cpu cpu_now
    outbox_log "stage static: exit $result after $((SECONDS - started)) s in the background" \
      "(CPU $((cpu_now - cpu_started)) s, user + system)"
    exit $result
  ) </dev/null >"$log" 2>&1 &
  OUTBOX_STATIC_PID=$!
  set +m
}

# outbox_static_stop: ends the background static stage if it still runs (scripts/test
# calls it on exit, so an interrupted run leaves no clang-tidy behind).
outbox_static_stop() {
  [ -n "${OUTBOX_STATIC_PID:-}" ] || return 0
  kill -- "-$OUTBOX_STATIC_PID" 2>/dev/null
  OUTBOX_STATIC_PID=""
}

# outbox_static_finish: waits for the static stage outbox_static_start started,
# prints its output and returns its exit code.
outbox_static_finish() {
  local result=0
  outbox_log "waiting for the static stage (started in the background after the plain build)"
  wait "$OUTBOX_STATIC_PID" || result=$?
  OUTBOX_STATIC_PID=""
  cat "$OUTBOX_ROOT/build/static-stage.log" >&2
  return $result
}

# outbox_failed_tests <build dir>: a block per test that failed in the last ctest run
# in <build dir> (from ctest's Testing/Temporary/LastTest.log, which each run
# rewrites, and the failure list of its console output, <build dir>/ctest-console.log,
# which alone says "Timeout"): its name, its status and time, and the lines of its
# output that say why (from three lines before the first line that reads like a failure, or else the
# output's last lines). scripts/test prints these blocks once more at its very end,
# so that the last lines of a long log, which may be all that a CI page keeps, still
# name each failure and its reason.
outbox_failed_tests() {
  local log="$1/Testing/Temporary/LastTest.log" console="$1/ctest-console.log"
  [ -f "$log" ] || { echo "  (no test ran: its errors are above)"; return 0; }
  [ -f "$console" ] || console=/dev/null
  awk '
    # The list at the end of the console output: "  3 - name (Timeout)".
    FILENAME != ARGV[2] {
      if (match($0, /^[ \t]+[0-9]+ - .* \([A-Za-z ]+\)$/)) {
        line = $0; sub(/^[ \t]+[0-9]+ - /, "", line)
        cause = line; sub(/.* \(/, "", cause); sub(/\)$/, "", cause)
        sub(/ \([A-Za-z ]+\)$/, "", line)
        why[line] = cause
      }
      next
    }
    function report(   first, from, to, i) {
      # A test with a pass regular expression that matched says "Test Pass Reason:".
      if (name == "" || status == "Test Passed." || status == "Test Pass Reason:") return
      if (++failed > 6) { print "  FAILED " name; return }
      if (name in why) status = why[name]
      print "  FAILED " name " (" status ", " elapsed ")"
      # The closing lines of Catch2 (a rule, the counts) say nothing the status does not.
      while (n > 0 && out[n] ~ /^(=+|test cases: .*|assertions: .*|All tests passed.*|)$/) --n
      first = 0
      for (i = 1; i <= n && !first; ++i)
        if (out[i] ~ /FAILED|[Ee]rror|ERROR|\*\*\*|[Ee]xception|terminate|[Aa]ssert|[Ss]anitizer|[Tt]imeout|timed out/) first = i
      if (first) { from = first - 3; to = first + 10 } else { from = n - 11; to = n }
      if (from < 1) from = 1
      if (to > n) to = n
      for (i = from; i <= to; ++i) print "    | " substr(out[i], 1, 300)
      if (first && n > to) {
        print "    | ..."
        for (i = (n - 2 > to ? n - 2 : to + 1); i <= n; ++i) print "    | " substr(out[i], 1, 300)
      }
    }
    /^[0-9]+\/[0-9]+ Testing: / {
      report()
      name = $0; sub(/^[0-9]+\/[0-9]+ Testing: /, "", name)
      n = 0; in_output = 0; status = ""; elapsed = ""
      next
    }
    /^Output:$/ && name != "" && status == "" { in_output = 1; getline; next }
    /^<end of output>$/ { in_output = 0; next }
    in_output { out[++n] = $0; next }
    /^Test time = / { elapsed = $0; sub(/^Test time = +/, "", elapsed); next }
    /^Test [A-Z]/ && status == "" && name != "" { status = $0; next }
    END { report(); if (failed == 0) print "  (every test in " FILENAME " passed)" }
  ' "$console" "$log"
}

# outbox_sanitizer_env <report dir>: the run-time options of every sanitizer. Reports
# go to files in <report dir> (one per process), so that a report in a daemon a test
# started, stopped or killed is seen even when the test never looks at its stderr.
outbox_sanitizer_env() {
  local reports="$1"
  export ASAN_OPTIONS="log_path=$reports/asan:detect_leaks=1:detect_stack_use_after_return=1:check_initialization_order=1:strict_init_order=1:abort_on_error=0"
  export LSAN_OPTIONS="suppressions=$OUTBOX_SANITIZER_DIR/lsan.supp:print_suppressions=0"
  export UBSAN_OPTIONS="log_path=$reports/ubsan:print_stacktrace=1:halt_on_error=1:suppressions=$OUTBOX_SANITIZER_DIR/ubsan.supp"
  # history_size=7 (the most): a race whose earlier access was long ago still shows
  # that access's stack, which is what tells a libzmq hand-off (tsan.supp) from
  # ours; with less, TSan reports it with "failed to restore the stack".
  export TSAN_OPTIONS="log_path=$reports/tsan:halt_on_error=0:second_deadlock_stack=1:history_size=7:suppressions=$OUTBOX_SANITIZER_DIR/tsan.supp:print_suppressions=0"
}

# outbox_sanitizer_reports <report dir>: prints every report and fails if there is one.
outbox_sanitizer_reports() {
  local reports="$1" file found=0
  for file in "$reports"/*; do
    [ -s "$file" ] || continue
    found=$((found + 1))
    echo "==== sanitizer report $file" >&2
    cat "$file" >&2
  done
  if [ $found -ne 0 ]; then
    echo "error: $found sanitizer report(s) in $reports" >&2
    return 1
  fi
}

# outbox_stage_tree <stage>: the build tree, under the project root, in which the stage
# runs ctest (nothing for the stages without a suite of their own: static, fuzz).
outbox_stage_tree() {
  case "$1" in
    plain) echo build ;;
    asan | tsan) echo "build-$1" ;;
  esac
}

# outbox_stage_sanitizer asan|tsan <sanitizers>: builds build-<name>/ with
# -fsanitize=<sanitizers> and runs its share of the suite: the whole suite under
# ASan+UBSan, the tests with threads under TSan (label-based, see below). The
# package checks build a project against the installed tree with plain flags, so
# they run in build/ only.
outbox_stage_sanitizer() {
  local name="$1" sanitizers="$2"
  local build_dir
  build_dir="$OUTBOX_ROOT/$(outbox_stage_tree "$name")"
  # TSan: every test runs threads of ours or of libzmq except a few pure parsers,
  # so it runs the suite without the long fault runs and the power-loss runs
  # (crash images checked one after another on one thread: about 5 minutes each
  # under TSan), which ASan covers; the store's threads run in test_broker_store.
  # The TSan tree does not build them either (OUTBOX_TESTS_NOT_BUILT).
  local exclude="package" not_built=""
  [ "$name" != tsan ] || { exclude="package|faults|power" && not_built="faults;power"; }
  # Both trees compile the Catch2 test files at -O0 (OUTBOX_TEST_FILES_O0,
  # tests/CMakeLists.txt): what is under test (libraries, daemons, helper programs)
  # keeps -O1.
  # -O1 -g1 (line tables): what the sanitizers' reports need, and about half the
  # compile time of -O2 -g, which keeps CI's run within its budget; a unity build
  # (OUTBOX_UNITY_BUILD) parses the heavy headers once per batch of files instead
  # of once per file. The power-loss tests check 250 crash points each instead of
  # 1,000 (the same checks; the plain tree runs the 1,000).
  outbox_build "$build_dir" RelWithDebInfo -DOUTBOX_WARNINGS_AS_ERRORS=ON \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" -DOUTBOX_UNITY_BUILD=ON \
    -DOUTBOX_SANITIZE="$sanitizers" -DOUTBOX_BUILD_BENCH=OFF -DOUTBOX_INSTALL=OFF \
    -DOUTBOX_POWER_CRASH_POINTS=250 -DOUTBOX_TESTS_NOT_BUILT="$not_built" \
    -DOUTBOX_TEST_FILES_O0=ON || return $?
  local reports="$build_dir/sanitizer-reports"
  rm -rf "$reports"
  mkdir -p "$reports"
  local status=0
  (
    outbox_sanitizer_env "$reports"
    outbox_log "running tests ($build_dir, -fsanitize=$sanitizers, without: $exclude)"
    ctest --test-dir "$build_dir" --output-on-failure --parallel "$(outbox_jobs)" \
      --label-exclude "^($exclude)\$" --timeout 900 | tee "$build_dir/ctest-console.log"
    exit "${PIPESTATUS[0]}"
  ) || status=$?
  outbox_sanitizer_reports "$reports" || { [ $status -ne 0 ] || status=1; }
  return $status
}

# outbox_fuzz_wait_one <array name>: waits for one of the fuzz runs in the associative
# array (pid -> target name) to end, removes it and prints its figures, or its log's
# tail and an error; returns 1 for a failed run. Needs $build_dir.
outbox_fuzz_wait_one() {
  local -n runs="$1"
  local pid name result=0
  wait -n -p pid "${!runs[@]}" || result=$?
  name="${runs[$pid]}"
  unset "runs[$pid]"
  if [ $result -ne 0 ]; then
    tail -n 60 "$build_dir/$name.log" >&2
    echo "error: $name failed with exit $result (log: $build_dir/$name.log)" >&2
    return 1
  fi
  echo "$name: $(grep -E '^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::peak_rss_mb)' \
    "$build_dir/$name.log" | tr '\n' ' ')" >&2
}

# outbox_stage_fuzz <seconds>: builds the libFuzzer targets with clang into
# build-fuzz/ and runs each for <seconds> from its seed corpus (tests/fuzz/corpus/);
# a crash, a leak, a timeout or an out-of-memory fails the stage and leaves the
# input in build-fuzz/artifacts/.
outbox_stage_fuzz() {
  local seconds="$1"
  local build_dir="$OUTBOX_ROOT/build-fuzz"
  local clang
  clang="$(command -v clang++-14 || command -v clang++)" || {
    echo "error: the fuzz targets need clang++ (Debian: clang-14)" >&2
    return 11
  }
  outbox_log "configuring $build_dir (clang, libFuzzer, ASan+UBSan)"
  CXX="$clang" cmake -S "$OUTBOX_ROOT" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DOUTBOX_WARNINGS_AS_ERRORS=ON -DOUTBOX_BUILD_FUZZ=ON -DOUTBOX_BUILD_TESTS=OFF \
    -DOUTBOX_BUILD_BENCH=OFF -DOUTBOX_BUILD_EXAMPLES=OFF -DOUTBOX_BUILD_TOOLS=OFF \
    -DOUTBOX_INSTALL=OFF -DOUTBOX_UNITY_BUILD=ON || return 11
  outbox_log "building $build_dir"
  cmake --build "$build_dir" --parallel "$(outbox_jobs)" --target fuzz_targets || return 11
  local status=0 target name corpus work jobs
  jobs="$(outbox_jobs)"
  mkdir -p "$build_dir/artifacts"
  # The targets run side by side, one per core: each still gets <seconds> of its own.
  local -A running=()
  for target in "$build_dir"/fuzz/fuzz_*; do
    [ -x "$target" ] || continue
    name="${target##*/}"
    corpus="$OUTBOX_ROOT/tests/fuzz/corpus/${name#fuzz_}"
    work="$build_dir/corpus/${name#fuzz_}"
    mkdir -p "$work"
    while [ "${#running[@]}" -ge "$jobs" ]; do
      outbox_fuzz_wait_one running || status=1
    done
    outbox_log "fuzzing $name for ${seconds}s"
    # New inputs go to the scratch corpus in build-fuzz/, never into the repository.
    "$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$build_dir/artifacts/$name-" "$work" "$corpus" \
      >"$build_dir/$name.log" 2>&1 &
    running[$!]="$name"
  done
  while [ "${#running[@]}" -gt 0 ]; do
    outbox_fuzz_wait_one running || status=1
  done
  return $status
}
