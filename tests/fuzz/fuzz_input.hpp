// Reads a fuzzer's input as a sequence of fields, so that every target cuts its
// bytes the same way and a seed written by write_seeds.cpp means the same to all:
// a byte is one byte, a chunk is a 2-byte little-endian length and that many bytes
// (fewer when the input ends first), frames are a count byte (mod 6) and as many
// chunks. Reading past the end gives zeros and empty chunks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace fuzz {

class Input {
 public:
  Input(const std::uint8_t* data, std::size_t size)
      : rest_(reinterpret_cast<const char*>(data), size) {}

  bool empty() const noexcept { return rest_.empty(); }

  std::uint8_t byte() noexcept {
    if (rest_.empty()) return 0;
    auto value = static_cast<std::uint8_t>(rest_.front());
    rest_.remove_prefix(1);
    return value;
  }

  std::string_view chunk() noexcept {
    std::size_t length = byte();
    length |= static_cast<std::size_t>(byte()) << 8;
    if (length > rest_.size()) length = rest_.size();
    auto field = rest_.substr(0, length);
    rest_.remove_prefix(length);
    return field;
  }

  std::vector<std::string_view> frames() {
    std::vector<std::string_view> result(byte() % 6);
    for (auto& frame : result) frame = chunk();
    return result;
  }

 private:
  std::string_view rest_;
};

// The writing side, for seeds.
inline void put_chunk(std::string& out, std::string_view field) {
  out.push_back(static_cast<char>(field.size() & 0xff));
  out.push_back(static_cast<char>((field.size() >> 8) & 0xff));
  out.append(field);
}

inline void put_frames(std::string& out, const std::vector<std::string_view>& frames) {
  out.push_back(static_cast<char>(frames.size()));
  for (auto frame : frames) put_chunk(out, frame);
}

}  // namespace fuzz
