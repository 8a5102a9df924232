#include "outbox_e2e.hpp"

#include <sqlite3.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <unordered_map>

#include "bench_support.hpp"
#include "broker/client.hpp"
#include "outbox/outbox.hpp"
#include "outbox/relay_store.hpp"
#include "outbox_processes.hpp"
#include "progress.hpp"

namespace bench {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;

constexpr const char* drain_topic = "bench.drain";
constexpr const char* live_topic = "bench.live";
constexpr const char* latency_topic = "bench.latency";

void wait_for_lease(const fs::path& db, const std::string& holder, ChildProcess& relay) {
  outbox::RelayOptions options;
  options.read_only = true;
  auto store = outbox::RelayStore::open(db, options);
  bool active = wait_until(
      [&] {
        if (!relay.running()) {
          throw std::runtime_error("outbox-relay exited at start: " + relay.log_tail());
        }
        auto lease = store.lease_info();
        // The relay holds it as "<holder>:<instance id>".
        return lease && lease->holder.rfind(holder + ":", 0) == 0 && !lease->expired;
      },
      20s, 2ms);
  if (!active) throw std::runtime_error("outbox-relay did not take the lease within 20 s");
}

void exec_sql(const fs::path& db, const char* sql) {
  sqlite3* handle = nullptr;
  int rc = sqlite3_open_v2(db.c_str(), &handle, SQLITE_OPEN_READWRITE, nullptr);
  std::unique_ptr<sqlite3, int (*)(sqlite3*)> guard(handle, sqlite3_close);
  if (rc == SQLITE_OK) {
    sqlite3_busy_timeout(handle, 10000);
    rc = sqlite3_exec(handle, sql, nullptr, nullptr, nullptr);
  }
  if (rc != SQLITE_OK) {
    throw std::runtime_error("SQL on " + db.string() +
                             " failed: " + (handle ? sqlite3_errmsg(handle) : "cannot open"));
  }
}

// What the kernel says about one process at one moment: CPU time, time
// waiting for a CPU, context switches (all threads).
struct ProcessSample {
  explicit ProcessSample(pid_t pid)
      : run_ns(cpu_run_ns(pid)),
        wait_ns(cpu_wait_ns(pid)),
        switches(context_switches(pid)),
        written(bytes_written(pid)) {}

  double run_ms_since(const ProcessSample& before) const {
    return static_cast<double>(run_ns - before.run_ns) / 1e6;
  }
  double wait_ms_since(const ProcessSample& before) const {
    return static_cast<double>(wait_ns - before.wait_ns) / 1e6;
  }
  OutboxResult::CostPerMessage cost_since(const ProcessSample& before, std::size_t messages) const {
    const double n = static_cast<double>(std::max<std::size_t>(messages, 1));
    return {.cpu_us = static_cast<double>(run_ns - before.run_ns) / 1e3 / n,
            .voluntary_switches =
                static_cast<double>(switches.voluntary - before.switches.voluntary) / n,
            .involuntary_switches =
                static_cast<double>(switches.involuntary - before.switches.involuntary) / n,
            .bytes_written = static_cast<double>(written - before.written) / n};
  }

  std::int64_t run_ns;
  std::int64_t wait_ns;
  ContextSwitches switches;
  std::int64_t written;
};

}  // namespace

