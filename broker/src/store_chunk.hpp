// Message bodies are stored in chunks: one SQLite row holds consecutive
// messages of one topic from one append() call, up to about chunk_target_bytes.
// Writing one row per few hundred messages instead of one per message halves
// the B-tree work of an append; the dedup index still has one entry per msg_id.
//
// Chunk layout, repeated for each message in offset order:
//   varint msg_id length, msg_id bytes,
//   varint partition key length, key bytes,
//   varint headers length, header bytes,
//   varint payload length, payload bytes.
// Varints are unsigned LEB128 (7 bits per byte, low groups first).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "broker/store.hpp"

namespace broker::chunk {

constexpr std::size_t target_bytes = 64 * 1024;

void append_message(std::string& chunk, const IncomingMessage& message);

struct MessageView {
  std::string_view msg_id;
  std::string_view partition_key;
  std::string_view headers;
  std::string_view payload;
};

// Walks a chunk's messages; every length is checked against the bytes left.
class Reader {
 public:
  explicit Reader(std::string_view chunk) noexcept : rest_(chunk) {}
  bool done() const noexcept { return rest_.empty(); }
  // Decodes the next message; false if the chunk is malformed.
  bool next(MessageView& message) noexcept;

 private:
  bool field(std::string_view& value) noexcept;
  std::string_view rest_;
};

}  // namespace broker::chunk
