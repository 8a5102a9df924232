// Measures broker::Store::append throughput: stored/s with sync normal and full,
// duplicates answered/s, the stored/s rate with N msg_ids already in the dedup
// index next to an empty one, and (for information) random UUID v4 msg_ids.
// Only append() is timed; building the batches is not.
//
//   broker-store-bench --dir /tmp/store-bench --messages 2000000 --batch 5000 --prefill 10000000
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>

#include "bench_support.hpp"
#include "broker/store.hpp"
#include "cli/args.hpp"

namespace {

namespace fs = std::filesystem;
using SteadyClock = std::chrono::steady_clock;

// Snowflake-style ids: 41-bit milliseconds, 10-bit worker, 12-bit sequence,
// handed out round-robin by several workers, as decimal strings.
class SnowflakeIds {
 public:
  explicit SnowflakeIds(std::size_t workers) : sequences_(workers, 0) {}
  std::string next() {
    auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
                   std::chrono::system_clock::now().time_since_epoch())
                   .count() -
               1'700'000'000'000LL;
    auto millis = static_cast<std::uint64_t>(std::max<std::int64_t>(now, last_millis_));
    if (millis != static_cast<std::uint64_t>(last_millis_)) {
      std::fill(sequences_.begin(), sequences_.end(), 0);
      last_millis_ = static_cast<std::int64_t>(millis);
    }
    std::size_t worker = next_worker_++ % sequences_.size();
    std::uint64_t sequence = sequences_[worker]++;
    if (sequence >= 4096) {  // sequence exhausted in this millisecond: borrow the next one
      ++last_millis_;
      std::fill(sequences_.begin(), sequences_.end(), 0);
      millis = static_cast<std::uint64_t>(last_millis_);
      sequence = sequences_[worker]++;
    }
    return std::to_string((millis << 22) | (static_cast<std::uint64_t>(worker + 1) << 12) |
                          sequence);
  }

 private:
  std::vector<std::uint64_t> sequences_;
  std::size_t next_worker_ = 0;
  std::int64_t last_millis_ = 0;
};

class Uuid4Ids {
 public:
  std::string next() {
    std::uint64_t high = random_(), low = random_();
    high = (high & 0xFFFFFFFFFFFF0FFFULL) | 0x0000000000004000ULL;
    low = (low & 0x3FFFFFFFFFFFFFFFULL) | 0x8000000000000000ULL;
    char text[37];
    std::snprintf(text, sizeof text, "%08x-%04x-%04x-%04x-%012llx",
                  static_cast<unsigned>(high >> 32), static_cast<unsigned>((high >> 16) & 0xFFFF),
                  static_cast<unsigned>(high & 0xFFFF), static_cast<unsigned>(low >> 48),
                  static_cast<unsigned long long>(low & 0xFFFFFFFFFFFFULL));
    return text;
  }

 private:
  std::mt19937_64 random_{42};
};

struct Settings {
  fs::path dir;
  std::size_t messages = 2'000'000;
  std::size_t batch = 5000;
  std::size_t payload_bytes = 256;
  std::size_t prefill = 10'000'000;
  std::size_t full_messages = 0;  // 0: same as messages
  std::size_t workers = 4;
  std::size_t topics = 4;
  std::size_t cache_mib = 512;
  bool skip_uuid = false;
  bool skip_basic = false;
  bool skip_prefill = false;
};

struct Result {
  double seconds = 0;      // wall time inside append()
  double cpu_seconds = 0;  // user + system CPU of the whole pass (includes building batches)
  std::size_t count = 0;
  double rate() const { return seconds > 0 ? static_cast<double>(count) / seconds : 0; }
};

