// outbox-relay's subcommands and flags. Every value is checked and converted
// where CLI11 reads it (command line or config file), so the commands get
// typed settings: durations as durations, policies as enums.
#include <unistd.h>

#include <cstdio>
#include <string>

#include "cli/args.hpp"
#include "commands.hpp"

namespace relay::commands {
namespace {

std::string default_holder() {
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0) std::snprintf(host, sizeof host, "localhost");
  return std::string(host) + ":" + std::to_string(::getpid());
}

void add_directory_options(CLI::App* run_cmd, RunSettings& run) {
  run_cmd->add_option("--db-dir", run.db_dir,
                      "Forward every outbox database in this directory (not its subdirectories) "
                      "from this one process, over a few broker connections (--sink broker) or "
                      "one NATS connection (--sink jetstream); databases that appear or go while "
                      "it runs are picked up or dropped");
  run_cmd->add_option("--glob", run.glob, "With --db-dir: which file names are databases")
      ->check(cli::non_empty_check("a pattern of database file names, such as *.db"))
      ->capture_default_str();
  run_cmd
      ->add_option("--connections", run.connections,
                   "With --db-dir: broker connections carrying the databases' sessions (with "
                   "--sink jetstream always one NATS connection)")
      ->capture_default_str()
      ->check(cli::count_check(1, 64));
  run_cmd
      ->add_option("--max-open-databases", run.max_open_databases,
                   "With --db-dir: databases open at once (three file descriptors each); the "
                   "least recently busy idle one is closed beyond it")
      ->capture_default_str()
      ->check(cli::count_check(1, 100000));
  run_cmd
      ->add_option("--opener-threads", run.opener_threads,
                   "With --db-dir: threads that open databases (schema check, backlog, lease) "
                   "while the others are forwarded; 0: the forwarding loop opens each itself")
      ->capture_default_str()
      ->check(cli::count_check(0, 64));
  cli::add_duration_option(run_cmd, "--idle-release", run.idle_release,
                           "With --db-dir: a database idle this long gives its lease up and is "
                           "closed until its next commit",
                           cli::at_least(1s));
  cli::add_duration_option(run_cmd, "--rescan-interval", run.rescan_interval,
                           "With --db-dir: how often to list the directory again, besides "
                           "watching it (inotify)",
                           cli::at_least(100ms));
  cli::add_duration_option(run_cmd, "--idle-poll", run.idle_poll,
                           "With --db-dir: shortest time between two fallback looks for commits "
                           "(PRAGMA data_version) at one open idle database; commits wake it at "
                           "once (inotify), and the looks are paced at 100 a second in all",
                           cli::at_least(10ms));
  run_cmd
      ->add_option("--metrics-max-databases", run.metrics_max_databases,
                   "With --db-dir and --metrics-bind: how many databases, those with the "
                   "largest backlogs, get outbox_relay_database_* series of their own (the "
                   "totals cover every database)")
      ->capture_default_str()
      ->check(cli::count_check(0, 10000));
}

void add_sink_options(CLI::App* run_cmd, RunSettings& run) {
  cli::add_choice_option(run_cmd, "--sink", run.sink,
                         {{"broker", SinkKind::broker}, {"jetstream", SinkKind::jetstream}},
                         "Where messages go: broker (outbox-broker, --broker) or jetstream (a NATS "
                         "JetStream stream, --nats-url and --stream)");
  run_cmd->add_option("--broker", run.broker, "Broker endpoint (--sink broker)")
      ->capture_default_str()
      ->check(cli::connect_endpoint_check());
  run_cmd
      ->add_option("--nats-url", run.nats_url,
                   "NATS server URL, or a comma-separated list of a cluster's nodes (--sink "
                   "jetstream)")
      ->capture_default_str();
  run_cmd->add_option("--stream", run.stream,
                      "JetStream stream the messages must land in (required with --sink "
                      "jetstream); the relay refuses to start when it does not exist");
  run_cmd
      ->add_option("--subject-prefix", run.subject_prefix,
                   "Subjects are <prefix>.<topic>.<key>, topic and key escaped as one token "
                   "each (%XX), '_' for no key; an empty prefix leaves it out "
                   "(--sink jetstream)")
      ->capture_default_str();
  run_cmd->add_flag("--allow-short-dedup-window", run.allow_short_dedup_window,
                    "Run even when the stream's duplicate window is shorter than the relay's "
                    "retry horizon (ack-timeout + connect-timeout + backoff-max + lease). Risk: "
                    "a message whose PubAck was lost and that is resent after the window has "
                    "passed is stored twice, so consumers see it twice (--sink jetstream)");
  cli::add_size_option(run_cmd, "--nats-pending-bytes", run.nats_pending_bytes,
                       "With --db-dir --sink jetstream: bytes published and not yet acknowledged "
                       "over all databases (each database is bounded by --batch-bytes × "
                       "--in-flight); beyond it databases wait for acknowledgements",
                       {std::uint64_t{1} << 16, std::uint64_t{1} << 34, "", false});
}

// Batches, timeouts and the lease: how the pipeline to the sink behaves.
void add_pipeline_options(CLI::App* run_cmd, CommandLine& line) {
  auto& run = line.run;
  line.batch_size_option = run_cmd
                               ->add_option("--batch-size", run.batch_size,
                                            "Messages per PUBLISH batch (with --db-dir default " +
                                                std::to_string(kDirectoryBatchSize) + ")")
                               ->capture_default_str()
                               ->check(cli::count_check(1, 100000));
  cli::add_size_option(run_cmd, "--batch-bytes", run.batch_bytes,
                       "Bytes per batch (as encoded in a PUBLISH, e.g. 512k, 4m); lowered to the "
                       "broker's frame limit. A larger message goes alone; one above the "
                       "broker's limits is dead",
                       {1024, std::uint64_t{1} << 30, "", false});
  line.in_flight_option = run_cmd
                              ->add_option("--in-flight", run.in_flight,
                                           "Batches sent before their acknowledgements (bounds "
                                           "memory; with --db-dir per database, default " +
                                               std::to_string(kDirectoryInFlight) + ")")
                              ->capture_default_str()
                              ->check(cli::count_check(1, 1024));
  // Durations need a unit (500ms, 10s, 5m, 24h, 7d): a bare "2" is refused.
  cli::add_duration_option(run_cmd, "--ack-timeout", run.ack_timeout,
                           "No acknowledgement this long: reconnect and resend");
  cli::add_duration_option(run_cmd, "--connect-timeout", run.connect_timeout,
                           "How long to wait for the broker to open a session");
  cli::add_duration_option(run_cmd, "--backoff-initial", run.backoff_initial,
                           "First delay after a failure (doubles each time, with jitter)");
  cli::add_duration_option(run_cmd, "--backoff-max", run.backoff_max,
                           "Longest delay between attempts");
  cli::add_duration_option(run_cmd, "--lease", run.lease,
                           "Relay lease time, at least 1s: a standby takes over this long after "
                           "the active relay dies (it is renewed every third of it)",
                           cli::at_least(1s));
}

// Retention, dead messages and the relay's own bookkeeping.
void add_bookkeeping_options(CLI::App* run_cmd, RunSettings& run) {
  cli::add_duration_option(run_cmd, "--retention", run.retention,
                           "Delete delivered rows older than this (never: keep them)",
                           cli::at_least(0ms, "never"));
  cli::add_choice_option(run_cmd, "--on-dead", run.on_dead,
                         {{"block", outbox::DeadPolicy::block}, {"skip", outbox::DeadPolicy::skip}},
                         "block: a dead message holds back later messages of its key until "
                         "replayed or dropped (safe default); skip: they go on without it");
  run_cmd->add_option("--holder", run.holder,
                      "Name of this relay for people (default host:pid); the lease is held as "
                      "NAME:INSTANCE, INSTANCE being random per process");
  cli::add_choice_option(run_cmd, "--sync", run.synchronous_full,
                         {{"normal", false}, {"full", true}},
                         "SQLite synchronous level for the relay's bookkeeping");
  cli::add_duration_option(
      run_cmd, "--cleanup-interval", run.cleanup_interval,
      "How often to delete delivered rows past --retention (in batches of 500)");
  cli::add_duration_option(run_cmd, "--summary-interval", run.summary_interval,
                           "How often to log a one-line summary while there is traffic");
  cli::add_duration_option(run_cmd, "--drain-timeout", run.drain_timeout,
                           "On SIGINT/SIGTERM, how long to wait for in-flight acknowledgements "
                           "(0: do not wait; with --db-dir, for all databases together)",
                           cli::at_least(0ms));
}

// Encryption, logs and metrics.
void add_operations_options(CLI::App* run_cmd, RunSettings& run) {
  cli::add_curve_client_options(run_cmd, run.curve_server_public_key_file,
                                run.curve_secret_key_file, "this relay");
  cli::add_log_level_option(run_cmd, run.log_level);
  cli::add_log_format_option(run_cmd, run.log_format);
  cli::add_metrics_options(run_cmd, run.metrics);
  cli::add_duration_option(run_cmd, "--ready-max-lag", run.ready_max_lag,
                           "/readyz answers 503 while the oldest pending message is older than "
                           "this (with --metrics-bind)");
}

void add_operator_commands(CLI::App& app, CommandLine& line) {
  line.status_command = app.add_subcommand("status",
                                           "Backlog, oldest pending age, dead count and "
                                           "lease holder of an outbox (no broker needed)");
  line.status_command->add_option("--db", line.status.db, "Outbox database");
  line.status_command->add_option("--db-dir", line.status.db_dir,
                                  "Every outbox database in this directory: one line each, then "
                                  "totals (pending, oldest pending age, dead, lease)");
  line.status_command
      ->add_option("--glob", line.status.glob, "With --db-dir: which file names are databases")
      ->check(cli::non_empty_check("a pattern of database file names, such as *.db"))
      ->capture_default_str();
  line.status_command->add_flag("--json", line.status.json, "One JSON object");

  line.dead_command = app.add_subcommand("dead", "List dead messages with their reasons");
  line.dead_command->add_option("--db", line.dead.db, "Outbox database")->required();
  line.dead_command->add_flag("--json", line.dead.json, "One JSON object per line");
  line.dead_command->add_option("--limit", line.dead.limit, "At most this many")
      ->capture_default_str()
      ->check(cli::count_check(1));

  line.replay_command = app.add_subcommand("replay", "Make dead messages pending again");
  line.replay_command->add_option("--db", line.replay.db, "Outbox database")->required();
  line.replay_command->add_option("--msg-id", line.replay.msg_id, "The dead message to replay");
  line.replay_command->add_flag("--all", line.replay.all, "Replay every dead message");

  line.drop_command =
      app.add_subcommand("drop", "Give up a dead message for good (unblocks its key)");
  line.drop_command->add_option("--db", line.drop.db, "Outbox database")->required();
  line.drop_command->add_option("--msg-id", line.drop.msg_id, "The dead message to drop")
      ->required();
}

}  // namespace

void CommandLine::add_to(CLI::App& app) {
  run.holder = default_holder();
  run_command = app.add_subcommand("run",
                                   "Forward pending messages to the broker until stopped "
                                   "(SIGINT/SIGTERM: finish in-flight work, exit 0)");
  run_command->add_option("--db", run.db, "Outbox database (the producer's SQLite file)");
  add_directory_options(run_command, run);
  add_sink_options(run_command, run);
  add_pipeline_options(run_command, *this);
  add_bookkeeping_options(run_command, run);
  add_operations_options(run_command, run);
  add_operator_commands(app, *this);
}

void CommandLine::finish_parse() {
  run.batch_size_given = batch_size_option->count() > 0;
  run.in_flight_given = in_flight_option->count() > 0;
}

}  // namespace relay::commands
