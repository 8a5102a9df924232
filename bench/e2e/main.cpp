// outbox-bench: end-to-end throughput and latency of the outbox pipeline
// (producer library -> outbox-relay -> outbox-broker, real processes over
// loopback) next to NATS JetStream doing the same work, in one run.
//
//   outbox-bench e2e                 the outbox pipeline only
//   outbox-bench jetstream           nats-server + libnats only
//   outbox-bench compare [--json]    both, alternating rounds, and the ratio
//   outbox-bench cuts                drain with the relay's connection cut at
//                                    random, next to the same drain without
//   outbox-bench metrics             drain with the relay serving metrics (and
//                                    scraped every second), next to one without
//   outbox-bench tenants             one relay forwarding a directory of
//                                    databases: drain of many small ones next
//                                    to one large one, a small tenant's latency
//                                    under a backlog, the cost of idle ones
//
// Progress goes to stderr, the table (or with --json one JSON object) to
// stdout, and the same JSON object to a results file under bench/results/.
// Exit codes: 0 every check passed (targets are reported, not enforced),
// 1 a message was missing or stored twice, or a pass failed, 2 bad flags,
// 130 interrupted.
// GCC 12 reports a false "potential null pointer dereference" inside CLI11's
// string helpers once they are inlined here.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wnull-dereference"
#endif

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>

#include <CLI/CLI.hpp>

#include "bench_support.hpp"
#include "cli/process.hpp"
#include "cuts.hpp"
#include "dataset.hpp"
#include "jetstream.hpp"
#include "outbox_e2e.hpp"
#include "overhead.hpp"
#include "progress.hpp"
#include "report.hpp"
#include "tenants.hpp"

