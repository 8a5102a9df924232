#include "tenants.hpp"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <thread>

#include "bench_support.hpp"
#include "outbox_processes.hpp"
#include "progress.hpp"

namespace bench {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;

// Where 1,000 or 5,000 tenants' file names sort in creation order.
std::string tenant_file(std::size_t index) {
  char name[32];
  std::snprintf(name, sizeof name, "tenant-%05zu.db", index);
  return name;
}

// Messages [begin, end) of `data`.
Dataset slice(const Dataset& data, std::size_t begin, std::size_t end) {
  Dataset part;
  part.msg_ids.assign(data.msg_ids.begin() + static_cast<std::ptrdiff_t>(begin),
                      data.msg_ids.begin() + static_cast<std::ptrdiff_t>(end));
  part.keys.assign(data.keys.begin() + static_cast<std::ptrdiff_t>(begin),
                   data.keys.begin() + static_cast<std::ptrdiff_t>(end));
  part.payloads.assign(data.payloads.begin() + static_cast<std::ptrdiff_t>(begin),
                       data.payloads.begin() + static_cast<std::ptrdiff_t>(end));
  return part;
}

// The dataset split over `databases` databases in contiguous runs; each key
// names its database, as order is kept per database and key only.
Dataset keyed_by_tenant(Dataset data, std::size_t databases) {
  const auto per_database = (data.size() + databases - 1) / databases;
  for (std::size_t i = 0; i < data.size(); ++i) {
    data.keys[i] = "t" + std::to_string(i / per_database) + "/" + data.keys[i];
  }
  return data;
}

// Commits `data` on `topic` into `databases` new outboxes in `dir`, split as
// keyed_by_tenant() keys them.
void fill_tenants(const fs::path& dir, const std::string& topic, const Dataset& data,
                  std::size_t databases, std::size_t batch) {
  fs::create_directories(dir);
  const auto per_database = (data.size() + databases - 1) / databases;
  for (std::size_t d = 0; d * per_database < data.size(); ++d) {
    auto begin = d * per_database;
    fill_outbox(dir / tenant_file(d), topic,
                slice(data, begin, std::min(data.size(), begin + per_database)), batch);
  }
}

std::size_t open_descriptors(pid_t pid) {
  std::error_code error;
  std::size_t count = 0;
  for (fs::directory_iterator entry("/proc/" + std::to_string(pid) + "/fd", error), end;
       !error && entry != end; entry.increment(error)) {
    ++count;
  }
  return count;
}

double resident_mib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  }
  return 0;
}

// The most descriptors `pid` had open, sampled every 100 ms from a thread.
class DescriptorSampler {
 public:
  explicit DescriptorSampler(pid_t pid)
      : thread_([this, pid] {
          while (!stop_.load()) {
            auto now = open_descriptors(pid);
            if (now > max_.load()) max_.store(now);
            std::this_thread::sleep_for(100ms);
          }
        }) {}
  ~DescriptorSampler() {
    stop_.store(true);
    thread_.join();
  }
  DescriptorSampler(const DescriptorSampler&) = delete;
  DescriptorSampler& operator=(const DescriptorSampler&) = delete;
  std::size_t max() const { return max_.load(); }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<std::size_t> max_{0};
  std::thread thread_;
};

// Waits `duration`, throwing when a daemon exits meanwhile.
void keep_watching(std::chrono::milliseconds duration, std::vector<ChildProcess*> daemons) {
  wait_until(
      [&] {
        for (auto* daemon : daemons) {
          if (!daemon->running()) {
            throw std::runtime_error(daemon->name() + " exited: " + daemon->log_tail());
          }
        }
        return false;
      },
      duration, 100ms);
}

// A temporary directory with an outbox-broker and a directory of tenants.
struct Pass {
  Pass(const TenantsSettings& settings, const std::string& name)
      : dir("outbox-bench-tenants-" + name),
        broker(settings.outbox, dir.path()),
        counters(broker.endpoint()),
        tenants(dir / "tenants") {
    fs::create_directories(tenants);
  }
  TempDir dir;
  BrokerProcess broker;
  BrokerCounters counters;
  fs::path tenants;
};

void stop_broker(BrokerProcess& broker, std::vector<std::string>& problems) {
  auto status = broker.process().stop(15s);
  if (!status.exited || status.code != 0) {
    problems.push_back("outbox-broker ended with " + status.describe());
  }
}

}  // namespace

