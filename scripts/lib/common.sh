# Shared by scripts/test, scripts/demo and scripts/bench: installs the Debian
# packages the build needs (only those missing) and builds the tree.
# Source it; it defines functions and sets OUTBOX_ROOT.

OUTBOX_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

OUTBOX_PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  libsqlite3-dev sqlite3
  libxxhash-dev
  libzmq3-dev cppzmq-dev
  libboost-dev
  libspdlog-dev
  catch2
  libcli11-dev
  nlohmann-json3-dev
  libbenchmark-dev
  nats-server libnats-dev
  libhiredis-dev redis-server
  python3 python3-zmq
  # scripts/test's fuzz and static stages: libFuzzer and the sanitizer runtimes for
  # clang, clang-tidy (with run-clang-tidy) and clang-format, all version 14.
  clang-14 libclang-rt-14-dev clang-tidy-14 clang-format-14
  libcpp-httplib-dev prometheus
  # the linker of every tree when the compiler takes it (cmake/OutboxLinker.cmake):
  # it links the ~60 programs in under half the CPU time of GNU ld.
  lld
)

outbox_log() { printf '==> %s\n' "$*" >&2; }

outbox_install_packages() {
  local missing=()
  local package
  for package in "${OUTBOX_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
      missing+=("$package")
    fi
  done
  if [ ${#missing[@]} -eq 0 ]; then
    return 0
  fi
  outbox_log "installing missing packages: ${missing[*]}"
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      sudo=(sudo)
    else
      echo "error: packages missing (${missing[*]}) and not running as root; install them or rerun as root" >&2
      return 10
    fi
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -q || return 10
  "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" || return 10
}

# outbox_build <build dir> <build type> [extra cmake args...]
outbox_build() {
  local build_dir="$1" build_type="$2"
  shift 2
  local jobs
  jobs="$(nproc 2>/dev/null || echo 2)"
  outbox_log "configuring $build_dir ($build_type)"
  cmake -S "$OUTBOX_ROOT" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE="$build_type" "$@" || return 11
  outbox_log "building $build_dir"
  cmake --build "$build_dir" --parallel "$jobs" || return 11
}
