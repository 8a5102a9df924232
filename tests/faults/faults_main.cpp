// outbox-faults: attacks a running pipeline and checks afterwards that
// nothing was lost, duplicated, reordered or invented.
//
// It starts, on loopback and in a temporary directory, several producer
// processes sharing one outbox database, two outbox-relay processes (active
// and standby), outbox-broker, a fault proxy between the relays and the
// broker, and a consumer that applies every message once through
// outbox::Inbox (behind a second proxy). While the producers commit, a
// seeded injector kills (SIGKILL), stops (SIGTERM) and pauses (SIGSTOP, then
// SIGCONT) the relays, the broker, the consumer and producers at random
// moments and starts them again, and the proxies drop, delay, duplicate and
// reorder messages and cut connections; in front of them TCP proxies cut the
// relays' and the consumer's connections every 2 KB-400 KB or make them go
// silent (tests/faults/README.md). Some messages are too large for the broker
// and become dead; as an operator would, the injector drops them, or strips
// them and replays them, with outbox-relay drop / replay while the relays run.
// A producer that writes plain SQL (docs/schema.md) commits, among legal rows,
// rows that can never be delivered; each must become dead with a reason that
// names its field while everything else flows. app.db lives on a tmpfs of its
// own that the injector fills to the last block now and then (SQLITE_FULL for
// producers and relays) and frees again.
// When enough faults were injected (--faults) or the time is up (--duration),
// faults stop, the producers finish, everything drains (the remaining dead
// messages dropped or replayed), and the checker compares the producers'
// database, the broker and the consumer's database; dropped messages are
// expected nowhere.
//
// With --databases N, the producers write to N tenant databases in one
// directory (UUID v7 ids, the default for databases forwarded together), two
// outbox-relay run --db-dir processes share them database by database (each
// takes over the other's databases when their leases lapse), and the checker
// holds every database to the same promises, order per (database, topic,
// key); the SQL producer and the full disk are left out, and the summary
// ends with takeovers=T, the leases taken by the other relay process.
//
// With --sink jetstream, nats-server -js takes the broker's place (no proxy):
// the relays publish to a stream covering outbox.>, the injector kills, stops
// and pauses nats-server as it does the broker, two examples/jetstream_consumer
// processes apply the stream through one durable consumer and one inbox
// database and are killed too (also at their own crash points, right before
// and right after a side effect), and the checker reads the stream back and
// compares producers, stream and side effects. With --inbox redis, two consumers share one
// Redis inbox (redis-server started here, killed and paused too) and kill
// themselves around their side effects; the checker allows exactly the
// repeats the Redis inbox's contract allows. The last line is the summary:
//
//   faults=N lost=0 duplicated=0 reordered=0 phantom=0 dead=D
//
// where D counts the messages dead at the end, every one listed before it with
// its reason, and every one a row written to be undeliverable.
//
// Exit code 0 when every check passed, 1 when one failed (the seed and the
// first offending msg_ids are printed to replay it), 2 for bad flags, 3 when
// the run itself could not be carried out, 4 when --sink jetstream or --inbox
// redis cannot run here (no nats-server, libnats, hiredis or redis-server).
//
// The parts: faults_common.hpp (settings and helpers), supervisor.hpp (the
// processes), proxy_control.cpp (the fault proxies), injector.cpp (the
// faults), dead_messages.cpp (the operator), readers.hpp (reading databases,
// the broker, the stream and Redis back), checker.cpp (the verdict), run.hpp
// (one run, tying them together).

#include <csignal>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>

#include "cli/args.hpp"
#include "faults_common.hpp"
#include "run.hpp"
#include "small_disk.hpp"
#include "test_support.hpp"

