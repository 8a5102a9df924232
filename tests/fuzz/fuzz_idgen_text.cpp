// idgen's text inputs on any bytes: ids in the four encodings, layout names and
// specs, UUIDs and encoding names. Each parser returns a value or throws
// idgen::Error; what it accepts prints back to text that parses to the same value.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "idgen/encoding.hpp"
#include "idgen/error.hpp"
#include "idgen/snowflake.hpp"
#include "idgen/uuid.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  for (auto encoding : {idgen::Encoding::decimal, idgen::Encoding::hex, idgen::Encoding::base62,
                        idgen::Encoding::base32}) {
    try {
      auto id = idgen::decode(text, encoding);
      if (idgen::decode(idgen::encode(id, encoding), encoding) != id) std::abort();
    } catch (const idgen::Error&) {
    }
  }
  try {
    auto layout = idgen::Layout::parse(text);
    auto again = idgen::Layout::parse(layout.spec());
    again.name = layout.name;  // a preset's spec may be its name or its fields
    if (!(again == layout)) std::abort();
    (void)layout.expires_unix_ms();
    (void)layout.max_ids_per_second();
  } catch (const idgen::Error&) {
  }
  try {
    auto uuid = idgen::parse_uuid(text);
    if (idgen::parse_uuid(idgen::to_string(uuid)) != uuid) std::abort();
    (void)idgen::uuid_v7_unix_ms(uuid);
  } catch (const idgen::Error&) {
  }
  (void)idgen::parse_encoding(text);
  return 0;
}
