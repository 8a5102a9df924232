// outbox-broker's subcommands and flags. Every value is checked and converted
// where CLI11 reads it (command line or config file), so the commands get
// typed settings.
#include <cstdint>
#include <limits>
#include <string>

#include "broker/server.hpp"
#include "cli/args.hpp"
#include "commands.hpp"
#include "wire/protocol.hpp"

namespace broker::commands {
namespace {

using namespace std::chrono_literals;

// Where and how messages are stored.
void add_storage_options(CLI::App* command, ServeSettings& settings) {
  command->add_option("--db", settings.db, "broker database file (created if missing)")->required();
  command
      ->add_option("--bind", settings.bind,
                   "ZeroMQ endpoint to listen on; tcp://127.0.0.1:* picks a free port")
      ->check(cli::bind_endpoint_check())
      ->capture_default_str();
  command->add_option("--endpoint-file", settings.endpoint_file,
                      "write the bound endpoint (with the real port) to this file once listening");
  cli::add_choice_option(command, "--sync", settings.sync,
                         {{"full", broker::SyncMode::full}, {"normal", broker::SyncMode::normal}},
                         "full: fsync every group commit (survives power loss); normal: WAL "
                         "without fsync per commit (survives process crashes)");
  cli::add_size_option(
      command, "--max-message-bytes", settings.max_message_bytes,
      "largest key + headers + payload stored; larger ones are REJECTED "
      "(accepts k, m suffixes)",
      {1, wire::max_message_bytes_in_frame(broker::ServerOptions::default_limits()),
       "what one " + std::to_string(broker::ServerOptions::default_limits().max_body_bytes) +
           "-byte PUBLISH frame carries",
       false});
  cli::add_duration_option(
      command, "--dedup-window", settings.dedup_window,
      "how long a msg_id is remembered, with a unit (e.g. 7d, 24h) or 'forever'; below 1h "
      "needs --allow-short-dedup-window",
      cli::at_least(0ms, "forever"));
  command->add_flag(
      "--allow-short-dedup-window", settings.allow_short_dedup_window,
      "accept a --dedup-window shorter than 1h. A msg_id resent after the window has passed "
      "is stored again and consumers see it twice, and resends come late: a relay retries "
      "until acknowledged (its retry horizon: ack-timeout + connect-timeout + backoff-max + "
      "lease, and much longer while the broker is down), and a producer database restored "
      "from a backup resends everything delivered after that backup");
  cli::add_duration_option(command, "--retention", settings.retention,
                           "how long message bodies are kept (e.g. 7d; 'forever'); never "
                           "shortens the dedup window",
                           cli::at_least(0ms, "forever"));
  cli::add_size_option(command, "--cache", settings.cache_bytes,
                       "database page cache (e.g. 256m), at most this machine's memory",
                       {0, std::numeric_limits<std::uint64_t>::max(), "", true});
  cli::add_size_option(command, "--max-database-size", settings.max_database_bytes,
                       "refuse writes that would grow the database beyond this (e.g. 50g; 0: "
                       "no limit); refused batches get ERROR storage_failure");
  command
      ->add_option("--max-commit-messages", settings.max_commit_messages,
                   "most messages written in one group commit")
      ->check(cli::count_check(1, 1'000'000))
      ->capture_default_str();
  cli::add_size_option(
      command, "--max-outgoing-bytes", settings.max_outgoing_bytes,
      "replies held for one connection at most (e.g. 64m); a peer at this cap "
      "gets no more work until it reads, FETCH replies are sized to fit",
      {std::uint64_t{1} << 20, std::numeric_limits<std::uint64_t>::max(), "", true});
  cli::add_size_option(
      command, "--max-total-outgoing-bytes", settings.max_total_outgoing_bytes,
      "replies held for all connections together (e.g. 256m); past it, a connection "
      "holding more than its share (this / connections) is held as at its cap",
      {std::uint64_t{1} << 20, std::numeric_limits<std::uint64_t>::max(), "", true});
  cli::add_duration_option(
      command, "--peer-timeout", settings.peer_timeout,
      "close a connection from which nothing arrives (no request, no answer to the broker's "
      "PING) for this long, e.g. 60s: a peer gone silent halfway through a message, or one "
      "that neither reads its replies nor sends (never: keep them)",
      cli::at_least(std::chrono::milliseconds(0), "never"));
}

// Logs, metrics, integrity check and CURVE.
void add_operations_options(CLI::App* command, ServeSettings& settings) {
  cli::add_log_format_option(command, settings.log_format);
  cli::add_metrics_options(command, settings.metrics);
  command
      ->add_option("--metrics-max-topics", settings.metrics_max_topics,
                   "topics with their own outbox_broker_topic_last_offset series (first in name "
                   "order; the rest are counted in outbox_broker_topics_unlisted)")
      ->check(cli::count_check(0, 100'000))
      ->capture_default_str();
  command
      ->add_option("--metrics-max-groups", settings.metrics_max_groups,
                   "(consumer group, topic) pairs with their own offset and lag series (first "
                   "in name order)")
      ->check(cli::count_check(0, 100'000))
      ->capture_default_str();
  command->add_flag(
      "--skip-integrity-check", settings.skip_integrity_check,
      "do not run PRAGMA quick_check when opening the database (it reads the whole file; "
      "a corrupt database is otherwise refused with exit 3)");
  command
      ->add_option("--curve-secret-key-file", settings.curve_secret_key_file,
                   "enable CURVE: file with the broker's Z85 secret key")
      ->check(CLI::ExistingFile);
  command
      ->add_option("--allowed-clients-file", settings.allowed_clients_file,
                   "with CURVE: Z85 public keys of allowed clients, one per line")
      ->check(CLI::ExistingFile);
}

}  // namespace

void CommandLine::add_to(CLI::App& app) {
  serve_command = app.add_subcommand("serve", "run the broker daemon");
  add_storage_options(serve_command, serve);
  add_operations_options(serve_command, serve);

  stats_command = app.add_subcommand("stats", "print a running broker's counters");
  tail_command = app.add_subcommand("tail", "print messages of a topic");
  for (auto* command : {stats_command, tail_command}) {
    command->add_option("--connect", client.connect, "broker endpoint")
        ->check(cli::connect_endpoint_check())
        ->capture_default_str();
    cli::add_curve_client_options(command, client.curve_server_public_key_file,
                                  client.curve_secret_key_file, "this client");
    command->add_flag("--json", client.json, "print JSON (one object per line)");
    command->add_option("--timeout-ms", client.timeout_ms, "how long to wait for answers")
        ->check(cli::count_check(1, 3'600'000))
        ->capture_default_str();
  }
  tail_command->add_option("--topic", client.topic, "topic to read")->required();
  tail_command
      ->add_option("--from", client.from, "first offset (default: the group's position, else 1)")
      ->check(cli::count_check());
  tail_command->add_option("--group", client.group,
                           "consumer group: resume from and commit its offset");
  tail_command->add_option("--max", client.max, "stop after this many messages (0: no limit)")
      ->check(cli::count_check());
  tail_command->add_flag("--follow", client.follow,
                         "keep waiting for new messages until interrupted");

  keygen_command =
      app.add_subcommand("keygen", "write a new CURVE key pair (prints the public key)");
  keygen_command->add_option("--secret-file", keygen.secret_file, "secret key file")->required();
  keygen_command->add_option("--public-file", keygen.public_file, "public key file")->required();
  keygen_command->add_flag("--force", keygen.force,
                           "replace existing key files (a new file is written and renamed over "
                           "the old one)");

  for (auto* command : {serve_command, stats_command, tail_command}) {
    cli::add_log_level_option(command, log_level);
  }
}

}  // namespace broker::commands
