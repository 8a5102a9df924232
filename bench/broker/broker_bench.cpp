// Whole-path broker throughput: a pipelined client publishes 256-byte messages
// over TCP loopback to the broker loop (broker::Server on its own thread, as in
// outbox-broker), which decodes, group-commits and acknowledges them.
// Prints, from one run: stored/s with --sync normal and --sync full, duplicates
// answered/s, and stored/s with N msg_ids already in the dedup index next to
// the rate with an empty index; plus how much of the time the store took.
//
//   broker-bench --dir /tmp/broker-bench --messages 1000000 --prefill 10000000
// GCC 12 reports a false "potential null pointer dereference" inside CLI11's
// string helpers once they are inlined here.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wnull-dereference"
#endif

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "bench_support.hpp"
#include "broker/client.hpp"
#include "broker/server.hpp"
#include "broker/store.hpp"
#include "wire/protocol.hpp"

namespace {

namespace fs = std::filesystem;
using SteadyClock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// Time-ordered snowflake-style ids (41-bit ms, 10-bit worker, 12-bit sequence)
// from several workers round-robin, as decimal text: what the relay forwards.
class SnowflakeIds {
 public:
  explicit SnowflakeIds(int workers) : sequences_(static_cast<std::size_t>(workers), 0) {}
  std::string next() {
    auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
                   std::chrono::system_clock::now().time_since_epoch())
                   .count() -
               1'700'000'000'000LL;
    if (now > last_millis_) {
      last_millis_ = now;
      std::fill(sequences_.begin(), sequences_.end(), 0);
    }
    std::size_t worker = next_worker_++ % sequences_.size();
    if (sequences_[worker] >= 4096) {
      ++last_millis_;
      std::fill(sequences_.begin(), sequences_.end(), 0);
    }
    auto sequence = sequences_[worker]++;
    return std::to_string((static_cast<std::uint64_t>(last_millis_) << 22) |
                          (static_cast<std::uint64_t>(worker + 1) << 12) | sequence);
  }

 private:
  std::vector<std::uint64_t> sequences_;
  std::size_t next_worker_ = 0;
  std::int64_t last_millis_ = 0;
};

struct Settings {
  fs::path dir = fs::temp_directory_path() / "outbox-broker-bench";
  std::size_t messages = 1'000'000;
  std::size_t full_messages = 300'000;
  std::size_t prefill = 10'000'000;
  std::size_t batch = 1000;
  std::size_t in_flight = 16;
  std::size_t payload_bytes = 256;
  std::size_t cache_mib = 512;
  std::size_t rounds = 3;
  int keys = 64;
  bool keep = false;
  bool prefill_with_bodies = false;
  bool prefill_only = false;
};

// A Store and a Server on its own thread, bound to a free loopback port.
class RunningBroker {
 public:
  RunningBroker(const fs::path& db, broker::SyncMode sync, const Settings& settings)
      : store_(db, store_options(sync, settings)) {}

  void start() {
    broker::ServerOptions options;
    options.bind_endpoint = "tcp://127.0.0.1:*";
    server_ = std::make_unique<broker::Server>(store_, options);
    thread_ = std::thread([this] { server_->run(); });
  }

  broker::ServerCounters stop() {
    server_->request_stop();
    thread_.join();
    return server_->counters();
  }

  broker::Store& store() { return store_; }
  const std::string& endpoint() const { return server_->endpoint(); }

 private:
  static broker::StoreOptions store_options(broker::SyncMode sync, const Settings& settings) {
    broker::StoreOptions options;
    options.sync = sync;
    options.cache_bytes = settings.cache_mib * 1024 * 1024;
    return options;
  }

  broker::Store store_;
  std::unique_ptr<broker::Server> server_;
  std::thread thread_;
};

struct PassResult {
  std::size_t count = 0;
  double seconds = 0;
  double cpu = 0;
  std::size_t unexpected = 0;
  double rate() const { return seconds > 0 ? static_cast<double>(count) / seconds : 0; }
};

