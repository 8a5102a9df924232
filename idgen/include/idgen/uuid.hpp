// UUIDs as Boost.UUID values: random version 4, and time-ordered version 7.
//
// Version 7 follows RFC 9562: 48-bit Unix milliseconds, version 7, a 12-bit
// counter in rand_a (started at a random value below 2048 each millisecond, so
// many ids in one millisecond still sort), variant 10, and 62 random bits. One
// UuidV7Generator's ids are strictly increasing in byte order, even when the
// clock steps back (it keeps counting from the last timestamp) or more than
// 2048 ids are made in a millisecond (it carries into the timestamp).
//
// Random bits come from the operating system's generator (getrandom).
// Thread safety: UuidV7Generator::next() and uuid_v4() may be called from any
// number of threads. Errors: functions that parse text throw idgen::Error.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include <boost/uuid/uuid.hpp>

#include "idgen/clock.hpp"

namespace idgen {

class UuidV7Generator {
 public:
  // `clock` null means SystemClock::shared().
  explicit UuidV7Generator(std::shared_ptr<Clock> clock = nullptr);
  UuidV7Generator(const UuidV7Generator&) = delete;
  UuidV7Generator& operator=(const UuidV7Generator&) = delete;

  boost::uuids::uuid next();

 private:
  std::shared_ptr<Clock> clock_;
  // unix_ms << 12 | counter of the last UUID issued
  std::atomic<std::uint64_t> state_{0};
};

// A random (version 4) UUID.
boost::uuids::uuid uuid_v4();

// Canonical lower-case text, "0190f5c2-8a4b-7c3d-9e2f-0123456789ab".
std::string to_string(const boost::uuids::uuid& uuid);
// Parses the canonical 36-character form (either case). Throws idgen::Error.
boost::uuids::uuid parse_uuid(std::string_view text);
// The Unix milliseconds stored in a version 7 UUID. Throws idgen::Error if the
// UUID is not version 7.
std::int64_t uuid_v7_unix_ms(const boost::uuids::uuid& uuid);

}  // namespace idgen
