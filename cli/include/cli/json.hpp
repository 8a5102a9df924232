// JSON output for the programs' --json modes (one object per line), on
// nlohmann::json (Debian: nlohmann-json3-dev). Objects are ordered_json, so keys
// print in the order they are set. Everything written here parses as JSON
// whatever bytes come in: nlohmann::json refuses to print a string that is not
// UTF-8, so bytes from outside go through json_text or json_value first.
// Pure functions; safe from any thread.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace cli {

using Json = nlohmann::ordered_json;

// The text with any byte that is not part of valid UTF-8 replaced by U+FFFD:
// what nlohmann::json accepts as a string or a key.
std::string to_valid_utf8(std::string_view text);
// to_valid_utf8(text) as a JSON string value (use json_value where the exact
// bytes matter).
Json json_text(std::string_view text);
// json_text(text) printed: a JSON string literal, quotes included.
std::string json_escape(std::string_view text);
std::string base64_encode(std::string_view bytes);
// Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF.
bool is_valid_utf8(std::string_view bytes);
// The length of the valid (strict) UTF-8 sequence at bytes[at] (1 for ASCII),
// or 0 when none starts there. `at` must be below bytes.size().
std::size_t utf8_sequence_length(std::string_view bytes, std::size_t at);
// True when the bytes are valid UTF-8 without control characters other than
// tab, newline and carriage return: such payloads print as JSON strings.
bool is_printable_text(std::string_view bytes);

enum class BytesAs {
  any_text,        // a string whenever the bytes are valid UTF-8 (ids, keys, topics)
  printable_text,  // a string only when is_printable_text (payloads, header values)
};
// Bytes as JSON, losslessly: a string, or {"base64":"..."} otherwise.
Json json_value(std::string_view bytes, BytesAs as = BytesAs::any_text);
// json_value printed.
std::string json_bytes(std::string_view bytes, BytesAs as = BytesAs::any_text);

}  // namespace cli