TenantsDrainResult run_tenants_drain(const TenantsSettings& settings, const Dataset& one,
                                     const Dataset& many, bool many_first) {
  TenantsDrainResult result;
  result.databases = settings.databases;
  result.messages = one.size();
  auto pair = run_drain_pair(
      settings.outbox, "tenants", one, keyed_by_tenant(many, settings.databases), many_first,
      [&](const fs::path& dir, BrokerProcess& broker, BrokerCounters& counters, const Dataset& data,
          const std::string& topic, bool is_many) {
        const std::string name = is_many ? "many" : "one";
        const std::size_t databases = is_many ? settings.databases : 1;
        fill_tenants(dir / name, topic, data, databases, settings.outbox.setup_batch);
        auto base = counters.read().stored;
        auto started = steady_ns();
        RelayProcess relay(settings.outbox, dir, RelaySource::directory(dir / name),
                           broker.endpoint(), "relay-" + name);
        auto done =
            wait_for_counter(counters, &BrokerCounters::Values::stored, base + data.size(),
                             pass_timeout(data.size()), {&relay.process(), &broker.process()},
                             is_many ? "drain of many databases" : "drain of one database");
        auto cpu = static_cast<double>(cpu_run_ns(relay.process().pid())) / 1e9;
        auto seconds = seconds_between(started, done);
        (is_many ? result.many_cpu_seconds : result.one_cpu_seconds) = cpu;
        progress("tenants: " + std::to_string(databases) + " database(s), " +
                 format_rate(static_cast<double>(data.size()) / seconds) + " msg/s (" +
                 std::to_string(seconds) + " s, relay CPU " + std::to_string(cpu) + " s)");
        relay.stop();
        return seconds;
      },
      result.problems);
  result.one_seconds = pair.baseline_seconds;
  result.many_seconds = pair.variant_seconds;
  result.one_msgs_per_sec = static_cast<double>(result.messages) / result.one_seconds;
  result.many_msgs_per_sec = static_cast<double>(result.messages) / result.many_seconds;
  result.ratio = result.many_msgs_per_sec / result.one_msgs_per_sec;
  return result;
}

TenantsDrainResult run_tenants_drain_jetstream(const TenantsSettings& settings,
                                               const JetStreamSettings& nats, const Dataset& one,
                                               const Dataset& many, bool many_first) {
  TenantsDrainResult result;
  result.databases = settings.databases;
  result.messages = one.size();
  TempDir dir("outbox-bench-tenants-jetstream");
  JetStreamTarget target(nats, dir.path(), "bench.>");
  auto drain = [&](const Dataset& data, bool is_many) {
    const std::string name = is_many ? "many" : "one";
    const std::size_t databases = is_many ? settings.databases : 1;
    fill_tenants(dir / name, "tenants-" + name, data, databases, settings.outbox.setup_batch);
    const auto base = target.stream_messages();
    const auto target_count = base + data.size();
    auto started = steady_ns();
    RelayProcess relay(settings.outbox, dir.path(), RelaySource::directory(dir / name),
                       "tcp://127.0.0.1:1", "relay-" + name,
                       {"--sink", "jetstream", "--nats-url", target.url(), "--stream",
                        JetStreamTarget::kStream, "--subject-prefix", "bench"});
    std::uint64_t held = 0;
    wait_until(
        [&] {
          if (!relay.process().running()) {
            throw std::runtime_error("outbox-relay exited: " + relay.process().log_tail());
          }
          held = target.stream_messages();
          return held >= target_count;
        },
        pass_timeout(data.size()), 5ms);
    auto done = steady_ns();
    if (held < target_count) throw std::runtime_error("jetstream drain of " + name + " timed out");
    auto cpu = static_cast<double>(cpu_run_ns(relay.process().pid())) / 1e9;
    relay.stop();
    if (auto now = target.stream_messages(); now != target_count) {
      result.problems.push_back("jetstream " + name + ": the stream holds " +
                                std::to_string(now - base) + " messages for " +
                                std::to_string(data.size()) + " committed");
    }
    auto seconds = seconds_between(started, done);
    (is_many ? result.many_cpu_seconds : result.one_cpu_seconds) = cpu;
    (is_many ? result.many_seconds : result.one_seconds) = seconds;
    progress("tenants jetstream: " + std::to_string(databases) + " database(s), " +
             format_rate(static_cast<double>(data.size()) / seconds) + " msg/s (" +
             std::to_string(seconds) + " s, relay CPU " + std::to_string(cpu) + " s)");
  };
  const auto keyed = keyed_by_tenant(many, settings.databases);
  if (many_first) drain(keyed, true);
  drain(one, false);
  if (!many_first) drain(keyed, true);
  result.one_msgs_per_sec = static_cast<double>(result.messages) / result.one_seconds;
  result.many_msgs_per_sec = static_cast<double>(result.messages) / result.many_seconds;
  result.ratio = result.many_msgs_per_sec / result.one_msgs_per_sec;
  return result;
}

