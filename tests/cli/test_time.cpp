// The one time format of the programs' output and JSON logs.
#include <catch2/catch.hpp>

#include "cli/time.hpp"

using namespace std::chrono;

TEST_CASE("times print as UTC ISO 8601 with milliseconds, whatever the time zone") {
  CHECK(cli::format_utc_time(sys_time<milliseconds>{}) == "1970-01-01T00:00:00.000Z");
  CHECK(cli::format_utc_time(sys_time<milliseconds>{milliseconds(1764000000123)}) ==
        "2025-11-24T16:00:00.123Z");
  CHECK(cli::format_utc_time(sys_days{2024y / February / 29} + 23h + 59min + 59s + 999ms) ==
        "2024-02-29T23:59:59.999Z");
  // Before 1970 the milliseconds still count forward from the second below.
  CHECK(cli::format_utc_time(sys_time<milliseconds>{milliseconds(-1500)}) ==
        "1969-12-31T23:59:58.500Z");
  // Finer clocks (spdlog's records) are cut to the millisecond below.
  CHECK(cli::format_utc_time(sys_time<nanoseconds>{nanoseconds(1'999'999)}) ==
        "1970-01-01T00:00:00.001Z");
}
