#include "store_chunk.hpp"

#include <cstdint>

namespace broker::chunk {
namespace {

void append_varint(std::string& out, std::size_t value) {
  while (value >= 0x80) {
    out.push_back(static_cast<char>((value & 0x7f) | 0x80));
    value >>= 7;
  }
  out.push_back(static_cast<char>(value));
}

void append_field(std::string& out, std::string_view value) {
  append_varint(out, value.size());
  out.append(value);
}

}  // namespace

void append_message(std::string& chunk, const IncomingMessage& message) {
  append_field(chunk, message.msg_id);
  append_field(chunk, message.partition_key);
  append_field(chunk, message.headers);
  append_field(chunk, message.payload);
}

bool Reader::field(std::string_view& value) noexcept {
  std::uint64_t length = 0;
  int shift = 0;
  std::size_t used = 0;
  while (true) {
    if (used >= rest_.size() || shift > 56) return false;
    auto byte = static_cast<unsigned char>(rest_[used++]);
    length |= static_cast<std::uint64_t>(byte & 0x7f) << shift;
    if ((byte & 0x80) == 0) break;
    shift += 7;
  }
  if (length > rest_.size() - used) return false;
  value = rest_.substr(used, static_cast<std::size_t>(length));
  rest_.remove_prefix(used + static_cast<std::size_t>(length));
  return true;
}

bool Reader::next(MessageView& message) noexcept {
  return field(message.msg_id) && field(message.partition_key) && field(message.headers) &&
         field(message.payload);
}

}  // namespace broker::chunk
