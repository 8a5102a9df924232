// outbox-power-loss: simulated power loss under the broker's store and the
// producer library, checked by reopening the databases with the real code.
//
// A run records a workload through the recording VFS (recording_vfs.hpp):
// the broker's Store appending batches (--subject broker, --sync full or
// normal), or a producer committing business rows with their messages through
// outbox::Transaction (--subject producer, --sync normal is the library's
// default, full is Durability::full). Then, for crash points chosen by the
// seed, it rebuilds what the directory would hold after a power loss at that
// moment (crash_image.hpp: unsynced writes discarded; with --cut torn the
// last one torn at sector granularity; with --cut reordered every unsynced
// sector at any of its versions since the last sync), opens it with the real
// code and checks:
//   - the database opens (the store runs its quick_check) and passes PRAGMA
//     integrity_check;
//   - every acknowledged batch / committed transaction is there with all its
//     messages, intact (with --sync full: always; with normal: all but the
//     last ones, never one acknowledged before the last sync of the WAL, and
//     the lost ones are the latest: no hole);
//   - nothing is there by halves: a batch or transaction is all there or not
//     at all, a producer's business row is there iff its messages are;
//   - broker: offsets run 1, 2, 3, ... per topic, the dedup index holds one
//     entry per stored message and answers DUPLICATE with its offset for each
//     of them, and a resend of each message not there is STORED (so no msg_id
//     is remembered without its message, and none is stored without being
//     remembered);
//   - producer: the outbox's seq follows commit order.
// The last line is the summary, e.g.
//
//   crash_points=1000 acked_lost=0 inconsistent=0 ... seed=1
//
// Runs and crash points follow from --seed: --run R --crash-point K replays
// one of them. The broker's WAL flusher (an fdatasync from a thread of its
// own, outside SQLite) is not seen by the VFS: a crash image is the state
// where it had not run since the last sync SQLite made, one that a power loss
// can leave.
//
// Exit code 0 when every check passed, 1 when one failed (each failure names
// its run and crash point and the flags that replay it), 2 for bad flags, 3
// when a workload itself could not be carried out.
#include <sqlite3.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "cli/args.hpp"
#include "cli/process.hpp"
#include "crash_image.hpp"
#include "power_workloads.hpp"
#include "test_support.hpp"

namespace {

struct Settings {
  power::Workload workload;
  std::string cut = "discard";
  std::uint64_t crash_points = 1000;
  std::uint64_t points_per_run = 100;
  std::uint64_t seed = 1;
  bool expect_durable = false;
  std::optional<std::uint64_t> only_run;
  std::optional<std::uint64_t> only_crash_point;
};

int run_all(const Settings& settings) {
  power::install_recording_vfs();
  power::Cut cut = settings.cut == "torn"        ? power::Cut::torn
                   : settings.cut == "reordered" ? power::Cut::reordered
                                                 : power::Cut::discard;
  bool broker = settings.workload.subject == "broker";
  bool durable_required = settings.workload.sync == "full" || settings.expect_durable;
  std::string replay =
      "outbox-power-loss --subject " + settings.workload.subject + " --sync " +
      settings.workload.sync + " --cut " + settings.cut + " --commits " +
      std::to_string(settings.workload.commits) + " --seed " + std::to_string(settings.seed) +
      (settings.workload.checkpoint_pages
           ? " --checkpoint-pages " + std::to_string(*settings.workload.checkpoint_pages)
           : "") +
      (settings.expect_durable ? " --expect-durable" : "");

  std::uint64_t points_done = 0, inconsistent = 0, lost_total = 0, runs = 0;
  std::uint64_t worst_commits_lost = 0, worst_messages_lost = 0, worst_acked = 0;
  std::uint64_t partial_points = 0;
  std::size_t failures_printed = 0;
  for (std::uint64_t number = settings.only_run.value_or(0); points_done < settings.crash_points;
       ++number) {
    power::Run run;
    {
      test_support::TempDir work("outbox-power");
      run = power::record_run(settings.workload, settings.seed, number, work.path());
    }
    ++runs;
    std::vector<std::size_t> points =
        settings.only_crash_point
            ? std::vector<std::size_t>{static_cast<std::size_t>(*settings.only_crash_point)}
            : power::choose_points(
                  run, std::min(settings.points_per_run, settings.crash_points - points_done));
    for (auto point : points) {
      if (point > run.recording.log.size())
        throw std::invalid_argument("--crash-point " + std::to_string(point) +
                                    " is past the run's log of " +
                                    std::to_string(run.recording.log.size()) + " operations");
      test_support::TempDir after("outbox-power-after");
      auto image = power::crash_image(run.recording, point, cut, run.seed);
      if (!image.note.empty()) ++partial_points;
      power::write_image(image, after.path());
      auto found = power::inspect(settings.workload, run, after.path());
      auto verdict = power::judge(run, point, found, durable_required);
      ++points_done;
      lost_total += broker ? verdict.messages_lost : verdict.commits_lost;
      if (verdict.commits_lost > worst_commits_lost) {
        worst_commits_lost = verdict.commits_lost;
        worst_messages_lost = verdict.messages_lost;
        worst_acked = verdict.acked;
      }
      if (!verdict.problems.empty()) ++inconsistent;
      if (settings.only_crash_point || (!verdict.problems.empty() && failures_printed < 10)) {
        ++failures_printed;
        std::printf("run=%llu crash_point=%zu of %zu acked=%llu lost=%llu%s%s\n",
                    static_cast<unsigned long long>(number), point, run.recording.log.size(),
                    static_cast<unsigned long long>(verdict.acked),
                    static_cast<unsigned long long>(verdict.commits_lost),
                    image.note.empty() ? "" : " cut: ", image.note.c_str());
        for (const auto& problem : verdict.problems) std::printf("  %s\n", problem.c_str());
        if (!verdict.problems.empty())
          std::printf("  replay: %s --run %llu --crash-point %zu\n", replay.c_str(),
                      static_cast<unsigned long long>(number), point);
      }
    }
    if (settings.only_crash_point) break;
  }
  std::printf(
      "crash_points=%llu %s=%llu inconsistent=%llu worst_commits_lost=%llu "
      "(%llu messages, of %llu acknowledged) runs=%llu partial=%llu seed=%llu\n",
      static_cast<unsigned long long>(points_done), broker ? "acked_lost" : "committed_lost",
      static_cast<unsigned long long>(lost_total), static_cast<unsigned long long>(inconsistent),
      static_cast<unsigned long long>(worst_commits_lost),
      static_cast<unsigned long long>(worst_messages_lost),
      static_cast<unsigned long long>(worst_acked), static_cast<unsigned long long>(runs),
      static_cast<unsigned long long>(partial_points),
      static_cast<unsigned long long>(settings.seed));
  return inconsistent == 0 ? cli::exit_ok : cli::exit_failure;
}

}  // namespace

