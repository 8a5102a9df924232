// Values given on command lines and in config files.
// Pure functions; safe from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string_view>

namespace cli {

// "0", "forever", "never" -> 0; "1500ms", "30s", "15m", "24h", "7d"; a bare
// number is seconds. Empty on anything else (negative, unknown unit, overflow).
std::optional<std::chrono::milliseconds> parse_duration(std::string_view text);

// "1048576", "512k", "1m", "1g" (binary multiples; KiB/MiB/GiB spellings too).
std::optional<std::uint64_t> parse_size(std::string_view text);

}  // namespace cli

