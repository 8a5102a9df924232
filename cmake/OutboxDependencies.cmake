# Every third-party package comes from the system (Debian packages); see
# OUTBOX_PACKAGES in scripts/lib/common.sh for the list the scripts install.
find_package(Threads REQUIRED)
find_package(SQLite3 REQUIRED)
find_package(Boost 1.74 REQUIRED)
find_package(spdlog REQUIRED)
find_package(cppzmq REQUIRED)
# XXH64 for the broker's dedup index (Debian: libxxhash-dev), which ships no
# CMake package.
outbox_find_library(XXHASH HEADER xxhash.h LIBRARY xxhash)
if(NOT XXHASH_FOUND)
  message(FATAL_ERROR "libxxhash was not found (install libxxhash-dev)")
endif()
if(OUTBOX_BUILD_TOOLS OR OUTBOX_BUILD_BENCH OR OUTBOX_BUILD_EXAMPLES OR OUTBOX_BUILD_FUZZ)
  find_package(CLI11 REQUIRED)
  # The daemons serve /metrics, /healthz and /readyz with cpp-httplib (Debian:
  # libcpp-httplib-dev). Found through its pkg-config file rather than by
  # header and library: Debian builds the library with OpenSSL, zlib and
  # Brotli support, and every file including httplib.h must see the same
  # definitions (the .pc file carries them).
  find_package(PkgConfig REQUIRED)
  pkg_check_modules(CPP_HTTPLIB REQUIRED IMPORTED_TARGET cpp-httplib)
endif()
# JSON for the programs' --json output and for the tests that read it (Debian:
# nlohmann-json3-dev; header-only, never part of the installed libraries).
if(OUTBOX_BUILD_TOOLS OR OUTBOX_BUILD_BENCH OR OUTBOX_BUILD_EXAMPLES OR OUTBOX_BUILD_FUZZ
   OR OUTBOX_BUILD_TESTS)
  find_package(nlohmann_json 3 REQUIRED)
endif()

# The NATS C client (Debian: libnats-dev), optional: the relay's JetStream sink,
# the tests and the benchmark that use it are left out without it. Looked up
# here once so that every directory sees the same NATS_FOUND.
outbox_find_library(NATS HEADER nats/nats.h LIBRARY nats)
