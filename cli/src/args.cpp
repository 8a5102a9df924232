#include "cli/args.hpp"

#include <cctype>
#include <charconv>
#include <limits>
#include <string>
#include <utility>

namespace cli {
namespace {

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

}  // namespace

std::optional<std::chrono::milliseconds> parse_duration(std::string_view text) {
  auto lowered = lower(text);
  if (lowered == "forever" || lowered == "never") return std::chrono::milliseconds(0);
  auto parsed = number_and_unit(text);
  if (!parsed) return std::nullopt;
  auto [value, unit] = *parsed;
  std::uint64_t factor = 0;
  if (unit == "ms") factor = 1;
  else if (unit.empty() || unit == "s") factor = 1000;
  else if (unit == "m" || unit == "min") factor = 60'000;
  else if (unit == "h") factor = 3'600'000;
  else if (unit == "d") factor = 86'400'000;
  else return std::nullopt;
  if (!multiply(value, factor) ||
      value > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
    return std::nullopt;
  }
  return std::chrono::milliseconds(static_cast<std::int64_t>(value));
}

std::optional<std::uint64_t> parse_size(std::string_view text) {
  auto parsed = number_and_unit(text);
  if (!parsed) return std::nullopt;
  auto [value, unit] = *parsed;
  std::uint64_t factor = 0;
  if (unit.empty() || unit == "b") factor = 1;
  else if (unit == "k" || unit == "kib" || unit == "kb") factor = 1024;
  else if (unit == "m" || unit == "mib" || unit == "mb") factor = 1024 * 1024;
  else if (unit == "g" || unit == "gib" || unit == "gb") factor = 1024ull * 1024 * 1024;
  else return std::nullopt;
  if (!multiply(value, factor)) return std::nullopt;
  return value;
}

}  // namespace cli
