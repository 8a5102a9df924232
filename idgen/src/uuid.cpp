#include "idgen/uuid.hpp"

#include <boost/uuid/random_generator.hpp>
#include <boost/uuid/uuid_io.hpp>

#include "idgen/error.hpp"

namespace idgen {
namespace {

// One OS-backed generator per thread: it keeps a descriptor or uses
// getrandom, and is not safe to share between threads.
boost::uuids::uuid random_uuid() {
  thread_local boost::uuids::random_generator generator;
  return generator();
}

constexpr std::uint64_t max_unix_ms_48 = (std::uint64_t{1} << 48) - 1;

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

UuidV7Generator::UuidV7Generator(std::shared_ptr<Clock> clock)
    : clock_(clock ? std::move(clock) : SystemClock::shared()) {}

boost::uuids::uuid UuidV7Generator::next() {
  boost::uuids::uuid uuid = random_uuid();
  const std::int64_t now = clock_->now_unix_ms();
  const std::uint64_t now_ms =
      now < 0 ? 0 : std::min(static_cast<std::uint64_t>(now), max_unix_ms_48);
  // A fresh millisecond starts the counter at a random value below 2048, so
  // the counter has room to grow (RFC 9562, section 6.2, method 1).
  const std::uint64_t seed = (std::uint64_t{uuid.data[6]} & 0x07) << 8 | uuid.data[7];
  std::uint64_t previous = state_.load(std::memory_order_relaxed);
  std::uint64_t candidate = 0;
  do {
    // Same or earlier millisecond: count on from the last UUID; a full counter
    // carries into the timestamp, keeping the order.
    candidate = now_ms > (previous >> 12) ? (now_ms << 12 | seed) : previous + 1;
  } while (!state_.compare_exchange_weak(previous, candidate, std::memory_order_acq_rel,
                                         std::memory_order_relaxed));
  const std::uint64_t unix_ms = candidate >> 12;
  const std::uint64_t counter = candidate & 0x0fff;
  for (int i = 0; i < 6; ++i) {
    uuid.data[i] = static_cast<std::uint8_t>(unix_ms >> (40 - 8 * i));
  }
  uuid.data[6] = static_cast<std::uint8_t>(0x70 | (counter >> 8));
  uuid.data[7] = static_cast<std::uint8_t>(counter & 0xff);
  uuid.data[8] = static_cast<std::uint8_t>(0x80 | (uuid.data[8] & 0x3f));
  return uuid;
}

boost::uuids::uuid uuid_v4() {
  return random_uuid();
}

std::string to_string(const boost::uuids::uuid& uuid) {
  return boost::uuids::to_string(uuid);
}

boost::uuids::uuid parse_uuid(std::string_view text) {
  const auto fail = [text](const std::string& why) {
    return Error("invalid UUID '" + std::string(text) + "': " + why +
                 " (expected 8-4-4-4-12 hex digits)");
  };
  if (text.size() != 36) throw fail("length " + std::to_string(text.size()) + ", not 36");
  boost::uuids::uuid uuid{};
  std::size_t byte = 0;
  for (std::size_t i = 0; i < text.size();) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (text[i] != '-') throw fail("expected '-' at position " + std::to_string(i + 1));
      ++i;
      continue;
    }
    const int high = hex_value(text[i]);
    const int low = hex_value(text[i + 1]);
    if (high < 0 || low < 0) {
      const std::size_t bad = high < 0 ? i : i + 1;
      throw fail("unexpected character '" + std::string(1, text[bad]) + "' at position " +
                 std::to_string(bad + 1));
    }
    uuid.data[byte++] = static_cast<std::uint8_t>(high << 4 | low);
    i += 2;
  }
  return uuid;
}

std::int64_t uuid_v7_unix_ms(const boost::uuids::uuid& uuid) {
  if ((uuid.data[6] >> 4) != 7) {
    throw Error("UUID " + idgen::to_string(uuid) + " is version " +
                std::to_string(uuid.data[6] >> 4) + ", not 7");
  }
  std::uint64_t unix_ms = 0;
  for (int i = 0; i < 6; ++i) unix_ms = unix_ms << 8 | uuid.data[i];
  return static_cast<std::int64_t>(unix_ms);
}

}  // namespace idgen