namespace {

namespace fs = std::filesystem;

constexpr int exit_interrupted = 130;

struct Flags {
  std::size_t messages = 200'000;
  std::size_t live_messages = 100'000;
  std::size_t payload_bytes = 256;
  int keys = 64;
  int producers = 2;
  int live_databases = 1;
  double rate = 10'000;
  double latency_seconds = 8;
  std::string sync = "normal";
  int rounds = 3;
  std::size_t relay_batch = 0;
  std::string relay_batch_bytes;
  std::size_t relay_in_flight = 0;
  std::size_t js_max_pending = 4000;
  bool js_latency = true;
  std::string broker_binary;
  std::string relay_binary;
  std::string nats_server = "nats-server";
  std::string proxy_binary = OUTBOX_BENCH_FAULT_PROXY;
  std::string cut_every = "2K-400K";
  bool cuts_jetstream = false;
  std::string results_dir = OUTBOX_BENCH_RESULTS_DIR;
  std::string latency_dump;
  bool latency_one_at_a_time = false;
  bool json = false;
  bool quiet = false;
  std::uint64_t seed = 20261125;
  // outbox-bench tenants
  std::size_t databases = 1000;
  std::size_t per_database = 200;
  std::size_t backlog = 1'000'000;
  std::size_t small_tenants = 10;
  int commit_every_ms = 20;
  std::size_t idle_databases = 5000;
  double settle_seconds = 35;
  double idle_seconds = 60;
  std::vector<std::string> parts = {"drain", "latency", "idle"};
  std::string sink = "broker";  // drain: where the relay forwards
};

std::string joined_command_line(int argc, char** argv) {
  std::string line;
  for (int i = 0; i < argc; ++i) {
    std::string arg = argv[i];
    if (i == 0) arg = fs::path(arg).filename().string();
    bool plain = !arg.empty() && arg.find_first_of(" \t'\"\\$`") == std::string::npos;
    line += (i ? " " : "") + (plain ? arg : "'" + arg + "'");
  }
  return line;
}

bench::OutboxSettings outbox_settings(const Flags& flags) {
  bench::OutboxSettings settings;
  auto dir = bench::executable_dir();
  settings.broker_binary =
      flags.broker_binary.empty() ? dir / "outbox-broker" : fs::path(flags.broker_binary);
  settings.relay_binary =
      flags.relay_binary.empty() ? dir / "outbox-relay" : fs::path(flags.relay_binary);
  settings.sync = flags.sync;
  settings.live_messages = flags.live_messages;
  settings.producers = flags.producers;
  settings.live_databases = flags.live_databases;
  settings.rate = flags.rate;
  settings.latency_seconds = flags.latency_seconds;
  settings.payload_bytes = flags.payload_bytes;
  settings.keys = flags.keys;
  settings.relay_batch = flags.relay_batch;
  settings.relay_batch_bytes = flags.relay_batch_bytes;
  settings.relay_in_flight = flags.relay_in_flight;
  settings.seed = flags.seed;
  settings.latency_dump = flags.latency_dump;
  settings.latency_one_at_a_time = flags.latency_one_at_a_time;
  return settings;
}

bench::JetStreamSettings jetstream_settings(const Flags& flags) {
  bench::JetStreamSettings settings;
  settings.server_binary = flags.nats_server;
  settings.max_pending = flags.js_max_pending;
  settings.rate = flags.js_latency ? flags.rate : 0;
  settings.latency_seconds = flags.latency_seconds;
  settings.payload_bytes = flags.payload_bytes;
  settings.seed = flags.seed;
  return settings;
}

void collect(bench::Summary& summary, const std::vector<std::string>& problems,
             const std::string& prefix) {
  for (const auto& problem : problems) summary.problems.push_back(prefix + problem);
}

int finish(const Flags& flags, bench::RunInfo info, const bench::Summary& summary);

// outbox-bench cuts: per round one drain without cuts and one under cuts,
// other msg_ids each, alternating which goes first.
void run_cuts_rounds(const Flags& flags, const bench::RunInfo& info, bench::Summary& summary) {
  bench::CutsSettings settings;
  settings.outbox = outbox_settings(flags);
  settings.proxy_binary = flags.proxy_binary;
  settings.cut_every = flags.cut_every;
  settings.jetstream = flags.cuts_jetstream;
  settings.js = jetstream_settings(flags);
  for (int round = 1; round <= info.rounds; ++round) {
    auto base = static_cast<std::uint32_t>(round * 8);
    auto seed = flags.seed + static_cast<std::uint64_t>(round);
    auto plain = bench::make_dataset(flags.messages, flags.payload_bytes, flags.keys, base, seed);
    auto cut =
        bench::make_dataset(flags.messages, flags.payload_bytes, flags.keys, base + 4, seed + 1000);
    settings.seed = seed;
    bench::progress("round " + std::to_string(round) + " of " + std::to_string(info.rounds));
    auto result = bench::run_cuts(settings, plain, cut, round % 2 == 0);
    collect(summary, result.problems, "round " + std::to_string(round) + ": ");
    summary.cuts.push_back(std::move(result));
  }
}

// outbox-bench metrics: per round one drain without metrics and one with
// them, other msg_ids each, alternating which goes first.
void run_overhead_rounds(const Flags& flags, const bench::RunInfo& info, bench::Summary& summary) {
  bench::OverheadSettings settings;
  settings.outbox = outbox_settings(flags);
  for (int round = 1; round <= info.rounds; ++round) {
    auto base = static_cast<std::uint32_t>(round * 8);
    auto seed = flags.seed + static_cast<std::uint64_t>(round);
    auto off = bench::make_dataset(flags.messages, flags.payload_bytes, flags.keys, base, seed);
    auto on =
        bench::make_dataset(flags.messages, flags.payload_bytes, flags.keys, base + 4, seed + 1000);
    bench::progress("round " + std::to_string(round) + " of " + std::to_string(info.rounds));
    auto result = bench::run_overhead(settings, off, on, round % 2 == 0);
    collect(summary, result.problems, "round " + std::to_string(round) + ": ");
    summary.overhead.push_back(std::move(result));
  }
}

// outbox-bench tenants: the parts asked for, the drain in rounds that
// alternate which side goes first.
void run_tenants(const Flags& flags, const bench::RunInfo& info, bench::Summary& summary) {
  bench::TenantsSettings settings;
  settings.outbox = outbox_settings(flags);
  settings.databases = flags.databases;
  settings.per_database = flags.per_database;
  settings.backlog = flags.backlog;
  settings.small_tenants = flags.small_tenants;
  settings.commit_every = std::chrono::milliseconds(flags.commit_every_ms);
  settings.idle_databases = flags.idle_databases;
  settings.settle =
      std::chrono::milliseconds(static_cast<std::int64_t>(flags.settle_seconds * 1000));
  settings.idle_seconds = flags.idle_seconds;
  auto wanted = [&](const std::string& part) {
    return std::find(flags.parts.begin(), flags.parts.end(), part) != flags.parts.end();
  };
  if (wanted("drain")) {
    const auto messages = flags.databases * flags.per_database;
    for (int round = 1; round <= info.rounds; ++round) {
      auto base = static_cast<std::uint32_t>(round * 8);
      auto seed = flags.seed + static_cast<std::uint64_t>(round);
      auto one = bench::make_dataset(messages, flags.payload_bytes, flags.keys, base, seed);
      auto many =
          bench::make_dataset(messages, flags.payload_bytes, flags.keys, base + 4, seed + 1000);
      bench::progress("round " + std::to_string(round) + " of " + std::to_string(info.rounds));
      auto result = flags.sink == "jetstream"
                        ? bench::run_tenants_drain_jetstream(settings, jetstream_settings(flags),
                                                             one, many, round % 2 == 0)
                        : bench::run_tenants_drain(settings, one, many, round % 2 == 0);
      collect(summary, result.problems, "round " + std::to_string(round) + ": ");
      summary.tenants_drain.push_back(std::move(result));
    }
  }
  if (wanted("latency")) {
    summary.tenants_latency = bench::run_tenants_latency(settings);
    collect(summary, summary.tenants_latency->problems, "latency: ");
  }
  if (wanted("idle")) {
    summary.tenants_idle = bench::run_tenants_idle(settings);
    collect(summary, summary.tenants_idle->problems, "idle: ");
  }
}

int run(const std::string& subcommand, const Flags& flags, const std::string& command_line) {
  bench::set_progress_enabled(!flags.quiet);
  bench::RunInfo info;
  info.subcommand = subcommand;
  info.command_line = command_line;
  info.started_at = bench::utc_now_iso();
  info.source_commit = bench::source_commit();
  info.messages = flags.messages;
  info.payload_bytes = flags.payload_bytes;
  info.sync = flags.sync;
  info.rate = flags.rate;
  info.latency_seconds = flags.latency_seconds;
  info.rounds = subcommand == "compare" || subcommand == "cuts" || subcommand == "metrics" ||
                        subcommand == "tenants"
                    ? std::max(flags.rounds, 1)
                    : 1;
  info.machine = bench::describe_machine();
  if (subcommand == "cuts") info.cut_every = flags.cut_every;

  bench::Summary summary;
  if (subcommand == "cuts") {
    run_cuts_rounds(flags, info, summary);
    return finish(flags, info, summary);
  }
  if (subcommand == "metrics") {
    run_overhead_rounds(flags, info, summary);
    return finish(flags, info, summary);
  }
  if (subcommand == "tenants") {
    info.messages = flags.databases * flags.per_database;
    run_tenants(flags, info, summary);
    return finish(flags, info, summary);
  }
  const bool with_outbox = subcommand != "jetstream";
  const bool with_jetstream = subcommand != "e2e";
  if (with_jetstream && !bench::jetstream_available()) {
    std::fprintf(stderr, "outbox-bench: built without libnats; install libnats-dev and rebuild\n");
    return cli::exit_usage;
  }

  for (int round = 1; round <= info.rounds; ++round) {
    // The same msg_ids and payloads for both sides of a round.
    auto data = bench::make_dataset(flags.messages, flags.payload_bytes, flags.keys,
                                    static_cast<std::uint32_t>(round * 8),
                                    flags.seed + static_cast<std::uint64_t>(round));
    std::string prefix = info.rounds > 1 ? "round " + std::to_string(round) + ": " : "";
    if (info.rounds > 1)
      bench::progress("round " + std::to_string(round) + " of " + std::to_string(info.rounds));
    // Alternate which side goes first, so neither always runs on a warmer machine.
    bool outbox_first = round % 2 == 1;
    for (int side = 0; side < 2; ++side) {
      bool outbox_turn = (side == 0) == outbox_first;
      if (outbox_turn && with_outbox) {
        auto result = bench::run_outbox(outbox_settings(flags), data);
        collect(summary, result.problems, prefix + "outbox: ");
        summary.outbox.push_back(std::move(result));
      } else if (!outbox_turn && with_jetstream) {
        auto result = bench::run_jetstream(jetstream_settings(flags), data);
        collect(summary, result.problems, prefix + "jetstream: ");
        summary.jetstream.push_back(std::move(result));
      }
    }
  }

  return finish(flags, info, summary);
}

// Prints the table (or JSON), writes the results file; the exit code.
int finish(const Flags& flags, bench::RunInfo info, const bench::Summary& summary) {
  info.load_average_at_end = bench::load_average();
  auto json = bench::json_report(info, summary);
  if (!flags.results_dir.empty()) {
    try {
      auto path = bench::write_results_file(flags.results_dir, info, json);
      bench::progress("results written to " + path.string());
    } catch (const std::exception& error) {
      std::fprintf(stderr, "outbox-bench: %s\n", error.what());
    }
  }
  if (flags.json) {
    std::cout << json << std::endl;
  } else {
    std::cout << bench::text_report(info, summary) << std::flush;
  }
  if (!summary.ok()) {
    std::fprintf(stderr, "outbox-bench: CHECK FAILED\n");
    for (const auto& problem : summary.problems) std::fprintf(stderr, "  %s\n", problem.c_str());
    return cli::exit_failure;
  }
  return cli::exit_ok;
}

}  // namespace

