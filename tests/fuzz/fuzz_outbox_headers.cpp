// The `headers` column codec (docs/schema.md) on any bytes, as the relay reads a
// blob another language wrote: decode_headers_blob returns headers or throws
// outbox::Error, and what it returns encodes back to the same bytes (the format
// has one spelling per list of headers).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "outbox/error.hpp"
#include "outbox/message.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  try {
    auto headers = outbox::decode_headers_blob(bytes);
    if (outbox::encode_headers_blob(headers) != bytes) std::abort();
  } catch (const outbox::Error&) {
  }
  return 0;
}
