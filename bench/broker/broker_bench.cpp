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
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>

#include <sys/resource.h>

#include "broker/client.hpp"
#include "broker/server.hpp"
#include "broker/store.hpp"
#include "wire/protocol.hpp"

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
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
  int keys = 64;
  bool keep = false;
};

double cpu_seconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& t) {
    return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6;
  };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

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
  double cpu_start = cpu_seconds();
  auto started = Clock::now();
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
  result.seconds = std::chrono::duration<double>(Clock::now() - started).count();
  result.cpu = cpu_seconds() - cpu_start;
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

// Fills the dedup index directly through the store (not timed, not the path measured).
void prefill(broker::Store& store, SnowflakeIds& source, std::size_t count,
             const Settings& settings) {
  std::string payload(settings.payload_bytes, 'p');
  std::vector<std::string> ids;
  std::vector<broker::IncomingMessage> batch;
  std::vector<broker::AppendOutcome> outcomes;
  auto started = Clock::now();
  for (std::size_t done = 0; done < count;) {
    std::size_t n = std::min<std::size_t>(20'000, count - done);
    ids = make_ids(source, n);
    batch.clear();
    for (const auto& id : ids) batch.push_back({id, "bench.orders", "customer-0", "", payload});
    store.append(batch, outcomes);
    done += n;
  }
  std::printf("prefilled %zu msg_ids in %.1f s\n", count,
              std::chrono::duration<double>(Clock::now() - started).count());
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
  app.add_flag("--keep", settings.keep, "keep the databases");
  CLI11_PARSE(app, argc, argv);
  if (settings.batch == 0 || settings.in_flight == 0 || settings.payload_bytes < 17) {
    std::fprintf(stderr, "--batch and --in-flight must be positive, --payload at least 17\n");
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
    double empty_rate = 0;
    {
      RunningBroker broker(settings.dir / "normal.db", broker::SyncMode::normal, settings);
      broker.start();
      auto ids = make_ids(source, settings.messages);
      broker::ServerCounters zero;
      auto stored = publish_pass(broker.endpoint(), ids, settings, wire::AckStatus::stored);
      empty_rate = stored.rate();
      // Counters are read after stop; run the duplicate pass on a fresh loop over the same store.
      auto after_stored = broker.stop();
      print("stored, sync normal, empty index", stored, zero, after_stored);
      broker.start();
      auto duplicates = publish_pass(broker.endpoint(), ids, settings, wire::AckStatus::duplicate);
      print("duplicates answered, sync normal", duplicates, zero, broker.stop());
    }
    if (settings.full_messages > 0) {
      RunningBroker broker(settings.dir / "full.db", broker::SyncMode::full, settings);
      broker.start();
      auto ids = make_ids(source, settings.full_messages);
      auto stored = publish_pass(broker.endpoint(), ids, settings, wire::AckStatus::stored);
      print("stored, sync full, empty index", stored, {}, broker.stop());
    }
    if (settings.prefill > 0) {
      RunningBroker broker(settings.dir / "prefilled.db", broker::SyncMode::normal, settings);
      prefill(broker.store(), source, settings.prefill, settings);
      broker.start();
      auto ids = make_ids(source, settings.messages);
      auto stored = publish_pass(broker.endpoint(), ids, settings, wire::AckStatus::stored);
      char label[64];
      std::snprintf(label, sizeof label, "stored, sync normal, %zuM ids in index",
                    settings.prefill / 1'000'000);
      print(label, stored, {}, broker.stop());
      std::printf("rate with %zu ids retained vs empty index: %.0f%% (drop %.0f%%)\n",
                  settings.prefill, 100.0 * stored.rate() / empty_rate,
                  100.0 - 100.0 * stored.rate() / empty_rate);
    }
  } catch (const std::exception& error) {
    std::fprintf(stderr, "broker-bench: %s\n", error.what());
    return 1;
  }
  if (!settings.keep) fs::remove_all(settings.dir);
  return 0;
}
