// Values given on command lines and in config files: durations, sizes, counts
// and endpoints, as pure parsers and as CLI11 validators that refuse a bad value
// where it is read (a flag or a config file key) with a message naming it.
// Everything here is safe from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>

namespace cli {

// "1500ms", "30s", "15m", "24h", "7d"; "0" (no unit needed for nothing) and the
// words "forever" and "never" read as 0. Empty on anything else: a bare number
// other than 0 (it could mean seconds or hours), a negative number, an unknown
// unit, an overflow.
std::optional<std::chrono::milliseconds> parse_duration(std::string_view text);
// The shortest exact spelling with a unit ("10s", "1500ms", "7d"), `zero` for 0.
std::string format_duration(std::chrono::milliseconds duration, std::string_view zero = "0");

// "1048576", "512k", "1m", "1g" (binary multiples; KiB/MiB/GiB spellings too).
std::optional<std::uint64_t> parse_size(std::string_view text);
// "256m", "1g", "1536k", "100" (the largest exact binary unit).
std::string format_size(std::uint64_t bytes);

// This machine's physical memory in bytes (0 when the system does not say).
std::uint64_t physical_memory_bytes();

// True for tcp:// endpoints on 127.0.0.0/8, ::1 or localhost, and for ipc://
// and inproc:// (not reachable from other machines).
bool is_loopback_endpoint(std::string_view endpoint);

// ---- CLI11 validators ----------------------------------------------------------
// Each returns a message without the flag name; CLI11 prefixes it ("--lease: ...").

struct DurationLimits {
  std::chrono::milliseconds min{1};  // 0 allows "0"
  std::chrono::milliseconds max = std::chrono::hours(24 * 3650);
  // The word that also means 0 ("forever", "never"), accepted only when min
  // is 0; a zero duration ("0s") is then refused, naming the word.
  std::string zero_word;
};
// Limits with the default maximum: at least `min`; `zero_word` as above.
DurationLimits at_least(std::chrono::milliseconds min, std::string zero_word = {});
CLI::Validator duration_check(DurationLimits limits = {});

struct SizeLimits {
  std::uint64_t min = 0;
  std::uint64_t max = std::numeric_limits<std::uint64_t>::max();
  // Why max is the maximum, e.g. "the largest frame the broker accepts".
  std::string max_reason;
  bool within_physical_memory = false;  // also refuse more than this machine has
};
CLI::Validator size_check(SizeLimits limits = {});

// Refuses an empty value: "must not be empty: `what`".
CLI::Validator non_empty_check(std::string what);

// A whole number in [min, max] written in digits only ("-1", "1.5", "1e3" refused).
CLI::Validator count_check(std::uint64_t min = 0,
                           std::uint64_t max = std::numeric_limits<std::int64_t>::max());

// ZeroMQ endpoints: tcp://HOST:PORT with PORT 1-65535 (or * when binding, to let
// the system pick a free one), ipc://PATH, inproc://NAME.
CLI::Validator bind_endpoint_check();
CLI::Validator connect_endpoint_check();

// ---- typed options -------------------------------------------------------------

// An option that stores a checked duration in `target`; its help shows the
// current value of `target` as the default.
CLI::Option* add_duration_option(CLI::App* app, const std::string& name,
                                 std::chrono::milliseconds& target, const std::string& description,
                                 DurationLimits limits = {});
CLI::Option* add_size_option(CLI::App* app, const std::string& name, std::uint64_t& target,
                             const std::string& description, SizeLimits limits = {});

// An option whose value is one of `choices`' names (CLI::IsMember refuses any
// other word where it is read) and that stores the matching value in `target`;
// the help shows the name of `target`'s current value as the default.
template <typename Value>
CLI::Option* add_choice_option(CLI::App* app, const std::string& name, Value& target,
                               std::vector<std::pair<std::string, Value>> choices,
                               const std::string& description) {
  std::vector<std::string> names;
  names.reserve(choices.size());
  for (const auto& choice : choices) names.push_back(choice.first);
  auto* option = app->add_option(
      name,
      [&target, choices](const CLI::results_t& results) {
        for (const auto& [choice_name, value] : choices) {
          if (choice_name == results.back()) {
            target = value;
            return true;
          }
        }
        return false;
      },
      description, false,
      [&target, choices] {
        for (const auto& [choice_name, value] : choices) {
          if (value == target) return choice_name;
        }
        return std::string();
      });
  option->type_name("TEXT")->type_size(1)->check(CLI::IsMember(std::move(names)));
  option->capture_default_str();
  return option;
}

// ---- options every program declares the same way ------------------------------

// --log-level: trace, debug, info, warn, error, critical or off (what
// make_stderr_logger takes); the help shows `level`'s current value.
CLI::Option* add_log_level_option(CLI::App* app, std::string& level);
// --log-format: text or json (make_stderr_logger).
CLI::Option* add_log_format_option(CLI::App* app, std::string& format);
// --curve-server-public-key-file and --curve-secret-key-file of a client of a
// CURVE broker (`client` names it in the help: "this relay"). Each must name
// an existing file; whether both are given, and what the files hold, the
// program checks when it reads them.
void add_curve_client_options(CLI::App* app, std::string& server_public_key_file,
                              std::string& secret_key_file, const std::string& client);

// Parses the command line (in the usual order, without the program name).
// Help goes to stdout (returns exit_ok); a bad flag, value or config file to
// stderr as one line "program: message" (returns exit_usage). Empty when the
// program should go on.
std::optional<int> parse_command_line(CLI::App& app, const std::string& program,
                                      std::vector<std::string> args);

}  // namespace cli