int main(int argc, char** argv) {
  Settings settings;
  CLI::App app(
      "Simulated power loss under the broker's store or the producer library: records a "
      "workload, rebuilds the files a power loss at each chosen moment would leave, "
      "reopens them with the real code and checks them. The last line is the summary.");
  app.add_option("--subject", settings.workload.subject,
                 "broker (broker::Store) or producer (outbox::Outbox)")
      ->check(CLI::IsMember({"broker", "producer"}));
  app.add_option("--sync", settings.workload.sync,
                 "full or normal (broker: --sync; producer: Durability, normal is its default)")
      ->check(CLI::IsMember({"full", "normal"}));
  app.add_option("--cut", settings.cut,
                 "discard: unsynced writes are lost; torn: the last unsynced write survives in "
                 "part (512-byte sectors); reordered: each sector written since the last sync "
                 "holds any of its versions since then")
      ->check(CLI::IsMember({"discard", "torn", "reordered"}));
  app.add_option("--crash-points", settings.crash_points, "crash points to check in all")
      ->check(cli::count_check(1));
  app.add_option("--points-per-run", settings.points_per_run,
                 "crash points drawn from each recorded run")
      ->check(cli::count_check(1));
  app.add_option("--commits", settings.workload.commits, "batches or transactions per run")
      ->check(cli::count_check(1, 100000));
  app.add_option("--checkpoint-pages", settings.workload.checkpoint_pages,
                 "producer: checkpoint when the WAL holds this many pages (default: the "
                 "library's)")
      ->check(CLI::Range(1, 1000000));
  app.add_option("--seed", settings.seed, "chooses workloads, crash points and torn sectors");
  app.add_option("--run", settings.only_run, "start at this run (with --crash-point: only it)");
  app.add_option("--crash-point", settings.only_crash_point,
                 "check only this log position of the run given by --run")
      ->needs("--run");
  app.add_flag("--expect-durable", settings.expect_durable,
               "count a lost acknowledged commit as a failure even with --sync normal (shows "
               "that the checks see losses)");
  std::vector<std::string> args(argv + 1, argv + argc);
  if (auto code = cli::parse_command_line(app, "outbox-power-loss", args)) return *code;
  try {
    return run_all(settings);
  } catch (const std::invalid_argument& error) {
    std::fprintf(stderr, "outbox-power-loss: %s\n", error.what());
    return cli::exit_usage;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "outbox-power-loss: the run could not be carried out: %s\n", error.what());
    return cli::exit_storage;
  }
}