TenantsLatencyResult run_tenants_latency(const TenantsSettings& settings) {
  TenantsLatencyResult result;
  result.backlog = settings.backlog;
  Pass pass(settings, "latency");
  auto& [dir, broker, counters, tenants] = pass;
  const std::string backlog_topic = "bench.tenants.backlog";
  const std::string small_topic = "bench.tenants.small";

  progress("tenants: latency, filling a backlog of " + std::to_string(settings.backlog) +
           " messages");
  const auto& outbox = settings.outbox;
  auto backlog =
      make_dataset(settings.backlog, outbox.payload_bytes, outbox.keys, 1000, outbox.seed);
  fill_outbox(tenants / "backlog.db", backlog_topic, backlog, outbox.setup_batch);

  // The small tenants' messages: given msg_ids (distinct across databases),
  // enough for the longest the backlog may take.
  const auto timeout = pass_timeout(settings.backlog);
  const auto capacity = static_cast<std::size_t>(timeout / settings.commit_every) + 1;
  auto small = make_dataset(capacity, outbox.payload_bytes, 1, 1004, outbox.seed + 7);
  std::vector<outbox::Outbox> boxes;
  for (std::size_t t = 0; t < settings.small_tenants; ++t) {
    auto options = producer_options();
    options.worker_id = 1;  // the msg_ids are given; no worker lease needed
    boxes.push_back(outbox::Outbox::open(tenants / tenant_file(t), options));
  }
  for (std::size_t i = 0; i < small.size(); ++i) {
    small.keys[i] = "t" + std::to_string(i % settings.small_tenants);
  }

  ArrivalRecorder consumer(broker.endpoint(), small_topic);
  std::vector<std::int64_t> commit_ns;
  std::vector<std::int64_t> commit_wall_ns;  // the broker stamps stored messages in Unix ms
  commit_ns.reserve(capacity);
  commit_wall_ns.reserve(capacity);
  auto base = counters.read().stored;
  progress("tenants: latency, the backlog drains while " + std::to_string(settings.small_tenants) +
           " small tenants commit one message every " +
           std::to_string(settings.commit_every.count()) + " ms in turn");
  auto started = steady_ns();
  RelayProcess relay(outbox, dir.path(), RelaySource::directory(tenants), broker.endpoint(),
                     "relay-latency");
  // The small tenants commit while the backlog drains: from the first of it
  // stored on, not while the relay process starts (exec, first connection),
  // which no commit of a running relay waits for. Their databases are still
  // closed then (nothing pending), so each one's first commit opens it.
  wait_for_counter(counters, &BrokerCounters::Values::stored, base + 1, 60s,
                   {&relay.process(), &broker.process()}, "the backlog's first message");
  const auto broker_wait_before = cpu_wait_ns(broker.process().pid());
  const auto relay_wait_before = cpu_wait_ns(relay.process().pid());
  const auto bench_wait_before = cpu_wait_ns(::getpid());
  auto give_up = SteadyClock::now() + timeout;
  auto next_commit = SteadyClock::now();
  std::int64_t drained = 0;
  auto next_check = SteadyClock::now();
  for (std::size_t i = 0; i < capacity; ++i) {
    check_interrupted();
    std::this_thread::sleep_until(next_commit);
    next_commit += settings.commit_every;
    outbox::Transaction tx(boxes[i % boxes.size()]);
    tx.enqueue({.topic = small_topic,
                .key = small.keys[i],
                .payload = small.payloads[i],
                .msg_id = small.msg_ids[i]});
    tx.commit();
    commit_ns.push_back(steady_ns());
    commit_wall_ns.push_back(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                 std::chrono::system_clock::now().time_since_epoch())
                                 .count());

    // The backlog is stored when the broker counted it and every small
    // message committed before this one.
    if (counters.read().stored >= base + settings.backlog + i) {
      drained = steady_ns();
      break;
    }
    if (SteadyClock::now() >= next_check) {
      for (auto* daemon : {&relay.process(), &broker.process()}) {
        if (!daemon->running()) {
          throw std::runtime_error(daemon->name() +
                                   " exited during the latency pass: " + daemon->log_tail());
        }
      }
      if (SteadyClock::now() >= give_up) {
        throw std::runtime_error("latency pass: the backlog was not stored within " +
                                 std::to_string(timeout.count() / 1000) + " s");
      }
      next_check = SteadyClock::now() + 100ms;
    }
  }
  result.cpu_wait_broker_ms =
      static_cast<double>(cpu_wait_ns(broker.process().pid()) - broker_wait_before) / 1e6;
  result.cpu_wait_relay_ms =
      static_cast<double>(cpu_wait_ns(relay.process().pid()) - relay_wait_before) / 1e6;
  result.cpu_wait_bench_ms = static_cast<double>(cpu_wait_ns(::getpid()) - bench_wait_before) / 1e6;
  result.small_messages = commit_ns.size();
  result.backlog_seconds = seconds_between(started, drained);
  result.backlog_msgs_per_sec = static_cast<double>(settings.backlog) / result.backlog_seconds;
  auto arrivals = consumer.collect(commit_ns.size(), 30s);

  std::unordered_map<std::string, std::size_t> index_of;
  for (std::size_t i = 0; i < commit_ns.size(); ++i) index_of.emplace(small.msg_ids[i], i);
  std::vector<std::int64_t> samples, stored_samples;
  for (const auto& arrival : arrivals) {
    auto found = index_of.find(arrival.msg_id);
    if (found == index_of.end()) continue;
    samples.push_back(arrival.arrived_ns - commit_ns[found->second]);
    stored_samples.push_back(arrival.broker_stored_ms * 1'000'000 - commit_wall_ns[found->second]);
  }
  result.latency = percentiles(samples);
  result.stored_latency = percentiles(stored_samples);
  relay.stop();
  check_topic_in_order(broker.endpoint(), backlog_topic, backlog, result.problems);
  check_topic_in_order(broker.endpoint(), small_topic, slice(small, 0, commit_ns.size()),
                       result.problems);
  stop_broker(broker, result.problems);
  return result;
}

