// The commands of outbox-relay, each a function over typed settings that its
// subcommand's flags (and the config file's [run] section) fill in at parse
// time: values are checked and converted by CLI11 validators as they are read,
// so a command never sees a duration as text or an unknown policy name.
//
// Errors: a command returns one of cli::ExitCode after printing at most one
// line on stderr; it throws cli::UsageError for a combination of flags that
// cannot work (main prints it and exits 2), outbox::Error when a database
// fails (exit 3). Commands run on the main thread; `run` installs the stop
// handlers that end it on SIGINT/SIGTERM.
//
// The namespace is not `relay::cli`: that would hide the shared `::cli`
// library from everything in `relay::`.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

#include <CLI/CLI.hpp>

#include "cli/metrics_server.hpp"
#include "outbox/relay_store.hpp"

namespace relay::commands {

using namespace std::chrono_literals;

enum class SinkKind { broker, jetstream };

// --db-dir's own defaults: what one database has queued on a shared
// connection is what another database's next batch or HELLO waits behind.
constexpr std::size_t kDirectoryBatchSize = 256;
constexpr std::size_t kDirectoryInFlight = 2;

// `outbox-relay run`: every flag of the subcommand, checked and typed.
struct RunSettings {
  std::string db;
  std::string db_dir;
  std::string glob = "*.db";
  std::size_t connections = 2;
  std::size_t max_open_databases = 256;
  std::size_t opener_threads = 4;
  std::chrono::milliseconds idle_release = 30s;
  std::chrono::milliseconds rescan_interval = 30s;
  std::chrono::milliseconds idle_poll = 1s;
  std::size_t metrics_max_databases = 20;
  // Whether --batch-size / --in-flight were given (flag or config file):
  // --db-dir has smaller defaults of its own.
  bool batch_size_given = false;
  bool in_flight_given = false;
  SinkKind sink = SinkKind::broker;
  std::string broker = "tcp://127.0.0.1:7750";
  std::string nats_url = "nats://127.0.0.1:4222";
  std::string stream;
  std::string subject_prefix = "outbox";
  bool allow_short_dedup_window = false;
  // With --db-dir --sink jetstream: published, not yet acknowledged, over all databases.
  std::uint64_t nats_pending_bytes = std::uint64_t{64} << 20;
  std::size_t batch_size = 1000;
  std::uint64_t batch_bytes = std::uint64_t{1} << 20;
  std::size_t in_flight = 8;
  std::chrono::milliseconds ack_timeout = 10s;
  std::chrono::milliseconds connect_timeout = 2s;
  std::chrono::milliseconds backoff_initial = 100ms;
  std::chrono::milliseconds backoff_max = 30s;
  std::chrono::milliseconds lease = 10s;
  std::chrono::milliseconds retention = 24h;  // 0: never
  outbox::DeadPolicy on_dead = outbox::DeadPolicy::block;
  std::string holder;  // default host:pid
  bool synchronous_full = false;
  std::chrono::milliseconds summary_interval = 5s;
  std::chrono::milliseconds cleanup_interval = 10s;
  std::chrono::milliseconds drain_timeout = 5s;
  std::string curve_server_public_key_file;
  std::string curve_secret_key_file;
  std::string log_level = "info";
  std::string log_format = "text";
  cli::MetricsSettings metrics;
  std::chrono::milliseconds ready_max_lag = 60s;
};

// `outbox-relay status`: one database (--db) or a directory of them (--db-dir).
struct StatusSettings {
  std::string db;
  std::string db_dir;
  std::string glob = "*.db";
  bool json = false;
};

// `outbox-relay dead`.
struct DeadListSettings {
  std::string db;
  bool json = false;
  std::size_t limit = 1000;
};

// `outbox-relay replay` (exactly one of msg_id and all) and `drop` (msg_id).
struct RepairSettings {
  std::string db;
  std::string msg_id;
  bool all = false;
};

// The subcommands and their flags on `app`, bound to `settings`. After a
// successful parse, call finish_parse() and then the command whose
// subcommand was given.
struct CommandLine {
  RunSettings run;
  StatusSettings status;
  DeadListSettings dead;
  RepairSettings replay;
  RepairSettings drop;
  CLI::App* run_command = nullptr;
  CLI::App* status_command = nullptr;
  CLI::App* dead_command = nullptr;
  CLI::App* replay_command = nullptr;
  CLI::App* drop_command = nullptr;
  CLI::Option* batch_size_option = nullptr;
  CLI::Option* in_flight_option = nullptr;

  void add_to(CLI::App& app);
  // Records what only the parse knows (which flags were given).
  void finish_parse();
};

// SIGINT/SIGTERM stop whatever relay `run` is running (async-signal-safe).
void stop_running_relay() noexcept;

int run(const RunSettings& settings);
int show_status(const StatusSettings& settings);
int list_dead(const DeadListSettings& settings);
int replay(const RepairSettings& settings);
int drop(const RepairSettings& settings);

}  // namespace relay::commands
