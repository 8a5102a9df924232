// Reading back the address a daemon under test bound and wrote to a file
// (--endpoint-file, --metrics-address-file). For Catch2 tests: a failure fails
// the test through REQUIRE. Not thread-safe (one thread owns a ChildProcess).
#pragma once

#include <chrono>
#include <filesystem>
#include <string>
#include <string_view>

#include <catch2/catch.hpp>

#include "test_support.hpp"

namespace test_support {

// Waits for `process` to write `file` and returns its first line, which must start
// with `prefix` (e.g. "tcp://127.0.0.1:"); fails the test if the process exits
// first or takes over 20 s.
inline std::string wait_for_written_address(ChildProcess& process,
                                            const std::filesystem::path& file,
                                            std::string_view prefix) {
  bool written = wait_until([&] { return std::filesystem::exists(file) || !process.running(); },
                            std::chrono::seconds(20));
  INFO(process.stderr_text());
  REQUIRE(written);
  REQUIRE(process.running());
  auto text = read_file(file);
  auto address = text.substr(0, text.find('\n'));
  REQUIRE(address.rfind(prefix, 0) == 0);
  return address;
}

}  // namespace test_support