TenantsIdleResult run_tenants_idle(const TenantsSettings& settings) {
  TenantsIdleResult result;
  result.databases = settings.idle_databases;
  Pass pass(settings, "idle");
  auto& [dir, broker, counters, tenants] = pass;
  const std::string topic = "bench.tenants.idle";
  const auto& outbox = settings.outbox;
  progress("tenants: idle, creating " + std::to_string(settings.idle_databases) +
           " databases of one message each");
  auto data = keyed_by_tenant(
      make_dataset(settings.idle_databases, outbox.payload_bytes, 1, 1008, outbox.seed + 11),
      settings.idle_databases);
  fill_tenants(tenants, topic, data, settings.idle_databases, 1);

  auto base = counters.read().stored;
  auto started = steady_ns();
  RelayProcess relay(outbox, dir.path(), RelaySource::directory(tenants), broker.endpoint(),
                     "relay-idle");
  const auto pid = relay.process().pid();
  DescriptorSampler descriptors(pid);
  // Each database's first open and first write pay for creating its WAL
  // files and syncing the WAL's header: milliseconds each on a loaded disk.
  auto stored =
      wait_for_counter(counters, &BrokerCounters::Values::stored, base + data.size(),
                       pass_timeout(data.size() * 100), {&relay.process(), &broker.process()},
                       "idle databases' first messages");
  result.setup_seconds = seconds_between(started, stored);
  progress("tenants: idle, every message stored after " + std::to_string(result.setup_seconds) +
           " s; settling for " + std::to_string(settings.settle.count() / 1000) + " s");
  keep_watching(settings.settle, {&relay.process(), &broker.process()});
  progress("tenants: idle, measuring for " + std::to_string(settings.idle_seconds) + " s");
  auto cpu_before = cpu_run_ns(pid);
  auto from = steady_ns();
  keep_watching(std::chrono::milliseconds(static_cast<std::int64_t>(settings.idle_seconds * 1000)),
                {&relay.process(), &broker.process()});
  auto cpu_after = cpu_run_ns(pid);
  result.measured_seconds = seconds_between(from, steady_ns());
  result.cpu_percent =
      static_cast<double>(cpu_after - cpu_before) / 1e9 / result.measured_seconds * 100;
  result.rss_mib = resident_mib(pid);
  result.descriptors = open_descriptors(pid);
  result.max_descriptors = descriptors.max();
  relay.stop();
  check_topic_in_order(broker.endpoint(), topic, data, result.problems);
  stop_broker(broker, result.problems);
  return result;
}

}  // namespace bench
