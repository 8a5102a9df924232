# OUTBOX_SANITIZE: a comma-separated list handed to -fsanitize= for every target of
# this tree (e.g. "address,undefined" or "thread"). scripts/test --sanitize builds
# such trees in build-asan/ and build-tsan/; tests/sanitizers/ holds the run-time
# options' suppressions for third-party code.
#
# OUTBOX_BUILD_FUZZ (clang only) compiles the whole tree with libFuzzer's coverage
# (fuzzer-no-link) and, unless OUTBOX_SANITIZE says otherwise, ASan and UBSan, so a
# fuzz target finds bugs in the libraries, not only in its own file.
set(OUTBOX_SANITIZE "" CACHE STRING "Sanitizers for every target: address,undefined or thread")

set(outbox_sanitize_flags "${OUTBOX_SANITIZE}")
if(OUTBOX_BUILD_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "OUTBOX_BUILD_FUZZ needs clang (e.g. CXX=clang++-14), not ${CMAKE_CXX_COMPILER_ID}")
  endif()
  if(NOT outbox_sanitize_flags)
    set(outbox_sanitize_flags "address,undefined")
  endif()
  string(APPEND outbox_sanitize_flags ",fuzzer-no-link")
endif()

if(outbox_sanitize_flags)
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    message(FATAL_ERROR "OUTBOX_SANITIZE needs GCC or Clang, not ${CMAKE_CXX_COMPILER_ID}")
  endif()
  if(outbox_sanitize_flags MATCHES "thread" AND outbox_sanitize_flags MATCHES "address")
    message(FATAL_ERROR "OUTBOX_SANITIZE: thread and address cannot be combined")
  endif()
  # -fno-sanitize-recover: a UBSan finding ends the program, so no test passes over one.
  add_compile_options(-fsanitize=${outbox_sanitize_flags} -fno-sanitize-recover=all
                      -fno-omit-frame-pointer)
  add_link_options(-fsanitize=${outbox_sanitize_flags})
endif()
