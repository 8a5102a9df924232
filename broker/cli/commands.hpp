// The commands of outbox-broker, each a function over typed settings that its
// subcommand's flags (and the config file's [serve] section) fill in at parse
// time: values are checked and converted by CLI11 validators as they are read.
//
// Errors: a command returns one of cli::ExitCode after reporting at most one
// line; it throws cli::UsageError for a combination of flags that cannot work
// (exit 2). Commands run on the main thread; SIGINT/SIGTERM stop `serve`
// through stop_running_server() and end `tail --follow`.
//
// The namespace is not `broker::cli`: that would hide the shared `::cli`
// library from everything in `broker::`.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

#include <CLI/CLI.hpp>

#include "broker/store.hpp"
#include "cli/metrics_server.hpp"

namespace broker::commands {

// `outbox-broker serve`.
struct ServeSettings {
  std::string db;
  std::string bind = "tcp://127.0.0.1:7750";
  std::string endpoint_file;
  broker::SyncMode sync = broker::SyncMode::full;
  std::uint64_t max_message_bytes = 1024 * 1024;
  std::chrono::milliseconds dedup_window{0};  // 0: forever
  bool allow_short_dedup_window = false;
  std::chrono::milliseconds retention{0};  // 0: forever
  std::uint64_t cache_bytes = 256 * 1024 * 1024;
  std::uint64_t max_database_bytes = 0;  // 0: no limit
  std::string curve_secret_key_file;
  std::string allowed_clients_file;
  std::size_t max_commit_messages = 50'000;
  std::uint64_t max_outgoing_bytes = 64 * 1024 * 1024;
  std::uint64_t max_total_outgoing_bytes = 256 * 1024 * 1024;
  std::chrono::milliseconds peer_timeout{60'000};
  bool skip_integrity_check = false;
  cli::MetricsSettings metrics;
  std::size_t metrics_max_topics = 100;
  std::size_t metrics_max_groups = 100;
  std::string log_format = "text";
};

// `outbox-broker stats` and `tail`: a client of a running broker.
struct ClientSettings {
  std::string connect = "tcp://127.0.0.1:7750";
  bool json = false;
  int timeout_ms = 5000;
  std::string topic;
  std::uint64_t from = 0;
  std::string group;
  std::uint64_t max = 0;
  bool follow = false;
  std::string curve_server_public_key_file;
  std::string curve_secret_key_file;
};

// `outbox-broker keygen`.
struct KeygenSettings {
  std::string secret_file;
  std::string public_file;
  bool force = false;
};

// The subcommands and their flags on `app`, bound to the settings; after a
// successful parse, call the command whose subcommand was given.
struct CommandLine {
  ServeSettings serve;
  ClientSettings client;
  KeygenSettings keygen;
  std::string log_level = "info";  // every command but keygen
  CLI::App* serve_command = nullptr;
  CLI::App* stats_command = nullptr;
  CLI::App* tail_command = nullptr;
  CLI::App* keygen_command = nullptr;

  void add_to(CLI::App& app);
};

// SIGINT/SIGTERM stop whatever server `serve` is running (async-signal-safe).
void stop_running_server() noexcept;

int serve(const ServeSettings& settings, const std::string& log_level);
int stats(const ClientSettings& settings);
int tail(const ClientSettings& settings);
int keygen(const KeygenSettings& settings);

}  // namespace broker::commands