OutboxResult run_outbox(const OutboxSettings& settings, const Dataset& data) {
  OutboxResult result;
  TempDir dir("outbox-bench");
  BrokerProcess broker(settings, dir.path());
  BrokerCounters counters(broker.endpoint());
  progress("outbox: broker at " + broker.endpoint() + " (sync " + settings.sync + ")");

  // ---- drain -------------------------------------------------------------
  const auto drain_db = dir / "drain.db";
  const std::size_t drain_count = data.size();
  Expected drain_expected;
  drain_expected.reserve(drain_count);
  result.setup_msgs_per_sec = fill_outbox(drain_db, drain_topic, data, settings.setup_batch);
  for (std::size_t i = 0; i < drain_count; ++i) {
    drain_expected.emplace(data.msg_ids[i], data.payloads[i]);
  }
  progress("outbox: " + std::to_string(drain_count) + " messages committed (" +
           format_rate(result.setup_msgs_per_sec) + " msg/s in batches); starting the relay");
  {
    auto base = counters.read().stored;
    auto started = steady_ns();
    RelayProcess relay(settings, dir.path(), drain_db, broker.endpoint(), "relay-drain");
    auto done =
        wait_for_counter(counters, &BrokerCounters::Values::stored, base + drain_count,
                         pass_timeout(drain_count), {&relay.process(), &broker.process()}, "drain");
    result.drain_messages = drain_count;
    result.drain_seconds = seconds_between(started, done);
    result.drain_msgs_per_sec = static_cast<double>(drain_count) / result.drain_seconds;
    relay.stop();
  }
  progress("outbox: drain " + format_rate(result.drain_msgs_per_sec) + " msg/s (" +
           std::to_string(drain_count) + " in " + std::to_string(result.drain_seconds) + " s)");

  // ---- live --------------------------------------------------------------
  // One database, forwarded with --db, or several in a directory, forwarded
  // with --db-dir by one relay; the latency pass uses the first.
  const int live_databases = std::max(1, settings.live_databases);
  const auto live_dir = dir / "live";
  fs::create_directories(live_dir);
  std::vector<fs::path> live_dbs;
  for (int d = 0; d < live_databases; ++d) {
    live_dbs.push_back(live_databases == 1 ? dir / "app.db"
                                           : live_dir / ("app-" + std::to_string(d) + ".db"));
    auto box = outbox::Outbox::open(live_dbs.back(), producer_options());  // the schema
  }
  const auto& app_db = live_dbs.front();
  // Snowflake ids are unique across databases only if their worker ids are
  // (outbox.hpp): with several databases every producer gets its own.
  const auto live_options = [&](std::uint32_t worker) {
    auto options = producer_options();
    if (live_databases > 1) options.worker_id = worker;
    return options;
  };
  RelayProcess app_relay(
      settings, dir.path(),
      live_databases == 1 ? RelaySource(app_db) : RelaySource::directory(live_dir),
      broker.endpoint(), "relay-app");
  Expected live_expected;
  if (live_databases == 1) {
    wait_for_lease(app_db, "relay-app", app_relay.process());
  } else {
    // The directory's relay opens a database when it finds something pending:
    // one message in each, all stored, before the timed pass.
    auto base = counters.read().stored;
    for (int d = 0; d < live_databases; ++d) {
      auto box = outbox::Outbox::open(live_dbs[static_cast<std::size_t>(d)],
                                      live_options(200 + static_cast<std::uint32_t>(d)));
      outbox::Transaction tx(box);
      auto payload =
          make_payload(settings.payload_bytes, settings.seed + 3, static_cast<std::size_t>(d));
      auto message = tx.enqueue({.topic = live_topic, .key = "warm-up", .payload = payload});
      tx.commit();
      live_expected.emplace(std::move(message.msg_id), std::move(payload));
    }
    wait_for_counter(counters, &BrokerCounters::Values::stored,
                     base + static_cast<std::uint64_t>(live_databases), 60s,
                     {&app_relay.process(), &broker.process()},
                     "the live databases' first messages");
  }

  {
    const int producers = std::max(1, settings.producers);
    const std::size_t count = settings.live_messages;
    result.live_messages = count;
    result.producers = producers;
    result.live_databases = live_databases;
    std::vector<std::vector<std::pair<std::string, std::size_t>>> sent(producers);
    std::vector<std::unique_ptr<outbox::Outbox>> boxes;
    for (int p = 0; p < producers; ++p) {
      boxes.push_back(std::make_unique<outbox::Outbox>(
          outbox::Outbox::open(live_dbs[static_cast<std::size_t>(p % live_databases)],
                               live_options(100 + static_cast<std::uint32_t>(p)))));
    }
    std::atomic<bool> go{false};
    std::atomic<bool> abort{false};
    std::atomic<std::int64_t> last_commit_ns{0};
    std::atomic<std::int64_t> producer_cpu_ns{0};
    std::atomic<std::int64_t> lock_held_ns{0};
    std::mutex error_mutex;
    std::string error;
    std::vector<std::thread> threads;
    for (int p = 0; p < producers; ++p) {
      threads.emplace_back([&, p] {
        try {
          while (!go.load()) std::this_thread::yield();
          auto& box = *boxes[p];
          const auto cpu_start = thread_cpu_ns();
          std::int64_t held = 0;
          for (std::size_t i = static_cast<std::size_t>(p); i < count && !abort.load();
               i += static_cast<std::size_t>(producers)) {
            outbox::Transaction tx(box);
            const auto locked = steady_ns();
            auto message = tx.enqueue(
                {.topic = live_topic,
                 .key = "key-" +
                        std::to_string(i % static_cast<std::size_t>(std::max(settings.keys, 1))),
                 .payload = make_payload(settings.payload_bytes, settings.seed + 1, i)});
            tx.commit();
            held += steady_ns() - locked;
            sent[p].emplace_back(std::move(message.msg_id), i);
          }
          auto now = steady_ns();
          auto previous = last_commit_ns.load();
          while (previous < now && !last_commit_ns.compare_exchange_weak(previous, now)) {
          }
          producer_cpu_ns += thread_cpu_ns() - cpu_start;
          lock_held_ns += held;
        } catch (const std::exception& failure) {
          std::lock_guard lock(error_mutex);
          error = failure.what();
          abort = true;
        }
      });
    }
    auto base = counters.read().stored;
    progress("outbox: live, " + std::to_string(producers) + " producers commit " +
             std::to_string(count) + " messages, one per transaction, into " +
             std::to_string(live_databases) + (live_databases == 1 ? " database" : " databases"));
    const auto broker_cpu_before = cpu_run_ns(broker.process().pid());
    const auto relay_cpu_before = cpu_run_ns(app_relay.process().pid());
    auto started = steady_ns();
    go = true;
    std::int64_t done = 0;
    try {
      done =
          wait_for_counter(counters, &BrokerCounters::Values::stored, base + count,
                           pass_timeout(count), {&app_relay.process(), &broker.process()}, "live");
    } catch (...) {
      abort = true;
      for (auto& thread : threads) thread.join();
      if (!error.empty()) throw std::runtime_error("producer failed: " + error);
      throw;
    }
    const auto per_message_us = [&](std::int64_t ns) {
      return static_cast<double>(ns) / 1e3 / static_cast<double>(count);
    };
    result.live_cpu_broker_us =
        per_message_us(cpu_run_ns(broker.process().pid()) - broker_cpu_before);
    result.live_cpu_relay_us =
        per_message_us(cpu_run_ns(app_relay.process().pid()) - relay_cpu_before);
    for (auto& thread : threads) thread.join();
    if (!error.empty()) throw std::runtime_error("producer failed: " + error);
    result.live_cpu_producers_us = per_message_us(producer_cpu_ns.load());
    result.live_seconds = seconds_between(started, done);
    result.live_msgs_per_sec = static_cast<double>(count) / result.live_seconds;
    result.live_commit_msgs_per_sec =
        static_cast<double>(count) / seconds_between(started, last_commit_ns.load());
    result.live_producer_span_share =
        static_cast<double>(lock_held_ns.load()) / 1e9 / result.live_seconds / live_databases;
    const auto warm_up = live_expected.size();
    for (auto& list : sent) {
      for (auto& [msg_id, index] : list) {
        live_expected.emplace(std::move(msg_id),
                              make_payload(settings.payload_bytes, settings.seed + 1, index));
      }
    }
    if (live_expected.size() != count + warm_up) {
      result.problems.push_back("live: the outbox generated " +
                                std::to_string(live_expected.size() - warm_up) +
                                " distinct msg_ids for " + std::to_string(count) + " messages");
    }
  }
  {
    char line[300];
    std::snprintf(line, sizeof line,
                  "outbox: live CPU per message: broker %.1f us, relay %.1f us, producers %.1f us; "
                  "producers' transactions spanned %.0f %% of each database's time",
                  result.live_cpu_broker_us, result.live_cpu_relay_us, result.live_cpu_producers_us,
                  100 * result.live_producer_span_share);
    progress(line);
  }
  progress("outbox: live " + format_rate(result.live_msgs_per_sec) + " msg/s forwarded (" +
           format_rate(result.live_commit_msgs_per_sec) + " msg/s committed)");

  // ---- latency -----------------------------------------------------------
  Expected latency_expected;
  {
    const auto count =
        static_cast<std::size_t>(std::llround(settings.rate * settings.latency_seconds));
    result.latency_offered_rate = settings.rate;
    std::vector<std::int64_t> commit_ns(count, 0);
    std::vector<std::string> ids(count);
    std::vector<std::int64_t> commit_wall_us(count, 0);
    bool abort = false;
    // The consumer: long-poll FETCH, stamp each reply's arrival.
    ArrivalRecorder consumer(broker.endpoint(), latency_topic);

    progress("outbox: latency, " + format_rate(settings.rate) + " msg/s for " +
             std::to_string(settings.latency_seconds) +
             " s, commit to stored (seen by a consumer)");
    std::string producer_error;
    std::int64_t started = 0, finished = 0;
    const ProcessSample broker_before(broker.process().pid());
    const ProcessSample relay_before(app_relay.process().pid());
    const ProcessSample bench_before(::getpid());
    const MachineCpu machine_before = machine_cpu();
    try {
      auto box = outbox::Outbox::open(app_db, producer_options());
      const double period_ns = 1e9 / settings.rate;
      started = steady_ns();
      auto start_point = SteadyClock::now();
      for (std::size_t i = 0; i < count; ++i) {
        if ((i & 1023) == 0) check_interrupted();
        auto due = start_point + std::chrono::nanoseconds(
                                     static_cast<std::int64_t>(period_ns * static_cast<double>(i)));
        std::this_thread::sleep_until(due);
        outbox::Transaction tx(box);
        auto message = tx.enqueue(
            {.topic = latency_topic,
             .key =
                 "key-" + std::to_string(i % static_cast<std::size_t>(std::max(settings.keys, 1))),
             .payload = make_payload(settings.payload_bytes, settings.seed + 2, i)});
        tx.commit();
        commit_ns[i] = steady_ns();
        commit_wall_us[i] = std::chrono::duration_cast<std::chrono::microseconds>(
                                std::chrono::system_clock::now().time_since_epoch())
                                .count();
        ids[i] = std::move(message.msg_id);
        if (settings.latency_one_at_a_time && !consumer.wait_for(i + 1, 30s)) {
          throw std::runtime_error("message " + std::to_string(i) +
                                   " not seen by the consumer within 30 s");
        }
      }
      finished = steady_ns();
    } catch (const std::exception& failure) {
      producer_error = failure.what();
      abort = true;
    }
    std::vector<ArrivalRecorder::Arrival> arrivals;
    std::string consumer_error;
    try {
      auto timeout = abort ? 0ms
                           : std::chrono::milliseconds(
                                 static_cast<std::int64_t>(settings.latency_seconds * 1000)) +
                                 60s;
      arrivals = consumer.collect(count, timeout);
    } catch (const std::exception& failure) {
      consumer_error = failure.what();
    }
    {
      const ProcessSample broker_after(broker.process().pid());
      const ProcessSample relay_after(app_relay.process().pid());
      const ProcessSample bench_after(::getpid());
      result.latency_cpu_wait_broker_ms = broker_after.wait_ms_since(broker_before);
      result.latency_cpu_wait_relay_ms = relay_after.wait_ms_since(relay_before);
      result.latency_cpu_wait_bench_ms = bench_after.wait_ms_since(bench_before);
      result.latency_steal_share = machine_cpu().steal_share_since(machine_before);
      result.latency_cpu_used_ms = broker_after.run_ms_since(broker_before) +
                                   relay_after.run_ms_since(relay_before) +
                                   bench_after.run_ms_since(bench_before);
      result.latency_broker_cost = broker_after.cost_since(broker_before, count);
      result.latency_relay_cost = relay_after.cost_since(relay_before, count);
      result.latency_bench_cost = bench_after.cost_since(bench_before, count);
    }
    if (!producer_error.empty())
      throw std::runtime_error("latency producer failed: " + producer_error);
    if (!consumer_error.empty()) throw std::runtime_error("latency " + consumer_error);
    check_interrupted();
    result.latency_achieved_rate = static_cast<double>(count) / seconds_between(started, finished);

    std::unordered_map<std::string, std::size_t> index_of;
    index_of.reserve(count);
    for (std::size_t i = 0; i < count; ++i) {
      index_of.emplace(ids[i], i);
      latency_expected.emplace(ids[i], make_payload(settings.payload_bytes, settings.seed + 2, i));
    }
    result.latency_ns.reserve(count);
    std::unique_ptr<std::FILE, int (*)(std::FILE*)> dump(
        settings.latency_dump.empty() ? nullptr : std::fopen(settings.latency_dump.c_str(), "w"),
        std::fclose);
    if (dump)
      std::fprintf(dump.get(), "index,commit_at_ms,latency_ms,broker_stored_minus_commit_ms\n");
    for (const auto& arrival : arrivals) {
      auto found = index_of.find(arrival.msg_id);
      if (found == index_of.end()) continue;  // reported by the read-back check
      auto i = found->second;
      result.latency_ns.push_back(arrival.arrived_ns - commit_ns[i]);
      if (dump) {
        std::fprintf(
            dump.get(), "%zu,%.3f,%.3f,%.3f\n", i,
            static_cast<double>(commit_ns[i] - started) / 1e6,
            static_cast<double>(arrival.arrived_ns - commit_ns[i]) / 1e6,
            static_cast<double>(arrival.broker_stored_ms * 1000 - commit_wall_us[i]) / 1e3);
      }
    }
    if (arrivals.size() < count) {
      result.problems.push_back("latency: the consumer saw " + std::to_string(arrivals.size()) +
                                " of " + std::to_string(count) + " messages");
    }
    result.latency = percentiles(result.latency_ns);
  }
  {
    char line[600];
    std::snprintf(
        line, sizeof line,
        "outbox: latency p50 %.3f ms, p99 %.3f ms, p99.9 %.3f ms, max %.3f ms (%.0f msg/s "
        "achieved); waited for a CPU: broker %.0f ms, relay %.0f ms, producer and consumer "
        "%.0f ms; used %.0f ms of CPU; the hypervisor took %.0f %% of the machine's CPUs (steal)",
        result.latency.p50_ms, result.latency.p99_ms, result.latency.p999_ms, result.latency.max_ms,
        result.latency_achieved_rate, result.latency_cpu_wait_broker_ms,
        result.latency_cpu_wait_relay_ms, result.latency_cpu_wait_bench_ms,
        result.latency_cpu_used_ms, std::max(result.latency_steal_share, 0.0) * 100);
    progress(line);
    auto cost = [](const char* name, const OutboxResult::CostPerMessage& c) {
      char part[200];
      std::snprintf(
          part, sizeof part,
          "%s %.1f us CPU, %.2f voluntary + %.2f involuntary switches, %.0f bytes written", name,
          c.cpu_us, c.voluntary_switches, c.involuntary_switches, c.bytes_written);
      return std::string(part);
    };
    progress("outbox: latency pass, per message: " + cost("broker", result.latency_broker_cost) +
             "; " + cost("relay", result.latency_relay_cost) + "; " +
             cost("producer and consumer", result.latency_bench_cost));
  }
  app_relay.stop();

  // ---- resend ------------------------------------------------------------
  {
    // Forget every delivery, as if the acks had been lost: the relay sends
    // the whole drain outbox again with the same msg_ids.
    exec_sql(drain_db,
             "BEGIN IMMEDIATE; DELETE FROM outbox_delivery; UPDATE outbox_relay_cursor SET "
             "settled_through_seq = 0, delivered_total = 0; COMMIT;");
    auto before = counters.read();
    progress("outbox: resend, the relay sends all " + std::to_string(drain_count) +
             " drained messages again");
    auto started = steady_ns();
    RelayProcess relay(settings, dir.path(), drain_db, broker.endpoint(), "relay-resend");
    std::int64_t done = 0;
    try {
      done = wait_for_counter(counters, &BrokerCounters::Values::duplicates,
                              before.duplicates + drain_count, pass_timeout(drain_count),
                              {&relay.process(), &broker.process()}, "resend");
    } catch (const std::runtime_error& failure) {
      result.problems.push_back(std::string("resend: ") + failure.what());
    }
    auto after = counters.read();
    relay.stop();
    result.resend_messages = drain_count;
    result.resend_duplicates = after.duplicates - before.duplicates;
    result.resend_stored = after.stored - before.stored;
    result.resend_all_duplicate =
        result.resend_duplicates == drain_count && result.resend_stored == 0;
    if (done > 0) {
      result.resend_seconds = seconds_between(started, done);
      result.resend_msgs_per_sec = static_cast<double>(drain_count) / result.resend_seconds;
    }
    if (result.resend_stored != 0) {
      result.problems.push_back("resend: the broker stored " +
                                std::to_string(result.resend_stored) +
                                " messages again instead of answering DUPLICATE");
    }
  }
  progress("outbox: resend " + format_rate(result.resend_msgs_per_sec) + " duplicates/s, " +
           std::to_string(result.resend_duplicates) + " of " + std::to_string(drain_count) +
           " answered DUPLICATE");

  // ---- read back and check ----------------------------------------------
  progress("outbox: reading every topic back");
  result.verified_messages +=
      verify_topic(broker.endpoint(), drain_topic, drain_expected, result.problems);
  result.verified_messages +=
      verify_topic(broker.endpoint(), live_topic, live_expected, result.problems);
  result.verified_messages +=
      verify_topic(broker.endpoint(), latency_topic, latency_expected, result.problems);
  auto final_counters = counters.read();
  result.broker_stored = final_counters.stored;
  result.broker_duplicates = final_counters.duplicates;
  result.broker_conflicts = final_counters.conflicts;
  result.broker_rejected = final_counters.rejected;
  auto committed = drain_expected.size() + live_expected.size() + latency_expected.size();
  if (final_counters.stored != committed) {
    result.problems.push_back("the broker stored " + std::to_string(final_counters.stored) +
                              " messages for " + std::to_string(committed) + " committed");
  }
  if (final_counters.conflicts != 0 || final_counters.rejected != 0) {
    result.problems.push_back("the broker answered CONFLICT " +
                              std::to_string(final_counters.conflicts) + " and REJECTED " +
                              std::to_string(final_counters.rejected) + " times");
  }
  auto status = broker.process().stop(15s);
  if (!status.exited || status.code != 0) {
    result.problems.push_back("outbox-broker ended with " + status.describe());
  }
  return result;
}

}  // namespace bench
