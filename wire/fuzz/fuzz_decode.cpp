// libFuzzer entry point for the wire decoder. The input is split into frames
// (a frame count byte, then a 2-byte little-endian length before each frame);
// whatever the bytes, decode must return a value or an Error without crashing,
// and anything it accepts must encode back to something that decodes the same.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <vector>

#include "wire/protocol.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  std::vector<std::string_view> frames;
  if (input.empty()) return 0;
  std::size_t frame_count = static_cast<std::uint8_t>(input[0]) % 6;
  input.remove_prefix(1);
  for (std::size_t i = 0; i < frame_count; ++i) {
    if (i + 1 == frame_count || input.size() < 2) {
      frames.push_back(input);
      input = {};
      continue;
    }
    std::size_t length = static_cast<std::uint8_t>(input[0]) |
                         (static_cast<std::size_t>(static_cast<std::uint8_t>(input[1])) << 8);
    input.remove_prefix(2);
    if (length > input.size()) length = input.size();
    frames.push_back(input.substr(0, length));
    input.remove_prefix(length);
  }
  wire::Limits limits;
  limits.max_body_bytes = 1 << 20;
  auto decoded = wire::decode(frames, limits);
  if (decoded.ok()) {
    auto encoded = wire::encode(decoded.value());
    std::string_view again[] = {encoded.tag, encoded.command, encoded.body};
    auto round_trip = wire::decode(again, limits);
    if (!round_trip.ok() || !(round_trip.value() == decoded.value())) std::abort();
  } else if (decoded.error().code == wire::ErrorCode::none || decoded.error().message.empty()) {
    std::abort();
  }
  if (frames.size() == 3) {
    // The zero-copy PUBLISH decoder must accept exactly what the owning one accepts.
    auto view = wire::decode_publish_view(frames[2], limits);
    auto owning = wire::decode_body(wire::Command::publish, frames[2], limits);
    bool violations = false;
    if (view.ok()) {
      for (const auto& message : view->messages) violations |= !message.violation.empty();
    }
    // A field above its limit refuses one message in the view, the whole body in the owning
    // decoder.
    if (violations ? owning.ok() || owning.error().code != wire::ErrorCode::limit_exceeded
                   : view.ok() != owning.ok()) {
      std::abort();
    }
    auto headers = wire::decode_headers(frames[2], limits);
    (void)headers;
  }
  return 0;
}
