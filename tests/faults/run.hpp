// One run of outbox-faults: starts the pipeline (run_start.cpp) and the
// fault proxies (proxy_control.cpp), injects faults while the producers
// commit (injector.cpp), plays the operator for dead messages
// (dead_messages.cpp), drains, stops everything and hands the databases to
// the checker (run.cpp).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "checker.hpp"
#include "faults_common.hpp"
#include "readers.hpp"
#include "small_disk.hpp"
#include "supervisor.hpp"

namespace faults {

class Run {
 public:
  // `disk`: where app.db lives when the full-disk fault is on (null: off).
  Run(Settings settings, SmallDisk* disk);
  ~Run() { read_retry_hook() = nullptr; }
  Run(const Run&) = delete;
  Run& operator=(const Run&) = delete;

  bool jetstream() const { return settings_.sink == "jetstream"; }
  bool redis_inbox() const { return settings_.inbox == "redis"; }
  bool multi() const { return settings_.databases > 0; }
  bool cutting() const { return !jetstream() && settings_.cut_every != "off"; }

  std::vector<std::pair<std::string, fs::path>> proxy_stats() const;

  int execute();
  // After a failed execute(): what failed, one line per finding (also printed
  // on stdout as "FAILED ..." lines), so that the verdict can name it last.
  const std::vector<std::string>& failures() const { return failures_; }

 private:
  void say(const std::string& line) { std::fprintf(stderr, "outbox-faults: %s\n", line.c_str()); }
  // Says where the drain stopped, keeps it for the verdict, returns false.
  bool stalled(const std::string& where) {
    say(where);
    drain_stalled_at_ = where;
    return false;
  }

  milliseconds between(int low, int high);

  std::map<std::string, InboxRecord> read_inbox_records(const std::vector<std::string>& ids);

  // redis-server on 127.0.0.1, a port the system picked, append-only file
  // fsynced on every write, in the work directory.
  void start_redis();

  std::vector<BrokerCopy> read_destination();

#ifdef OUTBOX_RELAY_WITH_JETSTREAM
  // A JetStream connection once the server answers (it may be restarting).
  std::unique_ptr<JetStreamClient> wait_for_nats(milliseconds timeout);
#endif

  // nats-server -js on 127.0.0.1, a port the system picked; restarts use the
  // same port and store directory. Then the stream covering outbox.>.
  void start_nats();

  void start_everything();

  void start_broker_and_proxies();

  void start_producers_and_relays();

  // Two jetstream_consumer processes (examples/) on one durable pull consumer
  // and one inbox database, as the example recommends for per-key order: max
  // ack pending 1. Each incarnation may get a crash point, where it kills
  // itself right before applying a message or right after, before the ack.
  void start_jetstream_consumers();

  std::unique_ptr<Managed> make_consumer(const std::string& name, int number);

  std::unique_ptr<Managed> start_proxy(const std::string& name, const fs::path& stats,
                                       std::uint64_t seed, const std::string& upstream,
                                       const std::vector<std::string>& faults,
                                       std::string& endpoint);

  std::vector<Managed*> everything();

  // Reaps exits and restarts what is due (unless `restart` is false); what
  // went down comes back after 0-300 ms.
  void tend(bool restart);

  void inject_one();

  // How often each of `processes` has reported a full disk or an I/O error on
  // stderr so far (its current incarnation): the producers' "full disk or I/O
  // error" lines, the relays' "failed with SQLITE_FULL" (or SQLITE_IOERR).
  static std::map<Managed*, std::size_t> disk_reports(const std::vector<Managed*>& processes);

  std::vector<Managed*> producer_processes();
  std::vector<Managed*> relay_processes();

  // Whether one of `processes` reported a full disk since `before`.
  static bool reported_since(const std::vector<Managed*>& processes,
                             std::map<Managed*, std::size_t>& before);

  // Fills app.db's file system to the last block. It stays full until a
  // producer and a relay have reported the failure and 0-300 ms more, or 2 s
  // after only a producer did, at most 5 s (a producer at 100 transactions a
  // second meets it at once, unless SQLite still finds room in its WAL file; a
  // relay when it next records outcomes or renews its lease); then
  // free_disk_when_due frees it.
  bool fill_disk();