namespace faults {
namespace {

extern "C" void on_interrupt(int) {
  interrupted.store(true);
}

milliseconds parse_duration(const std::string& text) {
  auto parsed = cli::parse_duration(text);
  if (!parsed || parsed->count() == 0) {
    throw std::invalid_argument("'" + text + "' is not a duration with a unit (e.g. 90s, 10m)");
  }
  return *parsed;
}

int usage(const std::string& message) {
  std::fprintf(stderr, "outbox-faults: %s\n", message.c_str());
  std::fprintf(stderr,
               "usage: outbox-faults [--seed N] [--faults N | --duration 10m] [--producers 3]\n"
               "                     [--databases N]\n"
               "                     [--rate 100] [--keys 12] [--drain-timeout 180s]\n"
               "                     [--max-load-time 10m] [--proxy-rate 1.0] [--hostile-order]\n"
               "                     [--cut-every 2K-400K|off] [--freeze 0.05]\n"
               "                     [--oversize-rate 0.002] [--sql-rate 30] [--poison-rate 0.05]\n"
               "                     [--sink broker|jetstream] [--inbox sqlite|redis]\n"
               "                     [--consumer-max-ack-pending 1]\n"
               "                     [--self-kill-rate 0.0005] [--full-disk on|off]\n"
               "                     [--work-dir DIR] [--keep]\n");
  return 2;
}

}  // namespace
}  // namespace faults

