#include "run.hpp"

#include <algorithm>
#include <csignal>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "outbox/relay_store.hpp"

namespace faults {

Run::Run(Settings settings, SmallDisk* disk)
    : settings_(std::move(settings)), random_(settings_.seed), disk_(disk) {
  dir_ = settings_.work_dir;
  fs::create_directories(dir_ / "logs");
  app_db_ = (disk_ != nullptr ? disk_->dir() : dir_) / "app.db";
  if (multi()) {
    tenant_dir_ = dir_ / "tenants";
    fs::create_directories(tenant_dir_);
    for (int i = 1; i <= settings_.databases; ++i) {
      char name[32];
      std::snprintf(name, sizeof name, "tenant-%04d.db", i);
      app_dbs_.push_back(tenant_dir_ / name);
    }
  } else {
    app_dbs_ = {app_db_};
  }
  broker_db_ = dir_ / "broker.db";
  // --inbox redis: the side effects of both consumers, as another service's store.
  consumer_db_ = dir_ / (redis_inbox() ? "effects.db" : "consumer.db");
  proxy_stats_ = dir_ / "proxy.stats";
  consumer_proxy_stats_ = dir_ / "consumer-proxy.stats";
  relay_cutter_stats_ = dir_ / "relay-cutter.stats";
  consumer_cutter_stats_ = dir_ / "consumer-cutter.stats";
  // A read of ours must not wait on a process we keep paused past its time.
  read_retry_hook() = [this] {
    const auto now = SteadyClock::now();
    for (auto* managed : everything()) managed->resume_if_due(now);
  };
}

int Run::execute() {
  auto started = SteadyClock::now();
  start_everything();
  load_with_faults();
  auto load_seconds = std::chrono::duration<double>(SteadyClock::now() - started).count();
  say("load phase over after " + std::to_string(static_cast<long>(load_seconds)) + " s; draining");
  bool drained = drain();
  auto stored = read_destination();
  // The Redis inbox's records, read while redis-server still runs.
  std::optional<RedisInboxView> redis;
  if (redis_inbox()) {
    std::vector<std::string> ids;
    for (const auto& copy : stored) ids.push_back(copy.msg_id);
    redis = RedisInboxView{read_inbox_records(ids), {}};
  }
  stop_everything();
  if (redis) redis->killed_pids = killed_consumer_pids_;
  const bool consumers_ran = consumer_ != nullptr;
  auto report =
      check(app_dbs_, consumers_ran ? std::optional<fs::path>(consumer_db_) : std::nullopt, stored,
            redis ? &*redis : nullptr);
  std::optional<EffectsReport> effects;
  if (jetstream() && consumers_ran) effects = check_effects(app_db_, consumer_db_);
  long total_faults = process_faults_ + proxy_faults();

  std::ostringstream kinds;
  for (const auto& [kind, n] : fault_kinds_) kinds << ' ' << kind << '=' << n;
  for (const auto& [prefix, stats] : proxy_stats()) {
    if (!fs::exists(stats)) continue;
    for (const auto& [kind, n] : read_counts(stats)) {
      if (kind != "total" && kind != "faults_on" && kind.rfind("forwarded", 0) != 0) {
        kinds << ' ' << prefix << kind << '=' << n;
      }
    }
  }
  std::printf(
      "seed=%llu elapsed=%.0fs committed=%ld stored=%ld effects=%ld "
      "producer_duplicates_reported=%ld\n",
      static_cast<unsigned long long>(settings_.seed),
      std::chrono::duration<double>(SteadyClock::now() - started).count(), report.committed,
      report.stored, report.effects, duplicates_reported_);
  std::printf("injected:%s\n", kinds.str().c_str());
  if (!jetstream()) {
    std::printf("dead messages: %ld replayed, %ld dropped (%ld dropped rows in the outbox)\n",
                replayed_, dropped_, report.dropped);
    std::printf(
        "undeliverable rows from the SQL producer: %ld committed, %ld replayed unchanged (dead "
        "again), %ld dropped, %ld left dead\n",
        report.poison, replayed_poison_, report.poison_dropped,
        report.poison - report.poison_dropped);
  }
  for (const auto& line : report.dead) std::printf("dead: %s\n", line.c_str());
  Takeovers takeovers;
  if (multi()) {
    takeovers = count_takeovers();
    std::printf(
        "databases: %d in one directory, forwarded by 2 outbox-relay run --db-dir; lease "
        "takeovers: %ld (a database's lease taken by the other relay process) in %ld databases\n",
        settings_.databases, takeovers.count, takeovers.databases);
  }
  if (disk_ != nullptr) {
    std::vector<std::string> producers;
    for (auto& producer : producers_) producers.push_back(producer->name());
    std::printf(
        "full disk: app.db's tmpfs filled %ld times, seen full (SQLITE_FULL or SQLITE_IOERR) by "
        "a producer during %ld of them, by a relay during %ld; first failures reported by "
        "producers %ld, by relays %ld (SQLITE_FULL) + %ld (SQLITE_IOERR)\n",
        fault_kinds_["disk_full"], disk_full_producer_bites_, disk_full_relay_bites_,
        count_in_logs(producers, "full disk or I/O error"),
        count_in_logs({"relay", "relay-b"}, "failed with SQLITE_FULL"),
        count_in_logs({"relay", "relay-b"}, "failed with SQLITE_IOERR"));
  }
  if (redis_inbox()) {
    std::vector<std::string> consumers = {"consumer", "consumer-b"};
    std::printf(
        "redis inbox: 2 consumers, %ld side effects, %ld repeated as the contract allows (%ld "
        "after a kill -9 between side effect and complete, %ld after a lost claim, %ld after a "
        "failed complete); consumers killed themselves %ld times: %ld after begin before the "
        "side effect, %ld between the side effect and complete, %ld after complete before the "
        "offset commit\n",
        report.effects,
        report.repeated_after_kill + report.repeated_after_claim_lost + report.repeated_after_error,
        report.repeated_after_kill, report.repeated_after_claim_lost, report.repeated_after_error,
        consumer_self_kills_, count_in_logs(consumers, "kill -9 of itself after begin"),
        count_in_logs(consumers, "kill -9 of itself between the side effect"),
        count_in_logs(consumers, "kill -9 of itself after complete"));
  }
  if (jetstream() && !consumers_ran) {
    std::printf("sink=jetstream stream=%s: consumer side effects not checked (no consumer runs)\n",
                kStream);
  }
  std::vector<Finding*> findings = report.all();
  if (effects) {
    for (auto* finding : effects->all()) findings.push_back(finding);
    std::printf("side effects: lost=%ld duplicated=%ld reordered=%ld phantom=%ld\n",
                effects->lost.count, effects->duplicated.count, effects->reordered.count,
                effects->phantom.count);
  }
  for (auto* finding : findings) {
    if (finding->count == 0) continue;
    std::string line = finding->name + ": " + std::to_string(finding->count) + ", first:";
    for (const auto& example : finding->examples) line += " " + example + ";";
    failures_.push_back(line);
  }
  for (const auto& anomaly : anomalies_) failures_.push_back("process: " + anomaly);
  if (!drained) {
    failures_.push_back("drain: the pipeline did not drain within " +
                        std::to_string(settings_.drain_timeout.count()) + " ms (" +
                        drain_stalled_at_ + ")");
  }
  for (const auto& failure : failures_) std::printf("FAILED %s\n", failure.c_str());
  const bool passed = failures_.empty();  // every finding with a count is among them
  if (!passed) {
    const std::string pending =
        settings_.consumer_max_ack_pending == 1
            ? ""
            : " --consumer-max-ack-pending " + std::to_string(settings_.consumer_max_ack_pending);
    std::printf(
        "replay with: outbox-faults --seed %llu --faults %ld%s%s%s%s%s --keep   (logs in %s)\n",
        static_cast<unsigned long long>(settings_.seed), settings_.faults,
        multi() ? (" --databases " + std::to_string(settings_.databases)).c_str() : "",
        settings_.hostile_order ? " --hostile-order" : "", jetstream() ? " --sink jetstream" : "",
        redis_inbox() ? " --inbox redis" : "", pending.c_str(), (dir_ / "logs").c_str());
  }
  std::printf("faults=%ld lost=%ld duplicated=%ld reordered=%ld phantom=%ld dead=%zu%s\n",
              total_faults, report.lost.count, report.duplicated.count, report.reordered.count,
              report.phantom.count, report.dead.size(),
              multi() ? (" takeovers=" + std::to_string(takeovers.count)).c_str() : "");
  std::fflush(stdout);
  return passed ? 0 : 1;
}

milliseconds Run::between(int low, int high) {
  return milliseconds(std::uniform_int_distribution<int>(low, high)(random_));
}

std::vector<Managed*> Run::everything() {
  std::vector<Managed*> all;
  for (auto* managed : {nats_.get(), redis_.get(), broker_.get(), proxy_.get(),
                        consumer_proxy_.get(), relay_cutter_.get(), consumer_cutter_.get(),
                        relay_.get(), standby_relay_.get(), consumer_.get(), consumer2_.get()}) {
    if (managed != nullptr) all.push_back(managed);
  }
  for (auto& producer : producers_) all.push_back(producer.get());
  return all;
}

void Run::tend(bool restart) {
  if (interrupted.load()) throw HarnessError("interrupted");
  auto now = SteadyClock::now();
  for (auto* managed : everything()) {
    managed->resume_if_due(now, !restart);
    bool was_up = managed->state() != Managed::State::down;
    if (auto problem = managed->poll(now + between(0, 300))) {
      anomalies_.push_back(*problem);
      say("PROBLEM: " + *problem + "\n" + managed->last_log_tail());
    }
    if (was_up && managed->state() == Managed::State::down &&
        (managed == consumer_.get() || managed == consumer2_.get()) && managed->last_status() &&
        !managed->last_status()->exited && managed->last_status()->signal == SIGKILL) {
      killed_consumer_pids_.insert(managed->last_pid());
      if (managed->last_self_killed()) {
        ++consumer_self_kills_;
        ++fault_kinds_["consumer_self_kill9"];
        ++process_faults_;
      }
    }
    if (was_up && managed->state() == Managed::State::down && managed == broker_.get() &&
        managed->last_status() && managed->last_status()->exited &&
        managed->last_status()->code == 4) {
      // Exit code 4: the killed broker's port is not free yet; start again soon.
      managed->set_restart_at(now + 20ms);
      if (++bind_retries_ > 2000) throw HarnessError("the broker's port never became free again");
    }
    if (restart && managed->due_for_restart(now)) {
      if (managed == proxy_.get() || managed == consumer_proxy_.get() ||
          managed == relay_cutter_.get() || managed == consumer_cutter_.get()) {
        throw HarnessError(managed->name() + " exited");
      }
      managed->start();
    }
  }
}

void Run::load_with_faults() {
  auto start = SteadyClock::now();
  auto next_fault = start + between(100, 400);
  auto next_report = start + 10s;
  while (!interrupted.load()) {
    auto now = SteadyClock::now();
    if (settings_.duration) {
      if (now - start >= *settings_.duration) break;
    } else {
      if (process_faults_ + proxy_faults() >= settings_.faults) break;
      if (now - start >= settings_.max_load_time) {
        say("the fault budget was not reached within --max-load-time; stopping the load");
        break;
      }
    }
    tend(true);
    free_disk_when_due(false);
    if (now >= next_fault) {
      inject_one();
      next_fault = now + between(60, 450);
    }
    if (now >= next_report) {
      say("faults so far: " + std::to_string(process_faults_) + " process, " +
          std::to_string(proxy_faults()) + " network");
      next_report = now + 10s;
    }
    std::this_thread::sleep_for(5ms);  // the injector's tick
  }
  if (interrupted.load()) throw HarnessError("interrupted");
}

bool Run::all_running() {
  for (auto* managed : everything()) {
    if (!managed->running() || managed->paused()) return false;
  }
  return true;
}

bool Run::drain() {
  free_disk_when_due(true);
  // No more network faults.
  for (auto* proxy :
       {proxy_.get(), consumer_proxy_.get(), relay_cutter_.get(), consumer_cutter_.get()}) {
    if (proxy != nullptr) proxy->notify(SIGUSR1);
  }
  auto deadline = SteadyClock::now() + settings_.drain_timeout;
  auto left = [&] {
    return std::chrono::duration_cast<milliseconds>(deadline - SteadyClock::now());
  };
  // Everything that is down comes back.
  if (!test_support::wait_until(
          [&] {
            tend(true);
            return all_running();
          },
          left(), 5ms)) {
    return stalled("not every process came back in time");
  }
  say("all processes up; stopping the producers");
  // Producers finish their last transaction.
  for (auto& producer : producers_) {
    producer->stay_down();
    producer->signal(SIGTERM);
  }
  if (!test_support::wait_until(
          [&] {
            tend(false);
            return std::all_of(producers_.begin(), producers_.end(),
                               [](auto& p) { return p->state() == Managed::State::down; });
          },
          left(), 5ms)) {
    return stalled("producers did not stop");
  }
  say("producers stopped; waiting for the outbox to drain");
  for (auto& producer : producers_) {
    long committed = 0, rolled_back = 0, duplicates = 0;
    if (std::sscanf(producer->stdout_text().c_str(),
                    "committed %ld rolled-back %ld duplicates-reported %ld", &committed,
                    &rolled_back, &duplicates) == 3) {
      duplicates_reported_ += duplicates;
    }
  }
  // The relays deliver everything. A database with nothing pending and
  // nothing dead stays so (the producers stopped): it is not read again.
  std::vector<fs::path> undrained = app_dbs_;
  std::int64_t pending = 0, dead = 0;
  if (!test_support::wait_until(
          [&] {
            tend(true);
            pending = dead = 0;
            std::vector<fs::path> with_dead, still;
            for (const auto& app_db : undrained) {
              outbox::RelayOptions options;
              options.read_only = true;
              outbox::Stats stats;
              try {
                stats = outbox::RelayStore::open(app_db, options).stats();
              } catch (const outbox::Error& error) {
                // A lock a paused process holds: resumed in tend(), read again.
                const int primary = error.extended_code() & 0xff;
                if (primary != SQLITE_BUSY && primary != SQLITE_PROTOCOL) throw;
                still.push_back(app_db);
                ++pending;
                continue;
              }
              pending += stats.pending;
              dead += stats.dead;
              if (stats.dead > 0) with_dead.push_back(app_db);
              if (stats.pending > 0 || stats.dead > 0) still.push_back(app_db);
            }
            undrained = std::move(still);
            std::size_t need_operator = 0;
            if (!with_dead.empty() && !jetstream()) {
              need_operator = resolve_dead_for_drain(with_dead);
            }
            return pending == 0 && need_operator == 0;
          },
          left(), 20ms)) {
    return stalled("the outbox did not drain: pending " + std::to_string(pending) + ", dead " +
                   std::to_string(dead) + " (" + std::to_string(undrained.size()) + " databases)");
  }
  if (!consumer_) return true;  // --sink jetstream built without examples/jetstream_consumer
  // The consumers apply everything the broker has (in JetStream mode every
  // outbox row: nothing is dropped there, and the outbox drained).
  std::vector<BrokerCopy> copies;
  if (!jetstream()) copies = fetch_everything(broker_endpoint_, broker_topics(app_dbs_));
  long stored = jetstream() ? outbox_rows() : static_cast<long>(copies.size());
  say("outbox drained; waiting for the consumer to apply " + std::to_string(stored) + " messages");
  // What this checks is that the consumers finish, not how fast: on a loaded
  // machine (a sanitizer build beside other suites) a consumer that applies
  // one message per round trip may still be applying when the drain's time is
  // up. So the wait goes on past it while effects keep coming, for at most
  // half the drain timeout more (the tests' own timeouts allow for that), and
  // ends as a stall once 15 s pass without a new effect.
  long effects = count_effects(consumer_db_);
  auto last_progress = SteadyClock::now();
  const auto hard_deadline = deadline + settings_.drain_timeout / 2;
  test_support::wait_until(
      [&] {
        tend(true);
        const long applied = count_effects(consumer_db_);
        const auto now = SteadyClock::now();
        if (applied > effects) {
          effects = applied;
          last_progress = now;
        }
        if (effects >= stored) return true;
        // Past the drain's time and stalled: no use waiting for the hard deadline.
        return now >= deadline && now - last_progress >= 15s;
      },
      std::chrono::duration_cast<milliseconds>(hard_deadline - SteadyClock::now()), 20ms);
  if (effects < stored) {
    return stalled(
        "the consumer did not catch up: " + std::to_string(effects) + " of " +
        std::to_string(stored) + " (its last new effect " +
        std::to_string(
            std::chrono::duration_cast<milliseconds>(SteadyClock::now() - last_progress).count()) +
        " ms before)");
  }
  if (!redis_inbox()) return true;
  // A claim whose consumer was killed after its side effect is completed by
  // the other consumer once its lease has passed.
  std::vector<std::string> ids;
  for (const auto& copy : copies) ids.push_back(copy.msg_id);
  long unfinished = 0;
  if (!test_support::wait_until(
          [&] {
            tend(true);
            unfinished = 0;
            for (const auto& [id, record] : read_inbox_records(ids)) {
              if (record.state != "completed") ++unfinished;
            }
            return unfinished == 0;
          },
          left(), 200ms)) {
    return stalled("the consumers did not complete " + std::to_string(unfinished) + " claims");
  }
  return true;
}

long Run::outbox_rows() {
  Database app(app_db_);
  return std::stol(app.rows("SELECT count(*) FROM outbox_messages")[0][0]);
}

void Run::stop_everything() {
  // SIGTERM, as an operator would; each must exit 0.
  for (auto* managed : everything()) {
    managed->stay_down();
    managed->signal(SIGTERM);
  }
  test_support::wait_until(
      [&] {
        tend(false);
        for (auto* managed : everything()) {
          if (managed->state() != Managed::State::down) return false;
        }
        return true;
      },
      60s, 5ms);
}

}  // namespace faults