  void free_disk_when_due(bool now_anyway);

  // Lease takeovers on a directory of databases, from the relays' archived
  // logs: per database, which relay process (relay or relay-b) acquired each
  // lease epoch; a takeover is an epoch acquired by the other process than
  // the epoch before it (a relay that comes back after kill -9 and claims
  // the lease again is not one).
  struct Takeovers {
    long count = 0, databases = 0;
  };
  Takeovers count_takeovers();

  // Lines in the archived logs of `names` that contain `text`.
  long count_in_logs(const std::vector<std::string>& names, const std::string& text);

  struct DeadRow {
    fs::path db;
    std::string msg_id;
    bool poison;      // written to be undeliverable: no fix exists
    bool holds_back;  // a later message of its (topic, key) exists
  };

  // The dead messages of every outbox database, of those in `among` only when given.
  std::vector<DeadRow> dead_rows(const std::vector<fs::path>* among = nullptr);

  // Plays the operator for one dead message, chosen at random: drops it, or
  // strips its padding (the cause fixed) and replays it, through the
  // outbox-relay CLI. A row that can never be delivered has no fix: "replay"
  // sends it back as it is, and it must go dead again. Returns whether there
  // was one.
  bool resolve_one_dead(bool drop);

  // At the end of the load: every message that can be fixed is dropped or
  // replayed fixed, and every undeliverable row that holds back later
  // messages of its key is dropped; the others stay dead, as an operator may
  // leave them. Returns how many dead messages still need the operator.
  std::size_t resolve_dead_for_drain(const std::vector<fs::path>& among);

  void operator_command(bool drop, const DeadRow& row);

  void strip_padding(const fs::path& app_db, const std::string& msg_id);

  long proxy_faults();

  void load_with_faults();

  bool all_running();

  bool drain();

  long outbox_rows();

  void stop_everything();

  Settings settings_;
  std::mt19937_64 random_;
  fs::path dir_, app_db_, broker_db_, consumer_db_, proxy_stats_, consumer_proxy_stats_,
      relay_cutter_stats_, consumer_cutter_stats_;
  // Every outbox database: app.db alone, or the tenant databases in tenant_dir_.
  std::vector<fs::path> app_dbs_;
  fs::path tenant_dir_;
  std::string broker_endpoint_, proxy_endpoint_, consumer_proxy_endpoint_;
  std::string relay_entry_, consumer_entry_;  // where relays and consumer connect
  SmallDisk* disk_;
  SteadyClock::time_point disk_full_until_{};
  // Fills during which a producer, a relay saw the disk full.
  long disk_full_producer_bites_ = 0, disk_full_relay_bites_ = 0;
  bool producer_saw_full_ = false, relay_saw_full_ = false, disk_free_soon_ = false;
  std::map<Managed*, std::size_t> producer_reports_before_, relay_reports_before_;
  SteadyClock::time_point next_disk_check_{};
  std::unique_ptr<Managed> nats_, redis_, broker_, proxy_, consumer_proxy_, relay_cutter_,
      consumer_cutter_, relay_, standby_relay_, consumer_, consumer2_;
  int nats_port_ = 0, redis_port_ = 0;
  std::set<long> killed_consumer_pids_;  // --inbox redis: consumers that ended by SIGKILL
  long consumer_self_kills_ = 0;
  std::string nats_url_;
  std::vector<std::unique_ptr<Managed>> producers_;
  std::map<std::string, long> fault_kinds_;
  long process_faults_ = 0;
  long duplicates_reported_ = 0;
  long replayed_ = 0, dropped_ = 0;  // dead messages the operator acted on
  long replayed_poison_ = 0;         // of those, undeliverable rows replayed as they were
  long bind_retries_ = 0;
  int broker_starts_ = 0;
  std::vector<std::string> anomalies_;
  std::vector<std::string> failures_;
  std::string drain_stalled_at_;
};

}  // namespace faults
