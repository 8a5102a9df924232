// The outbox pipeline's processes as the benchmark passes use them:
// outbox-broker and outbox-relay started on loopback in a temporary
// directory, the broker's counters read with STATS, an outbox filled with a
// dataset, and a topic read back and checked.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "bench_support.hpp"
#include "broker/client.hpp"
#include "dataset.hpp"
#include "outbox/outbox.hpp"
#include "outbox_e2e.hpp"

namespace bench {

double seconds_between(std::int64_t from_ns, std::int64_t to_ns);
std::string format_rate(double value);

// How long a pass may take before the benchmark gives up: generous, bounded.
std::chrono::milliseconds pass_timeout(std::size_t messages);

// Waits up to 20 s for `process` to write its bound endpoint (tcp://...) to
// `file`; throws with the end of its log if it exits or does not.
std::string wait_for_endpoint_file(ChildProcess& process, const std::filesystem::path& file);

class BrokerProcess {
 public:
  BrokerProcess(const OutboxSettings& settings, const std::filesystem::path& dir);
  const std::string& endpoint() const { return endpoint_; }
  ChildProcess& process() { return *process_; }

 private:
  std::unique_ptr<ChildProcess> process_;
  std::string endpoint_;
};

// The broker's counters, read with STATS (answered by the broker loop after
// the group commit in progress, so `stored` never runs ahead of the acks).
class BrokerCounters {
 public:
  explicit BrokerCounters(const std::string& endpoint) : client_(endpoint) {}
  struct Values {
    std::uint64_t stored = 0, duplicates = 0, conflicts = 0, rejected = 0;
  };
  Values read();

 private:
  broker::Client client_;
};

// What outbox-relay forwards: one database (--db, from a path) or every
// outbox database of a directory (--db-dir).
struct RelaySource {
  RelaySource(const std::filesystem::path& db) : flag("--db"), path(db) {}  // NOLINT
  static RelaySource directory(const std::filesystem::path& dir) {
    RelaySource source(dir);
    source.flag = "--db-dir";
    return source;
  }
  std::string flag;
  std::filesystem::path path;
};

// outbox-relay on `source`, forwarding to `endpoint`.
class RelayProcess {
 public:
  RelayProcess(const OutboxSettings& settings, const std::filesystem::path& dir,
               const RelaySource& source, const std::string& endpoint, const std::string& name,
               const std::vector<std::string>& extra_args = {});
  ChildProcess& process() { return *process_; }
  // SIGTERM; throws unless it exits 0.
  void stop();

 private:
  std::unique_ptr<ChildProcess> process_;
};

// Waits until the broker's counter reaches `target`, polling every millisecond;
// returns the steady time at which it was seen. Throws when a daemon dies or
// the pass takes too long.
std::int64_t wait_for_counter(BrokerCounters& counters,
                              std::uint64_t BrokerCounters::Values::*field, std::uint64_t target,
                              std::chrono::milliseconds timeout, std::vector<ChildProcess*> daemons,
                              const char* what);

outbox::Options producer_options();

// Commits every message of `data` on `topic` into a new outbox at `db` with
// the dataset's own msg_ids, `batch` messages a transaction. Returns msg/s.
double fill_outbox(const std::filesystem::path& db, const std::string& topic, const Dataset& data,
                   std::size_t batch);

// What one topic should hold: msg_id -> payload.
using Expected = std::unordered_map<std::string, std::string>;

// Reads the whole topic back and checks it holds exactly `expected`; returns
// how many matched. With `in_offset_order`, also hands out the msg_ids read,
// in offset order.
std::size_t verify_topic(const std::string& endpoint, const std::string& topic,
                         const Expected& expected, std::vector<std::string>& problems,
                         std::vector<std::string>* in_offset_order = nullptr);

// Two drains against one outbox-broker, each of its own dataset into its own
// outbox and topic: `baseline`, and `variant` (what is measured), in the order
// `variant_first` says. `drain` runs one in `dir`: it fills an outbox, starts
// outbox-relay and returns the seconds until the broker stored the last
// message. Afterwards both topics are read back (exactly once, in per-key
// commit order) and the broker must stop cleanly; what is wrong goes to
// `problems`.
using DrainFunction = std::function<double(const std::filesystem::path& dir, BrokerProcess& broker,
                                           BrokerCounters& counters, const Dataset& data,
                                           const std::string& topic, bool variant)>;
struct DrainPair {
  double baseline_seconds = 0;
  double variant_seconds = 0;
};
DrainPair run_drain_pair(const OutboxSettings& settings, const std::string& name,
                         const Dataset& baseline, const Dataset& variant, bool variant_first,
                         const DrainFunction& drain, std::vector<std::string>& problems);

// A thread that long-polls FETCH on one topic and stamps each reply's
// arrival on the steady clock: when a consumer sees a message, an upper
// bound of its commit-to-stored time.
class ArrivalRecorder {
 public:
  struct Arrival {
    std::string msg_id;
    std::int64_t arrived_ns = 0;
    std::int64_t broker_stored_ms = 0;  // the broker's own timestamp (ms resolution)
  };
  ArrivalRecorder(const std::string& endpoint, const std::string& topic);
  ~ArrivalRecorder();
  ArrivalRecorder(const ArrivalRecorder&) = delete;
  ArrivalRecorder& operator=(const ArrivalRecorder&) = delete;
  // Waits until `count` messages arrived or `timeout` passed, stops the
  // thread and hands out what arrived. Throws what the thread failed with.
  std::vector<Arrival> collect(std::size_t count, std::chrono::milliseconds timeout);
  // Waits until `count` messages arrived; false after `timeout` or when the
  // thread failed (collect() then says why).
  bool wait_for(std::size_t count, std::chrono::milliseconds timeout);

 private:
  std::mutex mutex_;
  std::condition_variable arrived_;
  std::vector<Arrival> arrivals_;
  std::string error_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// verify_topic, and within each key the dataset's (commit) order.
void check_topic_in_order(const std::string& endpoint, const std::string& topic,
                          const Dataset& data, std::vector<std::string>& problems);

}  // namespace bench