int main(int argc, char** argv) {
  Flags flags;
  CLI::App app{
      "outbox-bench: end-to-end figures for the outbox pipeline (producer library, outbox-relay, "
      "outbox-broker as real processes over loopback) and NATS JetStream doing the same work."};
  app.require_subcommand(1);
  app.fallthrough();
  app.add_option("--messages", flags.messages,
                 "Messages in the drain pass and in JetStream's publish pass (same msg_ids and "
                 "payloads on both sides), and in both resend passes")
      ->capture_default_str()
      ->check(CLI::Range(std::size_t{1}, std::size_t{100'000'000}));
  app.add_option("--live-messages", flags.live_messages,
                 "Messages the producer threads commit, one per transaction, while the relay runs")
      ->capture_default_str()
      ->check(CLI::Range(std::size_t{1}, std::size_t{100'000'000}));
  app.add_option("--producers", flags.producers, "Producer threads in the live pass")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  app.add_option("--live-databases", flags.live_databases,
                 "Outbox databases the live pass writes to (producer p to database p mod N), "
                 "forwarded by one outbox-relay: --db for 1, --db-dir for more")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  app.add_option("--payload-bytes", flags.payload_bytes, "Payload size of every message")
      ->capture_default_str()
      ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 20));
  app.add_option("--keys", flags.keys, "Partition keys the messages are spread over")
      ->capture_default_str()
      ->check(CLI::Range(1, 1'000'000));
  app.add_option("--rate", flags.rate, "Offered rate of the latency passes, msg/s")
      ->capture_default_str()
      ->check(CLI::Range(1.0, 1'000'000.0));
  app.add_option("--latency-seconds", flags.latency_seconds, "Length of each latency pass")
      ->capture_default_str()
      ->check(CLI::Range(0.1, 3600.0));
  app.add_option("--sync", flags.sync,
                 "SQLite synchronous level of outbox-broker and of outbox-relay's bookkeeping "
                 "(producers always commit with WAL + synchronous=NORMAL)")
      ->capture_default_str()
      ->check(CLI::IsMember({"normal", "full"}));
  app.add_option("--rounds", flags.rounds,
                 "compare: rounds, each running both sides (alternating "
                 "which goes first); figures are medians")
      ->capture_default_str()
      ->check(CLI::Range(1, 100));
  app.add_option("--relay-batch-size", flags.relay_batch,
                 "Passed to outbox-relay --batch-size (default: the relay's own)");
  app.add_option("--relay-batch-bytes", flags.relay_batch_bytes,
                 "Passed to outbox-relay --batch-bytes, e.g. 4m (default: the relay's own)");
  app.add_option("--relay-in-flight", flags.relay_in_flight,
                 "Passed to outbox-relay --in-flight (default: the relay's own)");
  app.add_option("--js-max-pending", flags.js_max_pending,
                 "JetStream asynchronous publishes in flight (libnats PublishAsync.MaxPending)")
      ->capture_default_str()
      ->check(CLI::Range(std::size_t{1}, std::size_t{1'000'000}));
  app.add_flag("!--no-js-latency", flags.js_latency,
               "Skip JetStream's publish-to-PubAck latency pass");
  app.add_option("--broker-binary", flags.broker_binary,
                 "outbox-broker to start (default: next to outbox-bench)");
  app.add_option("--relay-binary", flags.relay_binary,
                 "outbox-relay to start (default: next to outbox-bench)");
  app.add_option("--nats-server", flags.nats_server, "nats-server to start (default: from PATH)")
      ->capture_default_str();
  app.add_option("--proxy-binary", flags.proxy_binary,
                 "cuts: tests/faults' fault_proxy, the TCP proxy that cuts connections")
      ->capture_default_str();
  app.add_option("--cut-every", flags.cut_every,
                 "cuts: each relay connection is cut after a random number of bytes in MIN-MAX "
                 "(K and M are binary multiples)")
      ->capture_default_str();
  app.add_option("--results-dir", flags.results_dir,
                 "Where the results file of this run goes; empty: no file")
      ->capture_default_str();
  app.add_option("--latency-dump", flags.latency_dump,
                 "Write the outbox latency samples as CSV (index, commit time, latency, broker "
                 "timestamp minus commit time) to this file");
  app.add_flag("--latency-one-at-a-time", flags.latency_one_at_a_time,
               "Outbox latency pass: commit the next message only once the consumer saw the "
               "previous one (at most --rate a second), so that every message crosses an idle "
               "pipeline alone and its CPU time and context switches are those of one message "
               "however loaded the machine is");
  app.add_option("--seed", flags.seed, "Seed of the payloads and keys")->capture_default_str();
  app.add_flag("--json", flags.json, "Print one JSON object instead of the table");
  app.add_flag("--quiet", flags.quiet, "No progress lines on stderr");
  app.footer(
      "Exit codes: 0 all checks passed (targets are reported, not enforced), 1 a message was "
      "missing, stored twice or a pass failed, 2 bad flags, 130 interrupted.");

  auto* e2e = app.add_subcommand(
      "e2e", "Outbox pipeline only: drain, live, commit-to-stored latency, resend pass");
  auto* jetstream = app.add_subcommand(
      "jetstream", "NATS JetStream only: async publish with Nats-Msg-Id, latency, resend pass");
  auto* compare = app.add_subcommand(
      "compare", "Both in one run, alternating; prints the table with the ratio");
  auto* cuts = app.add_subcommand(
      "cuts",
      "Outbox drain with the relay-broker connection cut at random (--cut-every) next to the "
      "same drain through the same proxy without cuts; --rounds rounds, median and spread");
  cuts->add_flag("--jetstream", flags.cuts_jetstream,
                 "Also publish the same messages into NATS JetStream through the same kind of "
                 "proxy, without and under cuts; after a cut a new NATS connection at once and "
                 "everything without a PubAck published again, in order");
  auto* metrics = app.add_subcommand(
      "metrics",
      "Outbox drain with outbox-relay serving metrics (--metrics-bind, scraped every second) "
      "next to the same drain without; --rounds rounds, median and spread of the ratio");
  auto* tenants = app.add_subcommand(
      "tenants",
      "One outbox-relay forwarding a directory of databases (run --db-dir): drain of --databases "
      "x --per-database messages next to one database of them all (--rounds rounds), a small "
      "tenant's commit-to-stored latency while a --backlog drains, and the relay's CPU, memory "
      "and descriptors with --idle-databases idle databases");
  tenants->add_option("--databases", flags.databases, "drain: the many databases")
      ->capture_default_str()
      ->check(CLI::Range(std::size_t{1}, std::size_t{100'000}));
  tenants->add_option("--per-database", flags.per_database, "drain: messages in each")
      ->capture_default_str()
      ->check(CLI::Range(std::size_t{1}, std::size_t{10'000'000}));
  tenants->add_option("--backlog", flags.backlog, "latency: messages in the large database")
      ->capture_default_str()
      ->check(CLI::Range(std::size_t{1}, std::size_t{100'000'000}));
  tenants
      ->add_option("--small-tenants", flags.small_tenants,
                   "latency: databases the producer commits to in turn")
      ->capture_default_str()
      ->check(CLI::Range(std::size_t{1}, std::size_t{10'000}));
  tenants
      ->add_option("--commit-every-ms", flags.commit_every_ms,
                   "latency: one small tenant's commit this often")
      ->capture_default_str()
      ->check(CLI::Range(1, 10'000));
  tenants
      ->add_option("--idle-databases", flags.idle_databases, "idle: databases of one message each")
      ->capture_default_str()
      ->check(CLI::Range(std::size_t{1}, std::size_t{100'000}));
  tenants
      ->add_option("--settle-seconds", flags.settle_seconds,
                   "idle: wait after the last message is stored (the relay's --idle-release "
                   "is 30 s) before measuring")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 3600.0));
  tenants->add_option("--idle-seconds", flags.idle_seconds, "idle: how long CPU time is measured")
      ->capture_default_str()
      ->check(CLI::Range(1.0, 3600.0));
  tenants
      ->add_option("--sink", flags.sink,
                   "drain: forward to outbox-broker, or to a JetStream stream on a nats-server "
                   "the benchmark starts (--nats-server); the other parts need the broker")
      ->capture_default_str()
      ->check(CLI::IsMember({"broker", "jetstream"}));
  tenants->add_option("--parts", flags.parts, "Which parts to run")
      ->capture_default_str()
      ->delimiter(',')
      ->check(CLI::IsMember({"drain", "latency", "idle"}));
  (void)metrics;
  (void)e2e;
  (void)jetstream;
  (void)compare;
  (void)cuts;

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    return app.exit(error) == 0 ? cli::exit_ok : cli::exit_usage;
  }
  std::string subcommand = app.get_subcommands().front()->get_name();

  cli::install_stop_handlers();
  int code = cli::exit_failure;
  try {
    code = run(subcommand, flags, joined_command_line(argc, argv));
  } catch (const bench::Interrupted&) {
    std::fprintf(stderr, "outbox-bench: interrupted; processes stopped, temporary files removed\n");
    code = exit_interrupted;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "outbox-bench: %s\n", error.what());
    code = cli::exit_failure;
  }
  bench::jetstream_shutdown();
  return code;
}