// Publishes `ids` in batches with up to settings.in_flight batches unacknowledged.
PassResult publish_pass(const std::string& endpoint, const std::vector<std::string>& ids,
                        const Settings& settings, wire::AckStatus expected) {
  broker::Client client(endpoint);
  auto welcome = client.hello("broker-bench", 10s);
  if (!welcome) throw std::runtime_error("HELLO failed: " + welcome.error().message);
  std::string payload(settings.payload_bytes, 'x');
  std::vector<std::string> keys;
  for (int k = 0; k < settings.keys; ++k) keys.push_back("customer-" + std::to_string(k));

  PassResult result;
  double cpu_start = bench::cpu_seconds();
  auto started = SteadyClock::now();
  std::size_t next = 0;
  std::size_t outstanding = 0;
  std::uint64_t batch_id = 0;
  std::string body;
  while (next < ids.size() || outstanding > 0) {
    while (next < ids.size() && outstanding < settings.in_flight) {
      std::size_t end = std::min(ids.size(), next + settings.batch);
      wire::begin_publish_body(body, client.session_id(), ++batch_id);
      for (std::size_t i = next; i < end; ++i) {
        // A distinct payload per message (first bytes = its index), like real traffic.
        std::snprintf(payload.data(), 17, "%016zx", i);
        wire::append_publish_message(body, ids[i], "bench.orders", keys[i % keys.size()], {},
                                     payload);
      }
      wire::finish_publish_body(body, static_cast<std::uint32_t>(end - next));
      if (!client.send_publish_body(body)) break;
      next = end;
      ++outstanding;
    }
    auto reply = client.receive(30s);
    if (!reply) throw std::runtime_error("no ack within 30 s");
    if (!reply->ok()) throw std::runtime_error("bad reply: " + reply->error().message);
    if (auto* error = std::get_if<wire::ErrorReply>(&reply->value())) {
      throw std::runtime_error("broker error: " + error->message);
    }
    if (auto* ack = std::get_if<wire::Ack>(&reply->value())) {
      --outstanding;
      result.count += ack->entries.size();
      for (const auto& entry : ack->entries) {
        if (entry.status != expected) ++result.unexpected;
      }
    }
  }
  result.seconds = std::chrono::duration<double>(SteadyClock::now() - started).count();
  result.cpu = bench::cpu_seconds() - cpu_start;
  return result;
}

std::vector<std::string> make_ids(SnowflakeIds& source, std::size_t count) {
  std::vector<std::string> ids;
  ids.reserve(count);
  for (std::size_t i = 0; i < count; ++i) ids.push_back(source.next());
  return ids;
}

void print(const char* label, const PassResult& result, const broker::ServerCounters& before,
           const broker::ServerCounters& after) {
  double append_seconds =
      static_cast<double>(after.append_nanoseconds - before.append_nanoseconds) / 1e9;
  auto commits = after.group_commits - before.group_commits;
  std::printf(
      "%-40s %9zu msgs %7.2f s %10.0f msgs/s  store %4.0f%%  %6.0f msgs/commit  cpu %5.2f s%s\n",
      label, result.count, result.seconds, result.rate(),
      result.seconds > 0 ? 100.0 * append_seconds / result.seconds : 0.0,
      commits > 0
          ? static_cast<double>(after.messages - before.messages) / static_cast<double>(commits)
          : 0.0,
      result.cpu, result.unexpected > 0 ? "  UNEXPECTED OUTCOMES" : "");
  std::fflush(stdout);
}