int main(int argc, char** argv) {
  using namespace faults;
  Settings settings;
  settings.seed =
      std::random_device{}() | (static_cast<std::uint64_t>(std::random_device{}()) << 32);
  bool work_dir_given = false;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    try {
      auto value = [&]() -> std::string {
        if (i + 1 >= argc) throw std::invalid_argument(flag + " needs a value");
        return argv[++i];
      };
      if (flag == "--seed")
        settings.seed = std::stoull(value());
      else if (flag == "--faults")
        settings.faults = std::stol(value());
      else if (flag == "--duration")
        settings.duration = parse_duration(value());
      else if (flag == "--max-load-time")
        settings.max_load_time = parse_duration(value());
      else if (flag == "--producers")
        settings.producers = std::stoi(value());
      else if (flag == "--databases")
        settings.databases = std::stoi(value());
      else if (flag == "--rate")
        settings.rate = std::stod(value());
      else if (flag == "--keys")
        settings.keys = std::stoi(value());
      else if (flag == "--drain-timeout")
        settings.drain_timeout = parse_duration(value());
      else if (flag == "--proxy-rate")
        settings.proxy_rate = std::stod(value());
      else if (flag == "--oversize-rate")
        settings.oversize_rate = std::stod(value());
      else if (flag == "--sql-rate")
        settings.sql_rate = std::stod(value());
      else if (flag == "--poison-rate")
        settings.poison_rate = std::stod(value());
      else if (flag == "--hostile-order")
        settings.hostile_order = true;
      else if (flag == "--cut-every")
        settings.cut_every = value();
      else if (flag == "--freeze")
        settings.freeze = std::stod(value());
      else if (flag == "--sink")
        settings.sink = value();
      else if (flag == "--consumer-max-ack-pending")
        settings.consumer_max_ack_pending = std::stoi(value());
      else if (flag == "--full-disk") {
        auto choice = value();
        if (choice != "on" && choice != "off")
          throw std::invalid_argument("--full-disk is on or off");
        settings.full_disk = choice == "on";
      } else if (flag == "--inbox")
        settings.inbox = value();
      else if (flag == "--self-kill-rate")
        settings.self_kill_rate = std::stod(value());
      else if (flag == "--work-dir") {
        settings.work_dir = value();
        work_dir_given = true;
      } else if (flag == "--keep")
        settings.keep = true;
      else if (flag == "--help" || flag == "-h")
        return usage("fault-injection run of the whole pipeline");
      else
        return usage("unknown flag " + flag);
    } catch (const std::exception& error) {
      return usage(error.what());
    }
  }
  if (settings.producers < 1 || settings.keys < 1 || settings.rate <= 0 || settings.faults < 0) {
    return usage("--producers, --keys and --rate must be positive");
  }
  if (settings.sql_rate < 0 || settings.poison_rate < 0 || settings.poison_rate > 1) {
    return usage("--sql-rate must be 0 or more, --poison-rate between 0 and 1");
  }
  if (settings.consumer_max_ack_pending < 1 || settings.consumer_max_ack_pending > 10000) {
    return usage("--consumer-max-ack-pending is 1 to 10000");
  }
  if (settings.databases < 0 || settings.databases > 100000) {
    return usage("--databases is 0 (one database) to 100000");
  }
  if (settings.databases > 0 && (settings.sink != "broker" || settings.inbox != "sqlite")) {
    return usage("--databases runs with --sink broker and --inbox sqlite only");
  }
  if (settings.sink != "broker" && settings.sink != "jetstream") {
    return usage("--sink is broker or jetstream");
  }
  if (settings.inbox != "sqlite" && settings.inbox != "redis") {
    return usage("--inbox is sqlite or redis");
  }
  if (settings.inbox == "redis") {
#ifndef OUTBOX_FAULTS_REDIS_SERVER
    std::fprintf(stderr,
                 "outbox-faults: built without the Redis inbox or redis-server; --inbox redis is "
                 "not available\n");
    return 4;
#endif
    if (settings.sink != "broker") return usage("--inbox redis needs the broker sink's consumers");
  }
  if (settings.sink == "jetstream") {
#ifdef OUTBOX_RELAY_WITH_JETSTREAM
    settings.nats_server_binary = find_nats_server();
    if (settings.nats_server_binary.empty()) {
      std::fprintf(stderr, "outbox-faults: --sink jetstream needs nats-server (not found)\n");
      return 4;
    }
    if (settings.hostile_order) return usage("--hostile-order needs the broker sink's proxy");
#else
    std::fprintf(stderr,
                 "outbox-faults: built without libnats; --sink jetstream is not available\n");
    return 4;
#endif
  }
  std::signal(SIGINT, on_interrupt);
  std::signal(SIGTERM, on_interrupt);

  std::unique_ptr<test_support::TempDir> temporary;
  if (!work_dir_given) {
    temporary = std::make_unique<test_support::TempDir>("outbox-faults");
    settings.work_dir = temporary->path();
  }
  std::fprintf(stderr, "outbox-faults: seed %llu, work dir %s\n",
               static_cast<unsigned long long>(settings.seed), settings.work_dir.c_str());
  // Declared after the work dir, so unmounted before it is removed.
  std::unique_ptr<SmallDisk> disk;
  if (settings.full_disk && settings.sink == "broker" && settings.databases == 0) {
    disk = std::make_unique<SmallDisk>(settings.work_dir / "disk", settings.disk_bytes);
    if (disk->mounted()) {
      std::fprintf(stderr,
                   "outbox-faults: app.db on a tmpfs of its own (%s) for full-disk faults\n",
                   disk->dir().c_str());
    } else {
      std::printf("full disk: not injected (%s; needs root or CAP_SYS_ADMIN)\n",
                  disk->why_not().c_str());
      disk.reset();
    }
  }
  int result = 3;
  std::string failed;  // what failed, for the last line on stderr
  {
    try {
      Run run(settings, disk.get());
      result = run.execute();
      for (const auto& failure : run.failures()) failed += (failed.empty() ? "" : " | ") + failure;
    } catch (const std::exception& error) {
      // On both streams: stdout is where the checks look for the verdict.
      std::fprintf(stderr, "outbox-faults: %s (seed %llu)\n", error.what(),
                   static_cast<unsigned long long>(settings.seed));
      std::printf("FAILED harness: %s (seed %llu)\n", error.what(),
                  static_cast<unsigned long long>(settings.seed));
      std::fflush(stdout);
      result = 3;
      failed = std::string("harness: ") + error.what();
    }
  }
  if (disk && (result != 0 || settings.keep)) {
    disk->free_space();
    disk->keep_contents();
  }
  if (temporary && (result != 0 || settings.keep)) {
    // Keep the evidence: copy the logs and databases next to the temp dir.
    auto kept = fs::temp_directory_path() / ("outbox-faults-seed-" + std::to_string(settings.seed));
    std::error_code ignored;
    fs::remove_all(kept, ignored);
    fs::copy(settings.work_dir, kept, fs::copy_options::recursive, ignored);
    std::fprintf(stderr, "outbox-faults: logs and databases kept in %s\n", kept.c_str());
  }
  // Last, so that whoever shows only the last line of stderr shows why.
  if (result != 0) {
    std::fprintf(stderr, "outbox-faults: FAILED (seed %llu): %s\n",
                 static_cast<unsigned long long>(settings.seed),
                 failed.empty() ? "see the FAILED lines on stdout" : failed.c_str());
  }
  return result;
}
