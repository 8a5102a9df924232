// Minimal JSON output for the programs' --json modes (one object per line).
// Pure functions; safe from any thread.
#pragma once

#include <string>
#include <string_view>

namespace cli {

// A JSON string literal, quotes included; control characters escaped.
std::string json_escape(std::string_view text);
std::string base64_encode(std::string_view bytes);
// True when the bytes are valid UTF-8 without control characters other than
// tab, newline and carriage return: such payloads print as JSON strings.
bool is_printable_text(std::string_view bytes);

}  // namespace cli
