// The messages both sides publish: time-ordered snowflake-style msg_ids (what
// the outbox library generates) and pseudo-random payloads of a fixed size,
// spread over a number of partition keys. The outbox drain and JetStream get
// the very same msg_ids and payloads.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace bench {

struct Dataset {
  std::vector<std::string> msg_ids;
  std::vector<std::string> keys;  // partition key of each message
  std::vector<std::string> payloads;
  std::size_t size() const { return msg_ids.size(); }
};

// `count` messages with `payload_bytes`-byte payloads over `key_count` keys.
// `worker_base` keeps the id ranges of different datasets in one run apart.
Dataset make_dataset(std::size_t count, std::size_t payload_bytes, int key_count,
                     std::uint32_t worker_base, std::uint64_t seed);

// A payload for message number `index` (deterministic), for producers that
// let the library generate msg_ids.
std::string make_payload(std::size_t payload_bytes, std::uint64_t seed, std::size_t index);

// Nanoseconds on the steady clock, the one time base of all latency figures.
inline std::int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Latency percentiles in milliseconds (nearest rank), from nanosecond samples.
struct Percentiles {
  std::size_t samples = 0;
  double p50_ms = 0, p90_ms = 0, p99_ms = 0, p999_ms = 0, max_ms = 0, mean_ms = 0;
};
Percentiles percentiles(std::vector<std::int64_t> samples_ns);

}  // namespace bench
