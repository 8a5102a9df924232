// Minimal JSON output for the programs' --json modes (one object per line).
// Everything written here parses as JSON whatever bytes come in.
// Pure functions; safe from any thread.
#pragma once

#include <string>
#include <string_view>

namespace cli {

// A JSON string literal, quotes included; control characters escaped, and any
// byte that is not part of valid UTF-8 replaced by \ufffd (use json_bytes
// where the exact bytes matter).
std::string json_escape(std::string_view text);
std::string base64_encode(std::string_view bytes);
// Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF.
bool is_valid_utf8(std::string_view bytes);
// True when the bytes are valid UTF-8 without control characters other than
// tab, newline and carriage return: such payloads print as JSON strings.
bool is_printable_text(std::string_view bytes);

enum class BytesAs {
  any_text,        // a string whenever the bytes are valid UTF-8 (ids, keys, topics)
  printable_text,  // a string only when is_printable_text (payloads, header values)
};
// Bytes as JSON, losslessly: a string literal, or {"base64":"..."} otherwise.
std::string json_bytes(std::string_view bytes, BytesAs as = BytesAs::any_text);

}  // namespace cli
