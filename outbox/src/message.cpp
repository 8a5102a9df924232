#include "outbox/message.hpp"

#include "outbox/error.hpp"

namespace outbox {
namespace {

void put_u32(std::string& out, std::size_t value) {
  if (value > 0xffffffffU) throw Error("header name or value longer than 4 GiB");
  out.push_back(static_cast<char>((value >> 24) & 0xff));
  out.push_back(static_cast<char>((value >> 16) & 0xff));
  out.push_back(static_cast<char>((value >> 8) & 0xff));
  out.push_back(static_cast<char>(value & 0xff));
}

std::string_view take(std::string_view& bytes) {
  if (bytes.size() < 4) throw Error("malformed headers: truncated length field");
  std::size_t length = 0;
  for (int i = 0; i < 4; ++i) {
    length = (length << 8) | static_cast<unsigned char>(bytes[static_cast<std::size_t>(i)]);
  }
  bytes.remove_prefix(4);
  if (bytes.size() < length) throw Error("malformed headers: length exceeds the data");
  auto field = bytes.substr(0, length);
  bytes.remove_prefix(length);
  return field;
}

bool lowercase_hex(std::string_view text) {
  for (char c : text) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

}  // namespace

bool valid_traceparent(std::string_view text) {
  // version "00": 2 + 1 + 32 + 1 + 16 + 1 + 2 characters.
  if (text.size() != 55 || text.substr(0, 3) != "00-" || text[35] != '-' || text[52] != '-') {
    return false;
  }
  auto trace_id = text.substr(3, 32), parent_id = text.substr(36, 16), flags = text.substr(53, 2);
  return lowercase_hex(trace_id) && lowercase_hex(parent_id) && lowercase_hex(flags) &&
         trace_id.find_first_not_of('0') != std::string_view::npos &&
         parent_id.find_first_not_of('0') != std::string_view::npos;
}

TraceContext trace_context(std::string_view traceparent, std::string_view tracestate) {
  TraceContext context;
  if (!valid_traceparent(traceparent)) return context;
  context.traceparent = traceparent;
  if (tracestate.size() <= kMaxTracestateBytes) context.tracestate = tracestate;
  return context;
}

std::string encode_headers_blob(const Headers& headers) {
  std::string out;
  for (const auto& header : headers) {
    put_u32(out, header.name.size());
    out += header.name;
    put_u32(out, header.value.size());
    out += header.value;
  }
  return out;
}

Headers decode_headers_blob(std::string_view bytes) {
  Headers headers;
  while (!bytes.empty()) {
    Header header;
    header.name = std::string(take(bytes));
    header.value = std::string(take(bytes));
    headers.push_back(std::move(header));
  }
  return headers;
}

}  // namespace outbox
