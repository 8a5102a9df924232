// The wire decoder on any bytes: the input is one message's frames (fuzz_input.hpp).
// Whatever the bytes, decode returns a value or an Error with a code and a message;
// what it accepts encodes back to frames that decode to the same value; the
// zero-copy PUBLISH decoder accepts exactly what the owning one accepts.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "fuzz_input.hpp"
#include "wire/protocol.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::Input input(data, size);
  auto frames = input.frames();
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
    auto view = wire::decode_publish_view(frames[2], limits);
    auto owning = wire::decode_body(wire::Command::publish, frames[2], limits);
    bool violations = false;
    if (view.ok()) {
      for (const auto& message : view->messages) violations |= !message.violation.empty();
    }
    // A field above its limit refuses one message in the view, the whole body in the
    // owning decoder.
    if (violations ? owning.ok() || owning.error().code != wire::ErrorCode::limit_exceeded
                   : view.ok() != owning.ok()) {
      std::abort();
    }
    auto headers = wire::decode_header_block(frames[2], limits);
    if (headers.ok()) {
      auto reencoded = wire::encode_header_block(headers.value());
      auto again_headers = wire::decode_header_block(reencoded, limits);
      if (!again_headers.ok() || again_headers.value() != headers.value()) std::abort();
    }
    (void)wire::peek_request_id(wire::Command::publish, frames[2]);
  }
  return 0;
}
