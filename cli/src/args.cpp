#include "cli/args.hpp"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <iostream>
#include <limits>
#include <string>
#include <utility>

#include "cli/process.hpp"

namespace cli {
namespace {

using std::chrono::milliseconds;

std::string lower(std::string_view text) {
  std::string out(text);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// Splits "15m" into 15 and "m"; empty when the number part is missing or overflows.
std::optional<std::pair<std::uint64_t, std::string>> number_and_unit(std::string_view text) {
  std::uint64_t value = 0;
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end == text.data()) return std::nullopt;
  return std::pair{value, lower(std::string_view(end, text.data() + text.size() - end))};
}

bool multiply(std::uint64_t& value, std::uint64_t factor) {
  if (factor != 0 && value > std::numeric_limits<std::uint64_t>::max() / factor) return false;
  value *= factor;
  return true;
}

bool all_digits(std::string_view text) {
  return !text.empty() &&
         std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
}

struct Unit {
  const char* name;
  std::uint64_t factor;
};
constexpr Unit duration_units[] = {
    {"d", 86'400'000}, {"h", 3'600'000}, {"m", 60'000}, {"s", 1000}, {"ms", 1}};
constexpr Unit size_units[] = {{"g", 1024ull * 1024 * 1024}, {"m", 1024 * 1024}, {"k", 1024}};

// Checks the port of a tcp:// endpoint; empty when it is fine.
std::string endpoint_problem(const std::string& endpoint, bool binding) {
  if (endpoint.rfind("ipc://", 0) == 0 || endpoint.rfind("inproc://", 0) == 0) {
    return endpoint.find("://") + 3 < endpoint.size() ? "" : "'" + endpoint + "' names no path";
  }
  if (endpoint.rfind("tcp://", 0) != 0) {
    return "'" + endpoint + "' is not an endpoint (tcp://HOST:PORT, ipc://PATH)";
  }
  auto colon = endpoint.rfind(':');
  if (colon < 6 || colon + 1 >= endpoint.size() || colon == 5) {
    return "'" + endpoint + "' has no port (tcp://HOST:PORT)";
  }
  auto port = std::string_view(endpoint).substr(colon + 1);
  auto host = std::string_view(endpoint).substr(6, colon - 6);
  if (host.empty()) return "'" + endpoint + "' has no host (tcp://HOST:PORT)";
  if (port == "*") {
    return binding ? "" : "'" + endpoint + "': port * only makes sense when binding";
  }
  std::uint64_t value = 0;
  auto [end, error] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (!all_digits(port) || error != std::errc() || end != port.data() + port.size() || value < 1 ||
      value > 65535) {
    return "'" + endpoint + "': port '" + std::string(port) + "' is not 1-65535" +
           (binding ? " (or * for a free port)" : "");
  }
  return "";
}

}  // namespace

std::optional<milliseconds> parse_duration(std::string_view text) {
  auto lowered = lower(text);
  if (lowered == "forever" || lowered == "never" || lowered == "0") return milliseconds(0);
  auto parsed = number_and_unit(text);
  if (!parsed) return std::nullopt;
  auto [value, unit] = *parsed;
  std::uint64_t factor = 0;
  if (unit == "ms")
    factor = 1;
  else if (unit == "s")
    factor = 1000;
  else if (unit == "m" || unit == "min")
    factor = 60'000;
  else if (unit == "h")
    factor = 3'600'000;
  else if (unit == "d")
    factor = 86'400'000;
  else
    return std::nullopt;  // also a bare number: seconds or hours?
  if (!multiply(value, factor) ||
      value > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
    return std::nullopt;
  }
  return milliseconds(static_cast<std::int64_t>(value));
}

std::string format_duration(milliseconds duration, std::string_view zero) {
  if (duration.count() <= 0) return std::string(zero);
  auto value = static_cast<std::uint64_t>(duration.count());
  for (const auto& unit : duration_units) {
    if (value % unit.factor == 0) return std::to_string(value / unit.factor) + unit.name;
  }
  return std::to_string(value) + "ms";
}

std::optional<std::uint64_t> parse_size(std::string_view text) {
  auto parsed = number_and_unit(text);
  if (!parsed) return std::nullopt;
  auto [value, unit] = *parsed;
  std::uint64_t factor = 0;
  if (unit.empty() || unit == "b")
    factor = 1;
  else if (unit == "k" || unit == "kib" || unit == "kb")
    factor = 1024;
  else if (unit == "m" || unit == "mib" || unit == "mb")
    factor = 1024 * 1024;
  else if (unit == "g" || unit == "gib" || unit == "gb")
    factor = 1024ull * 1024 * 1024;
  else
    return std::nullopt;
  if (!multiply(value, factor)) return std::nullopt;
  return value;
}

std::string format_size(std::uint64_t bytes) {
  if (bytes == 0) return "0";
  for (const auto& unit : size_units) {
    if (bytes % unit.factor == 0) return std::to_string(bytes / unit.factor) + unit.name;
  }
  return std::to_string(bytes);
}

std::uint64_t physical_memory_bytes() {
  auto pages = ::sysconf(_SC_PHYS_PAGES);
  auto page_size = ::sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page_size <= 0) return 0;
  return static_cast<std::uint64_t>(pages) * static_cast<std::uint64_t>(page_size);
}

bool is_loopback_endpoint(std::string_view endpoint) {
  if (endpoint.rfind("ipc://", 0) == 0 || endpoint.rfind("inproc://", 0) == 0) return true;
  if (endpoint.rfind("tcp://", 0) != 0) return false;
  auto rest = endpoint.substr(6);
  // A ZeroMQ source address ("tcp://src;dst") does not occur on a bound socket.
  auto colon = rest.rfind(':');
  auto host = lower(rest.substr(0, colon));
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0 || host == "lo";
}

DurationLimits at_least(milliseconds min, std::string zero_word) {
  DurationLimits limits;
  limits.min = min;
  limits.zero_word = std::move(zero_word);
  return limits;
}

CLI::Validator non_empty_check(std::string what) {
  return CLI::Validator(
      [what = std::move(what)](std::string& text) -> std::string {
        return text.empty() ? "must not be empty: " + what : "";
      },
      "", "non-empty");
}

CLI::Validator duration_check(DurationLimits limits) {
  return CLI::Validator(
      [limits = std::move(limits)](std::string& text) -> std::string {
        auto lowered = lower(text);
        if ((lowered == "forever" || lowered == "never") && lowered != limits.zero_word) {
          return "'" + text + "' is not a duration here (e.g. 500ms, 10s, 5m, 24h)";
        }
        auto parsed = parse_duration(text);
        if (!parsed) {
          if (all_digits(text)) {
            return "'" + text + "' has no unit: write " + text + "s for seconds or " + text +
                   "h for hours (units: ms, s, m, h, d)";
          }
          return "'" + text + "' is not a duration (e.g. 500ms, 10s, 5m, 24h, 7d" +
                 (limits.zero_word.empty() ? std::string() : ", " + limits.zero_word) + ")";
        }
        if (parsed->count() == 0 && !limits.zero_word.empty() && lowered != limits.zero_word) {
          // A zero that means "for ever" must be said: --dedup-window 0s was
          // taken for forever while 30m was refused as too short.
          return "'" + text + "' would mean " + limits.zero_word + " here: write " +
                 limits.zero_word + " if that is meant";
        }
        if (*parsed < limits.min) {
          return "'" + text + "' is shorter than the minimum " + format_duration(limits.min, "0");
        }
        if (*parsed > limits.max) {
          return "'" + text + "' is longer than the maximum " + format_duration(limits.max);
        }
        return "";
      },
      "", "duration");
}

CLI::Validator size_check(SizeLimits limits) {
  return CLI::Validator(
      [limits = std::move(limits)](std::string& text) -> std::string {
        auto parsed = parse_size(text);
        if (!parsed) return "'" + text + "' is not a size (e.g. 4096, 512k, 64m, 1g)";
        if (*parsed < limits.min) {
          return "'" + text + "' is below the minimum " + format_size(limits.min);
        }
        if (*parsed > limits.max) {
          return "'" + text + "' is above the maximum " + format_size(limits.max) +
                 (limits.max_reason.empty() ? std::string() : " (" + limits.max_reason + ")");
        }
        if (limits.within_physical_memory) {
          auto memory = physical_memory_bytes();
          if (memory > 0 && *parsed > memory) {
            return "'" + text + "' is more than this machine's memory (" +
                   std::to_string(memory / (1024 * 1024)) + " MiB)";
          }
        }
        return "";
      },
      "", "size");
}

CLI::Validator count_check(std::uint64_t min, std::uint64_t max) {
  return CLI::Validator(
      [min, max](std::string& text) -> std::string {
        std::uint64_t value = 0;
        auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
        if (!all_digits(text) || error != std::errc() || end != text.data() + text.size() ||
            value < min || value > max) {
          if (max == static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
            return "'" + text + "' is not a whole number of " + std::to_string(min) + " or more";
          }
          return "'" + text + "' is not a whole number from " + std::to_string(min) + " to " +
                 std::to_string(max);
        }
        return "";
      },
      "", "count");
}

CLI::Validator bind_endpoint_check() {
  return CLI::Validator([](std::string& text) { return endpoint_problem(text, true); }, "",
                        "bind endpoint");
}

CLI::Validator connect_endpoint_check() {
  return CLI::Validator([](std::string& text) { return endpoint_problem(text, false); }, "",
                        "endpoint");
}

namespace {

// An option whose text `parse` turns into `target` once `validator` accepted
// it; the help shows `format(target)` as the default.
template <typename Value, typename Parse, typename Format>
CLI::Option* add_parsed_option(CLI::App* app, const std::string& name, Value& target,
                               const std::string& description, const std::string& type_name,
                               CLI::Validator validator, Parse parse, Format format) {
  auto* option = app->add_option(
      name,
      [&target, parse](const CLI::results_t& results) {
        auto parsed = parse(results.back());
        if (parsed) target = *parsed;
        return parsed.has_value();
      },
      description, false, [&target, format] { return format(target); });
  option->type_name(type_name)->type_size(1)->check(std::move(validator));
  option->capture_default_str();
  return option;
}

}  // namespace

CLI::Option* add_duration_option(CLI::App* app, const std::string& name, milliseconds& target,
                                 const std::string& description, DurationLimits limits) {
  auto zero = limits.zero_word.empty() ? std::string("0") : limits.zero_word;
  return add_parsed_option(
      app, name, target, description, "DURATION", duration_check(std::move(limits)),
      [](const std::string& text) { return parse_duration(text); },
      [zero](milliseconds value) { return format_duration(value, zero); });
}

CLI::Option* add_size_option(CLI::App* app, const std::string& name, std::uint64_t& target,
                             const std::string& description, SizeLimits limits) {
  return add_parsed_option(
      app, name, target, description, "SIZE", size_check(std::move(limits)),
      [](const std::string& text) { return parse_size(text); },
      [](std::uint64_t value) { return format_size(value); });
}

CLI::Option* add_log_level_option(CLI::App* app, std::string& level) {
  return app->add_option("--log-level", level, "trace, debug, info, warn, error, critical or off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}))
      ->capture_default_str();
}

CLI::Option* add_log_format_option(CLI::App* app, std::string& format) {
  return app
      ->add_option("--log-format", format,
                   "text, or json: one JSON object per line (time, level, component, pid, message)")
      ->check(CLI::IsMember({"text", "json"}))
      ->capture_default_str();
}

void add_curve_client_options(CLI::App* app, std::string& server_public_key_file,
                              std::string& secret_key_file, const std::string& client) {
  app->add_option("--curve-server-public-key-file", server_public_key_file,
                  "with a CURVE broker: file with the broker's Z85 public key (enables "
                  "encryption; needs --curve-secret-key-file)")
      ->check(CLI::ExistingFile);
  app->add_option("--curve-secret-key-file", secret_key_file,
                  "with a CURVE broker: file with " + client + "'s Z85 secret key")
      ->check(CLI::ExistingFile);
}

std::optional<int> parse_command_line(CLI::App& app, const std::string& program,
                                      std::vector<std::string> args) {
  std::reverse(args.begin(), args.end());  // CLI11 takes the arguments last first
  try {
    app.parse(args);
  } catch (const CLI::CallForHelp& help) {
    return app.exit(help);
  } catch (const CLI::CallForAllHelp& help) {
    return app.exit(help);
  } catch (const CLI::CallForVersion& version) {
    return app.exit(version);
  } catch (const CLI::ParseError& error) {
    std::cerr << program << ": " << error.what() << "\n";
    return exit_usage;
  }
  return std::nullopt;
}

}  // namespace cli