// Appends `total` messages with ids from `ids`, timing only append(). The ids
// are remembered in `sent` when given so a second pass can resend them.
template <typename Ids>
Result run_pass(broker::Store& store, Ids& ids, const Settings& settings, std::size_t total,
                std::vector<std::string>* sent, broker::AppendStatus expected) {
  std::string payload(settings.payload_bytes, 'x');
  std::vector<std::string> topic_names;
  for (std::size_t t = 0; t < settings.topics; ++t)
    topic_names.push_back("bench.topic-" + std::to_string(t));
  std::vector<std::string> batch_ids(settings.batch);
  std::vector<broker::IncomingMessage> batch;
  std::vector<broker::AppendOutcome> outcomes;
  Result result;
  double cpu_start = bench::cpu_seconds();
  SteadyClock::duration elapsed{};
  std::size_t done = 0;
  while (done < total) {
    std::size_t n = std::min(settings.batch, total - done);
    batch.clear();
    for (std::size_t i = 0; i < n; ++i) {
      batch_ids[i] = ids.next();
      // Vary the payload a little so pages do not compress into repeats.
      std::snprintf(payload.data(), 17, "%016zx", done + i);
      batch.push_back(broker::IncomingMessage{batch_ids[i],
                                              topic_names[(done + i) % topic_names.size()],
                                              std::string_view(batch_ids[i]).substr(0, 4),
                                              {},
                                              payload});
    }
    // The payload buffer is shared by the batch: every message carries the same
    // bytes, which is fine for throughput but not for content checks.
    auto start = SteadyClock::now();
    store.append(batch, outcomes);
    elapsed += SteadyClock::now() - start;
    for (const auto& outcome : outcomes) {
      if (outcome.status != expected) {
        std::fprintf(stderr, "unexpected outcome %s\n",
                     std::string(broker::to_string(outcome.status)).c_str());
        std::exit(2);
      }
    }
    if (sent != nullptr)
      sent->insert(sent->end(), batch_ids.begin(), batch_ids.begin() + static_cast<long>(n));
    done += n;
  }
  result.seconds = std::chrono::duration<double>(elapsed).count();
  result.cpu_seconds = bench::cpu_seconds() - cpu_start;
  result.count = total;
  return result;
}

// Replays a list of ids (already stored) and expects DUPLICATE for each.
class ReplayIds {
 public:
  explicit ReplayIds(const std::vector<std::string>& ids) : ids_(ids) {}
  std::string next() { return ids_[position_++]; }

 private:
  const std::vector<std::string>& ids_;
  std::size_t position_ = 0;
};

broker::StoreOptions options_for(const Settings& settings, broker::SyncMode sync) {
  broker::StoreOptions options;
  options.sync = sync;
  options.cache_bytes = settings.cache_mib * 1024 * 1024;
  return options;
}

