// What the daemons read from command lines and config files, on any text: the
// duration, size and endpoint parsers and their CLI11 validators never crash, what
// they accept formats back to the same value, and the strict config reader returns
// entries or throws CLI::ConfigError (whose message names FILE:LINE).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <sstream>
#include <string>
#include <string_view>

#include <CLI/CLI.hpp>

#include "cli/args.hpp"
#include "cli/config.hpp"

namespace {

void check_value(const std::string& text) {
  if (auto duration = cli::parse_duration(text)) {
    if (cli::parse_duration(cli::format_duration(*duration)) != duration) std::abort();
  }
  if (auto size = cli::parse_size(text)) {
    if (cli::parse_size(cli::format_size(*size)) != size) std::abort();
  }
  (void)cli::is_loopback_endpoint(text);
  static const CLI::Validator validators[] = {
      cli::duration_check(),
      cli::duration_check(cli::at_least(std::chrono::milliseconds(0), "forever")),
      cli::size_check({.min = 1, .max = 1 << 30, .max_reason = "the largest frame"}),
      cli::count_check(1, 1000),
      cli::bind_endpoint_check(),
      cli::connect_endpoint_check()};
  for (const auto& validator : validators) {
    std::string copy = text;
    (void)validator(copy);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  check_value(text);
  std::istringstream config(text);
  try {
    for (const auto& entry : cli::read_config(config, "fuzz.toml")) {
      for (const auto& value : entry.values) check_value(value);
    }
  } catch (const CLI::ConfigError& error) {
    if (std::string_view(error.what()).rfind("fuzz.toml:", 0) != 0) std::abort();
  }
  return 0;
}