// Fills the dedup index through the store, bodies included (not timed, not
// the path measured): --prefill-with-bodies.
void prefill(broker::Store& store, SnowflakeIds& source, std::size_t count,
             const Settings& settings) {
  std::string payload(settings.payload_bytes, 'p');
  std::vector<std::string> ids;
  std::vector<broker::IncomingMessage> batch;
  std::vector<broker::AppendOutcome> outcomes;
  auto started = SteadyClock::now();
  for (std::size_t done = 0; done < count;) {
    std::size_t n = std::min<std::size_t>(20'000, count - done);
    ids = make_ids(source, n);
    batch.clear();
    for (const auto& id : ids) batch.push_back({id, "bench.orders", "customer-0", "", payload});
    store.append(batch, outcomes);
    done += n;
  }
  std::printf("prefilled %zu msg_ids in %.1f s\n", count,
              std::chrono::duration<double>(SteadyClock::now() - started).count());
}

// Offsets in a dedup entry's message_id: topic_id << 40 | offset (the
// store's layout, broker/src/store.cpp).
constexpr int offset_bits = 40;

void check_sqlite(sqlite3* db, int rc, const char* what) {
  if (rc != SQLITE_OK && rc != SQLITE_DONE && rc != SQLITE_ROW) {
    throw std::runtime_error(std::string("bulk load: ") + what + ": " + sqlite3_errmsg(db));
  }
}

void execute(sqlite3* db, const char* sql) {
  check_sqlite(db, sqlite3_exec(db, sql, nullptr, nullptr, nullptr), sql);
}

std::int64_t query_integer(sqlite3* db, const char* sql) {
  sqlite3_stmt* statement = nullptr;
  check_sqlite(db, sqlite3_prepare_v2(db, sql, -1, &statement, nullptr), sql);
  int rc = sqlite3_step(statement);
  std::int64_t value = rc == SQLITE_ROW ? sqlite3_column_int64(statement, 0) : -1;
  sqlite3_finalize(statement);
  check_sqlite(db, rc, sql);
  return value;
}

// splitmix64's finalizer: well-spread 64-bit values standing in for hashes.
std::uint64_t mix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// The i-th bulk-loaded msg_id: 1,000 per millisecond from 4 workers, in key order.
constexpr std::size_t bulk_ids_per_millisecond = 1000;

std::int64_t bulk_first_ms(std::size_t count, std::int64_t newest_ms) {
  return newest_ms - static_cast<std::int64_t>(count / bulk_ids_per_millisecond) - 1000;
}

std::string bulk_msg_id(std::int64_t first_ms, std::size_t i) {
  const auto millis = static_cast<std::uint64_t>(first_ms) + i / bulk_ids_per_millisecond;
  const std::size_t within = i % bulk_ids_per_millisecond;
  return std::to_string((millis << 22) | ((within / 250 + 1) << 12) | (within % 250));
}

// The msg_ids a broker remembers after retention removed their bodies: `count`
// dedup entries of topic bench.orders at offsets 1..count, written straight
// into a store that broker::Store created and closed, in key order and in big
// transactions (minutes for 50 million, where publishing them would take far
// longer). The ids are snowflake-style like SnowflakeIds' but from the
// `count` / 1000 milliseconds before `newest_ms`, so every id published later
// sorts after them, as live traffic does.
void bulk_load_dedup(const fs::path& db_path, std::size_t count, std::int64_t newest_ms) {
  sqlite3* raw = nullptr;
  int rc = sqlite3_open_v2(db_path.c_str(), &raw, SQLITE_OPEN_READWRITE, nullptr);
  std::unique_ptr<sqlite3, int (*)(sqlite3*)> db(raw, sqlite3_close);
  check_sqlite(raw, rc, "open");
  // A scratch file: no journal while loading; WAL again afterwards, as the store keeps it.
  execute(raw, "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA cache_size = -262144");
  sqlite3_stmt* insert = nullptr;
  check_sqlite(raw,
               sqlite3_prepare_v2(raw,
                                  "INSERT INTO dedup(msg_id, message_id, payload_hash, seen_at, "
                                  "envelope_hash) VALUES (?, ?, ?, ?, ?)",
                                  -1, &insert, nullptr),
               "prepare");
  std::unique_ptr<sqlite3_stmt, int (*)(sqlite3_stmt*)> insert_guard(insert, sqlite3_finalize);
  const std::int64_t first_ms = bulk_first_ms(count, newest_ms);
  const std::int64_t seen_at = std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count();
  execute(raw, "BEGIN");
  for (std::size_t i = 0; i < count; ++i) {
    const std::string text = bulk_msg_id(first_ms, i);
    sqlite3_bind_text(insert, 1, text.data(), static_cast<int>(text.size()), SQLITE_STATIC);
    sqlite3_bind_int64(insert, 2,
                       static_cast<std::int64_t>((std::uint64_t{1} << offset_bits) | (i + 1)));
    // Hashes as wide as real ones (XXH64), so an entry takes the bytes it
    // does in a store that received the messages.
    sqlite3_bind_int64(insert, 3, static_cast<std::int64_t>(mix64(2 * i)));
    sqlite3_bind_int64(insert, 4, seen_at);
    sqlite3_bind_int64(insert, 5, static_cast<std::int64_t>(mix64(2 * i + 1)));
    rc = sqlite3_step(insert);
    sqlite3_reset(insert);
    check_sqlite(raw, rc, "insert");
    if ((i + 1) % 1'000'000 == 0) execute(raw, "COMMIT; BEGIN");
  }
  const std::string finish =
      "INSERT INTO topics(topic_id, name, last_offset, message_count) VALUES (1, 'bench.orders', " +
      std::to_string(count) + ", 0); UPDATE counters SET stored = " + std::to_string(count) +
      ", dedup_entries = " + std::to_string(count) + " WHERE id = 1; COMMIT";
  execute(raw, finish.c_str());
  execute(raw, "PRAGMA journal_mode = WAL");
  db.reset();
  // On disk before the passes: otherwise the first checkpoint's fsync would
  // write back gigabytes the loader left dirty, inside a measured pass.
  const int fd = ::open(db_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0 || ::fsync(fd) != 0) {
    if (fd >= 0) ::close(fd);
    throw std::runtime_error("bulk load: cannot fsync " + db_path.string());
  }
  ::close(fd);
}

// Bytes the dedup B-tree of a closed store takes on disk (its pages, with
// their free space), from SQLite's dbstat table.
std::uint64_t dedup_bytes_on_disk(const fs::path& db_path) {
  sqlite3* raw = nullptr;
  int rc = sqlite3_open_v2(db_path.c_str(), &raw, SQLITE_OPEN_READONLY, nullptr);
  std::unique_ptr<sqlite3, int (*)(sqlite3*)> db(raw, sqlite3_close);
  check_sqlite(raw, rc, "open");
  return static_cast<std::uint64_t>(
      query_integer(raw, "SELECT sum(pgsize) FROM dbstat WHERE name = 'dedup'"));
}

// Refuses to start a prefilled pass that would fill the disk.
void check_free_space(const fs::path& dir, std::uint64_t needed) {
  struct statvfs info {};
  if (::statvfs(dir.c_str(), &info) != 0) return;
  const std::uint64_t available = static_cast<std::uint64_t>(info.f_bavail) * info.f_frsize;
  if (available < needed) {
    throw std::runtime_error(dir.string() + " has " + std::to_string(available >> 30) +
                             " GiB free; the prefilled passes need about " +
                             std::to_string((needed >> 30) + 1) + " GiB");
  }
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  Settings settings;
  CLI::App app{"Broker whole-path benchmark: pipelined client -> loopback -> group commit -> acks"};
  app.add_option("--dir", settings.dir, "scratch directory (emptied first)")->capture_default_str();
  app.add_option("--messages", settings.messages, "messages per sync-normal pass")
      ->capture_default_str();
  app.add_option("--full-messages", settings.full_messages, "messages in the sync-full pass")
      ->capture_default_str();
  app.add_option("--prefill", settings.prefill,
                 "msg_ids in the dedup index for the last pass (0: skip)")
      ->capture_default_str();
  app.add_option("--batch", settings.batch, "messages per PUBLISH")->capture_default_str();
  app.add_option("--in-flight", settings.in_flight, "unacknowledged batches")
      ->capture_default_str();
  app.add_option("--payload", settings.payload_bytes, "payload bytes (>= 17)")
      ->capture_default_str();
  app.add_option("--cache-mib", settings.cache_mib, "store page cache")->capture_default_str();
  app.add_option("--rounds", settings.rounds,
                 "rounds of the side-by-side empty / prefilled passes (medians)")
      ->capture_default_str();
  app.add_flag("--prefill-with-bodies", settings.prefill_with_bodies,
               "prefill through Store::append with message bodies, instead of writing the "
               "dedup index directly as retention leaves it");
  app.add_flag("--prefill-only", settings.prefill_only,
               "skip the sync normal / duplicates / sync full passes");
  app.add_flag("--keep", settings.keep, "keep the databases");
  CLI11_PARSE(app, argc, argv);
  if (settings.batch == 0 || settings.in_flight == 0 || settings.rounds == 0 ||
      settings.payload_bytes < 17) {
    std::fprintf(stderr,
                 "--batch, --in-flight and --rounds must be positive, --payload at least 17\n");
    return 2;
  }

  fs::remove_all(settings.dir);
  fs::create_directories(settings.dir);
  std::printf(
      "payload %zu B, batch %zu, %zu batches in flight, %d keys, cache %zu MiB, loopback TCP\n",
      settings.payload_bytes, settings.batch, settings.in_flight, settings.keys,
      settings.cache_mib);
  SnowflakeIds source(4);
  try {
    if (!settings.prefill_only) {
      {
        RunningBroker broker(settings.dir / "normal.db", broker::SyncMode::normal, settings);
        broker.start();
        auto ids = make_ids(source, settings.messages);
        broker::ServerCounters zero;
        auto stored = publish_pass(broker.endpoint(), ids, settings, wire::AckStatus::stored);
        // Counters are read after stop; run the duplicate pass on a fresh loop over the same store.
        auto after_stored = broker.stop();
        print("stored, sync normal, empty index", stored, zero, after_stored);
        broker.start();
        auto duplicates =
            publish_pass(broker.endpoint(), ids, settings, wire::AckStatus::duplicate);
        print("duplicates answered, sync normal", duplicates, zero, broker.stop());
      }
      if (settings.full_messages > 0) {
        RunningBroker broker(settings.dir / "full.db", broker::SyncMode::full, settings);
        broker.start();
        auto ids = make_ids(source, settings.full_messages);
        auto stored = publish_pass(broker.endpoint(), ids, settings, wire::AckStatus::stored);
        print("stored, sync full, empty index", stored, {}, broker.stop());
      }
    }
    if (settings.prefill > 0) {
      // Side by side: each round publishes `messages` new msg_ids into a fresh
      // empty store and into the store holding `prefill` ids, alternating
      // which goes first; the figure is the median of the per-round ratios.
      const std::uint64_t body_bytes = settings.payload_bytes + 96;
      check_free_space(settings.dir,
                       (settings.prefill_with_bodies ? settings.prefill * body_bytes
                                                     : settings.prefill * std::uint64_t{100}) +
                           2 * settings.rounds * settings.messages * body_bytes +
                           (std::uint64_t{1} << 30));
      const fs::path prefilled = settings.dir / "prefilled.db";
      const auto load_started = SteadyClock::now();
      // Bulk-loaded ids end before the ones SnowflakeIds makes from now on.
      const auto newest_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                 std::chrono::system_clock::now().time_since_epoch())
                                 .count() -
                             1'700'000'000'000LL;
      if (settings.prefill_with_bodies) {
        RunningBroker broker(prefilled, broker::SyncMode::normal, settings);
        prefill(broker.store(), source, settings.prefill, settings);
      } else {
        { RunningBroker create(prefilled, broker::SyncMode::normal, settings); }
        bulk_load_dedup(prefilled, settings.prefill, newest_ms);
        std::printf("bulk-loaded %zu msg_ids in %.1f s\n", settings.prefill,
                    std::chrono::duration<double>(SteadyClock::now() - load_started).count());
      }
      const auto dedup_bytes = dedup_bytes_on_disk(prefilled);
      std::printf("dedup index %.2f GiB: %.1f bytes on disk per remembered msg_id; file %.2f GiB\n",
                  static_cast<double>(dedup_bytes) / (1 << 30),
                  static_cast<double>(dedup_bytes) / static_cast<double>(settings.prefill),
                  static_cast<double>(fs::file_size(prefilled)) / (1 << 30));
      if (!settings.prefill_with_bodies) {
        // The store must see what was loaded: its count, and a sample of the
        // ids remembered at their offsets (CONFLICT: the loader's hashes are made up).
        RunningBroker check(prefilled, broker::SyncMode::normal, settings);
        if (check.store().stats().dedup_entries != settings.prefill) {
          throw std::runtime_error("the store does not count the bulk-loaded msg_ids");
        }
        const auto first_ms = bulk_first_ms(settings.prefill, newest_ms);
        const std::size_t step = settings.prefill / 97 + 1;
        std::vector<std::string> sample_ids;
        for (std::size_t i = 0; i < settings.prefill; i += step) {
          sample_ids.push_back(bulk_msg_id(first_ms, i));
        }
        std::vector<broker::IncomingMessage> sample;
        for (const auto& id : sample_ids) sample.push_back({id, "bench.orders", "", "", "x"});
        std::vector<broker::AppendOutcome> outcomes;
        check.store().append(sample, outcomes);
        for (std::size_t k = 0; k < outcomes.size(); ++k) {
          if (outcomes[k].status != broker::AppendStatus::conflict ||
              outcomes[k].offset != k * step + 1) {
            throw std::runtime_error("bulk-loaded msg_id " + sample_ids[k] +
                                     " is not remembered at offset " +
                                     std::to_string(k * step + 1));
          }
        }
      }
      // The large store stays open across rounds, as a running daemon keeps
      // it (opening runs the integrity check over the whole file); each
      // round's empty store is a fresh file.
      const auto opened = SteadyClock::now();
      RunningBroker large(prefilled, broker::SyncMode::normal, settings);
      std::printf("opened the store of %zu ids in %.1f s\n", settings.prefill,
                  std::chrono::duration<double>(SteadyClock::now() - opened).count());
      const std::string large_label =
          "stored, " + std::to_string(settings.prefill / 1'000'000) + "M ids retained";
      // Per round: stored/s by wall clock, and per CPU second of the process
      // (client and broker threads), which waiting for a core does not change.
      std::vector<double> wall_ratios, cpu_ratios, empty_rates, large_rates;
      for (std::size_t round = 0; round < settings.rounds; ++round) {
        PassResult results[2];  // empty, large
        for (int leg = 0; leg < 2; ++leg) {
          const bool is_large = (leg + static_cast<int>(round)) % 2 == 1;
          const fs::path empty_db = settings.dir / "empty.db";
          std::optional<RunningBroker> empty;
          if (!is_large) empty.emplace(empty_db, broker::SyncMode::normal, settings);
          RunningBroker& broker = is_large ? large : *empty;
          broker.start();
          auto ids = make_ids(source, settings.messages);
          results[is_large ? 1 : 0] =
              publish_pass(broker.endpoint(), ids, settings, wire::AckStatus::stored);
          char label[80];
          std::snprintf(label, sizeof label, "round %zu: %s", round + 1,
                        is_large ? large_label.c_str() : "stored, empty store");
          print(label, results[is_large ? 1 : 0], {}, broker.stop());
          if (!is_large) {
            empty.reset();
            std::error_code ignored;
            fs::remove(empty_db, ignored);
            fs::remove(empty_db.string() + "-wal", ignored);
            fs::remove(empty_db.string() + "-shm", ignored);
          }
        }
        empty_rates.push_back(results[0].rate());
        large_rates.push_back(results[1].rate());
        wall_ratios.push_back(results[1].rate() / results[0].rate());
        cpu_ratios.push_back(results[0].cpu / results[1].cpu);
      }
      auto [low, high] = std::minmax_element(wall_ratios.begin(), wall_ratios.end());
      auto [cpu_low, cpu_high] = std::minmax_element(cpu_ratios.begin(), cpu_ratios.end());
      std::printf(
          "median stored/s: empty store %.0f, %zu ids retained %.0f; ratio %.2f (rounds %.2f to "
          "%.2f); per CPU second: ratio %.2f (rounds %.2f to %.2f)\n",
          median(empty_rates), settings.prefill, median(large_rates), median(wall_ratios), *low,
          *high, median(cpu_ratios), *cpu_low, *cpu_high);
    }
  } catch (const std::exception& error) {
    std::fprintf(stderr, "broker-bench: %s\n", error.what());
    return 1;
  }
  if (!settings.keep) fs::remove_all(settings.dir);
  return 0;
}