void print(const char* label, const Result& result) {
  // CPU time helps read figures taken on a busy machine: wall time includes
  // waiting for a core, CPU time does not.
  std::printf("%-44s %10zu msgs %8.2f s %10.0f msgs/s   (cpu %6.2f s)\n", label, result.count,
              result.seconds, result.rate(), result.cpu_seconds);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  Settings settings;
  std::string dir;
  CLI::App app{
      "broker-store-bench: appends 256-byte messages in batches (one append() call each) and "
      "prints stored/s with sync normal and full, duplicates/s, UUID v4 ids (for information), "
      "and stored/s with --prefill msg_ids already in the dedup index. DIR is emptied first and "
      "removed after.",
      "broker-store-bench"};
  app.add_option("--dir", dir, "Scratch directory (emptied first, removed after)")->required();
  const std::pair<const char*, std::size_t*> sizes[] = {
      {"--messages", &settings.messages}, {"--full-messages", &settings.full_messages},
      {"--batch", &settings.batch},       {"--payload", &settings.payload_bytes},
      {"--prefill", &settings.prefill},   {"--cache-mib", &settings.cache_mib},
      {"--workers", &settings.workers},   {"--topics", &settings.topics}};
  for (const auto& [name, target] : sizes) {
    app.add_option(name, *target)->capture_default_str()->check(cli::count_check());
  }
  app.add_flag("--skip-basic", settings.skip_basic,
               "Skip the sync normal/full and duplicate passes");
  app.add_flag("--skip-uuid", settings.skip_uuid, "Skip the UUID v4 pass");
  app.add_flag("--skip-prefill", settings.skip_prefill, "Skip the prefilled dedup index pass");
  if (auto code = cli::parse_command_line(app, "broker-store-bench",
                                          std::vector<std::string>(argv + 1, argv + argc))) {
    return *code;
  }
  if (settings.batch == 0 || settings.payload_bytes < 17 || settings.workers < 1 ||
      settings.topics < 1) {
    std::fprintf(stderr,
                 "--batch, --workers and --topics must be positive, --payload at least 17\n");
    return 1;
  }
  settings.dir = dir;
  fs::remove_all(settings.dir);
  fs::create_directories(settings.dir);
  if (settings.full_messages == 0) settings.full_messages = settings.messages;

  std::printf("payload %zu B, batch %zu, %zu snowflake workers, %zu topics, cache %zu MiB\n",
              settings.payload_bytes, settings.batch, settings.workers, settings.topics,
              settings.cache_mib);
  if (!settings.skip_basic) {
    broker::Store store(settings.dir / "normal.db",
                        options_for(settings, broker::SyncMode::normal));
    SnowflakeIds ids(settings.workers);
    std::vector<std::string> sent;
    sent.reserve(settings.messages);
    print("stored, sync normal, empty index",
          run_pass(store, ids, settings, settings.messages, &sent, broker::AppendStatus::stored));
    ReplayIds replay(sent);
    print("duplicates, sync normal",
          run_pass(store, replay, settings, sent.size(), nullptr, broker::AppendStatus::duplicate));
  }
  fs::remove_all(settings.dir / "normal.db");
  if (!settings.skip_basic) {
    broker::Store store(settings.dir / "full.db", options_for(settings, broker::SyncMode::full));
    SnowflakeIds ids(settings.workers);
    print("stored, sync full, empty index", run_pass(store, ids, settings, settings.full_messages,
                                                     nullptr, broker::AppendStatus::stored));
  }
  fs::remove_all(settings.dir / "full.db");
  if (!settings.skip_uuid) {
    broker::Store store(settings.dir / "uuid.db", options_for(settings, broker::SyncMode::normal));
    Uuid4Ids ids;
    print("stored, sync normal, UUID v4 ids (info)",
          run_pass(store, ids, settings, settings.messages, nullptr, broker::AppendStatus::stored));
  }
  fs::remove_all(settings.dir / "uuid.db");
  if (!settings.skip_prefill) {
    SnowflakeIds ids(settings.workers);
    const fs::path db = settings.dir / "prefilled.db";
    {
      broker::Store store(db, options_for(settings, broker::SyncMode::normal));
      Result fill =
          run_pass(store, ids, settings, settings.prefill, nullptr, broker::AppendStatus::stored);
      std::string label = "(prefill " + std::to_string(settings.prefill) + " ids)";
      print(label.c_str(), fill);
    }
    // Reopened, as a restarted broker would find it: a cold page cache.
    broker::Store store(db, options_for(settings, broker::SyncMode::normal));
    std::string label =
        "stored, sync normal, " + std::to_string(settings.prefill) + " ids in index";
    print(label.c_str(),
          run_pass(store, ids, settings, settings.messages, nullptr, broker::AppendStatus::stored));
    std::error_code ignored;
    auto bytes =
        fs::file_size(db, ignored) + fs::file_size(settings.dir / "prefilled.db-wal", ignored);
    std::printf("database with %zu messages: %.2f GiB\n", settings.prefill + settings.messages,
                static_cast<double>(bytes) / (1024.0 * 1024 * 1024));
  }
  fs::remove_all(settings.dir);
  return 0;
}
