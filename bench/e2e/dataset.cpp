#include "dataset.hpp"

#include <algorithm>
#include <numeric>

namespace bench {
namespace {

std::uint64_t mix(std::uint64_t value) {  // splitmix64
  value += 0x9e3779b97f4a7c15ULL;
  value = (value ^ (value >> 30)) * 0xbf58476d1ce4e5b9ULL;
  value = (value ^ (value >> 27)) * 0x94d049bb133111ebULL;
  return value ^ (value >> 31);
}

}  // namespace

std::string make_payload(std::size_t payload_bytes, std::uint64_t seed, std::size_t index) {
  static constexpr char alphabet[] =
      "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_";
  std::string payload(payload_bytes, ' ');
  std::uint64_t state = mix(seed ^ (static_cast<std::uint64_t>(index) * 0x2545f4914f6cdd1dULL));
  for (std::size_t i = 0; i < payload_bytes; ++i) {
    if (i % 10 == 0) state = mix(state);
    payload[i] = alphabet[(state >> ((i % 10) * 6)) & 63];
  }
  return payload;
}

Dataset make_dataset(std::size_t count, std::size_t payload_bytes, int key_count,
                     std::uint32_t worker_base, std::uint64_t seed) {
  // 41-bit milliseconds since 2023-11-14, 10-bit worker, 12-bit sequence: the
  // layout of idgen's snowflake ids. Four workers round-robin, as from four
  // producer processes; the clock is only read to start the sequence.
  constexpr int workers = 4;
  auto millis = std::chrono::duration_cast<std::chrono::milliseconds>(
                    std::chrono::system_clock::now().time_since_epoch())
                    .count() -
                1'700'000'000'000LL;
  Dataset data;
  data.msg_ids.reserve(count);
  data.keys.reserve(count);
  data.payloads.reserve(count);
  std::uint64_t sequence = 0;
  for (std::size_t i = 0; i < count; ++i) {
    auto worker = worker_base + static_cast<std::uint32_t>(i % workers);
    if (i > 0 && i % workers == 0 && ++sequence == 4096) {
      sequence = 0;
      ++millis;
    }
    auto id = (static_cast<std::uint64_t>(millis) << 22) |
              (static_cast<std::uint64_t>(worker & 1023) << 12) | sequence;
    data.msg_ids.push_back(std::to_string(id));
    data.keys.push_back("key-" + std::to_string(mix(seed + i) % static_cast<std::uint64_t>(
                                                                    std::max(key_count, 1))));
    data.payloads.push_back(make_payload(payload_bytes, seed, i));
  }
  return data;
}

Percentiles percentiles(std::vector<std::int64_t> samples_ns) {
  Percentiles result;
  result.samples = samples_ns.size();
  if (samples_ns.empty()) return result;
  std::sort(samples_ns.begin(), samples_ns.end());
  auto at = [&](double fraction) {
    auto rank = static_cast<std::size_t>(fraction * static_cast<double>(samples_ns.size()));
    rank = std::min(rank, samples_ns.size() - 1);
    return static_cast<double>(samples_ns[rank]) / 1e6;
  };
  result.p50_ms = at(0.50);
  result.p90_ms = at(0.90);
  result.p99_ms = at(0.99);
  result.p999_ms = at(0.999);
  result.max_ms = static_cast<double>(samples_ns.back()) / 1e6;
  long double sum = std::accumulate(samples_ns.begin(), samples_ns.end(), 0.0L);
  result.mean_ms = static_cast<double>(sum / samples_ns.size() / 1e6L);
  return result;
}

}  // namespace bench
