# Every third-party package comes from the system (Debian packages); see
# scripts/lib/packages.sh for the list the scripts install.
find_package(Threads REQUIRED)
find_package(SQLite3 REQUIRED)
find_package(Boost 1.74 REQUIRED)
find_package(spdlog REQUIRED)
find_package(cppzmq REQUIRED)
if(OUTBOX_BUILD_TOOLS OR OUTBOX_BUILD_BENCH OR OUTBOX_BUILD_EXAMPLES OR OUTBOX_BUILD_FUZZ)
  find_package(CLI11 REQUIRED)
endif()
