// outbox-power-loss: simulated power loss under the broker's store and the
// producer library, checked by reopening the databases with the real code.
//
// A run records a workload through the recording VFS (recording_vfs.hpp):
// the broker's Store appending batches (--subject broker, --sync full or
// normal), or a producer committing business rows with their messages through
// outbox::Transaction (--subject producer, --sync normal is the library's
// default, full is Durability::full). Then, for crash points chosen by the
// seed, it rebuilds what the directory would hold after a power loss at that
// moment (crash_image.hpp: unsynced writes discarded, or with --cut torn the
// last one torn at sector granularity), opens it with the real code and
// checks:
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
//     of them (so no msg_id is remembered without its message, and none is
//     stored without being remembered);
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

#include "broker/store.hpp"
#include "cli/args.hpp"
#include "cli/process.hpp"
#include "crash_image.hpp"
#include "outbox/outbox.hpp"
#include "recording_vfs.hpp"
#include "test_support.hpp"

namespace {

namespace fs = std::filesystem;

struct Settings {
  std::string subject = "broker";
  std::string sync = "full";
  std::string cut = "discard";
  std::uint64_t crash_points = 1000;
  std::uint64_t points_per_run = 100;
  std::uint64_t commits = 24;
  std::uint64_t seed = 1;
  std::optional<std::uint64_t> only_run;
  std::optional<std::uint64_t> only_crash_point;
};

std::uint64_t mix(std::uint64_t value) {
  value += 0x9e3779b97f4a7c15ULL;
  value = (value ^ (value >> 30)) * 0xbf58476d1ce4e5b9ULL;
  value = (value ^ (value >> 27)) * 0x94d049bb133111ebULL;
  return value ^ (value >> 31);
}

// Payload and key follow from the msg_id, so a checker knows what each stored
// message must hold. Sizes run from a few bytes to past a 16 KiB page.
std::string payload_for(const std::string& msg_id) {
  std::uint64_t h = mix(std::hash<std::string>{}(msg_id));
  std::size_t size = (h % 20 == 0) ? 17000 + h % 20000 : 1 + h % 3000;
  std::string payload;
  payload.reserve(size);
  while (payload.size() < size) payload += msg_id + ";";
  payload.resize(size);
  return payload;
}

std::string key_for(const std::string& msg_id) {
  return "key-" + std::to_string(std::hash<std::string>{}(msg_id) % 5);
}

// One acknowledged batch (broker) or committed transaction (producer): the
// event the program recorded right after it returned, and the msg_ids it
// made new.
struct Commit {
  std::vector<std::string> msg_ids;
};

struct Run {
  std::uint64_t number = 0;
  std::uint64_t seed = 0;
  power::Recording recording;
  std::vector<Commit> commits;  // event i is commits[i]
};

// What the crash image holds, as seen through the real code.
struct Found {
  std::map<std::string, std::uint64_t> rank;  // msg_id -> position in commit order found
  std::set<std::uint64_t> business_rows;      // producer: order ids present
  std::vector<std::string> problems;
};

struct Verdict {
  std::uint64_t acked = 0;          // commits acknowledged before the crash point
  std::uint64_t commits_lost = 0;   // of those, missing after the crash
  std::uint64_t messages_lost = 0;  // their msg_ids
  std::vector<std::string> problems;
};

// ---- the broker's store --------------------------------------------------------

const std::vector<std::string> broker_topics = {"orders", "payments", "audit"};

std::string topic_for(const std::string& msg_id) {
  return broker_topics[mix(std::hash<std::string>{}(msg_id) + 1) % broker_topics.size()];
}

broker::StoreOptions store_options(const Settings& settings) {
  broker::StoreOptions options;
  options.sync = *broker::parse_sync_mode(settings.sync);
  options.cache_bytes = std::size_t{8} << 20;
  // A fixed clock: the same seed writes the same bytes.
  options.clock = [] { return std::chrono::system_clock::time_point(std::chrono::hours(500000)); };
  return options;
}

struct Owned {
  std::string msg_id, topic, key, payload;
  broker::IncomingMessage view() const { return {msg_id, topic, key, {}, payload}; }
};

Owned owned_message(const std::string& msg_id) {
  return {msg_id, topic_for(msg_id), key_for(msg_id), payload_for(msg_id)};
}

Run record_broker_run(const Settings& settings, std::uint64_t number, const fs::path& directory) {
  Run run{number, mix(settings.seed ^ mix(number)), {}, {}};
  std::mt19937_64 random(run.seed);
  auto path = directory / "broker.db";
  power::seed_randomness(run.seed);
  { broker::Store created(path, store_options(settings)); }
  power::start_recording(directory);
  std::vector<std::string> sent;
  {
    broker::Store store(path, store_options(settings));
    for (std::uint64_t i = 0; i < settings.commits; ++i) {
      std::vector<Owned> batch;
      Commit commit;
      std::size_t size = 1 + random() % 16;
      for (std::size_t m = 0; m < size; ++m) {
        if (!sent.empty() && random() % 8 == 0) {
          batch.push_back(owned_message(sent[random() % sent.size()]));  // a resend
        } else {
          auto msg_id =
              "r" + std::to_string(number) + "-c" + std::to_string(i) + "-m" + std::to_string(m);
          batch.push_back(owned_message(msg_id));
          commit.msg_ids.push_back(msg_id);
        }
      }
      std::vector<broker::IncomingMessage> views;
      for (const auto& message : batch) views.push_back(message.view());
      auto outcomes = store.append(views);
      for (std::size_t m = 0; m < batch.size(); ++m) {
        bool is_new = std::find(commit.msg_ids.begin(), commit.msg_ids.end(), batch[m].msg_id) !=
                      commit.msg_ids.end();
        auto expected = is_new ? broker::AppendStatus::stored : broker::AppendStatus::duplicate;
        if (outcomes[m].status != expected)
          throw std::runtime_error("workload: " + batch[m].msg_id + " came back " +
                                   std::string(broker::to_string(outcomes[m].status)));
      }
      power::record_event(i);
      sent.insert(sent.end(), commit.msg_ids.begin(), commit.msg_ids.end());
      run.commits.push_back(std::move(commit));
    }
  }
  run.recording = power::stop_recording();
  return run;
}

std::string integrity_problem(sqlite3* db) {
  sqlite3_stmt* statement = nullptr;
  if (sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &statement, nullptr) != SQLITE_OK)
    return std::string("integrity_check cannot run: ") + sqlite3_errmsg(db);
  std::string result;
  while (sqlite3_step(statement) == SQLITE_ROW) {
    auto* text = reinterpret_cast<const char*>(sqlite3_column_text(statement, 0));
    result += result.empty() ? "" : "; ";
    result += text != nullptr ? text : "";
  }
  sqlite3_finalize(statement);
  return result == "ok" ? std::string() : "integrity_check: " + result;
}

std::string integrity_problem(const fs::path& path) {
  sqlite3* db = nullptr;
  int code = sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr);
  std::string problem =
      code == SQLITE_OK ? integrity_problem(db)
                        : "cannot open for integrity_check: " + std::string(sqlite3_errstr(code));
  sqlite3_close_v2(db);
  return problem;
}

Found inspect_broker(const Settings& settings, const Run& run, const fs::path& directory) {
  Found found;
  auto path = directory / "broker.db";
  std::map<std::string, std::uint64_t> rank_of;
  for (std::uint64_t c = 0; c < run.commits.size(); ++c)
    for (const auto& msg_id : run.commits[c].msg_ids) rank_of[msg_id] = c;
  try {
    broker::Store store(path, store_options(settings));
    std::vector<Owned> present;
    std::vector<std::uint64_t> offsets;
    for (const auto& topic : broker_topics) {
      std::uint64_t next = 1;
      while (true) {
        auto page = store.fetch(topic, next, 1000, std::size_t{64} << 20);
        for (const auto& message : page.messages) {
          if (message.offset != next)
            found.problems.push_back(topic + " offset " + std::to_string(message.offset) +
                                     " follows " + std::to_string(next - 1));
          next = message.offset + 1;
          auto expected = owned_message(message.msg_id);
          if (expected.topic != topic || message.payload != expected.payload ||
              message.partition_key != expected.key || !message.headers.empty())
            found.problems.push_back(message.msg_id + " at " + topic + " offset " +
                                     std::to_string(message.offset) + " is not what was sent");
          auto known = rank_of.find(message.msg_id);
          if (known == rank_of.end()) {
            found.problems.push_back(message.msg_id + " was never sent");
          } else if (!found.rank.emplace(message.msg_id, known->second).second) {
            found.problems.push_back(message.msg_id + " is stored twice");
          }
          present.push_back(expected);
          offsets.push_back(message.offset);
        }
        if (page.messages.empty()) break;
      }
      if (next - 1 != store.last_offset(topic))
        found.problems.push_back(topic + " ends at offset " + std::to_string(next - 1) +
                                 " but its last offset is " +
                                 std::to_string(store.last_offset(topic)));
    }
    auto stats = store.stats();
    if (stats.dedup_entries != present.size())
      found.problems.push_back(std::to_string(stats.dedup_entries) + " dedup entries for " +
                               std::to_string(present.size()) + " messages");
    // Every message is remembered, at its own offset.
    std::vector<broker::IncomingMessage> views;
    for (const auto& message : present) views.push_back(message.view());
    auto outcomes = store.append(views);
    for (std::size_t i = 0; i < present.size(); ++i) {
      if (outcomes[i].status != broker::AppendStatus::duplicate || outcomes[i].offset != offsets[i])
        found.problems.push_back("resending " + present[i].msg_id + " gives " +
                                 std::string(broker::to_string(outcomes[i].status)) +
                                 " at offset " + std::to_string(outcomes[i].offset) +
                                 ", stored at " + std::to_string(offsets[i]));
    }
  } catch (const std::exception& error) {
    found.problems.push_back(std::string("the store does not open or read: ") + error.what());
    return found;
  }
  if (auto problem = integrity_problem(path); !problem.empty()) found.problems.push_back(problem);
  return found;
}

// ---- the producer library ------------------------------------------------------

outbox::Options producer_options(const Settings& settings) {
  outbox::Options options;
  options.durability =
      settings.sync == "full" ? outbox::Durability::full : outbox::Durability::normal;
  // A configured worker id and a fixed clock: the same seed writes the same bytes.
  options.worker_id = 7;
  options.clock = [] { return outbox::TimePoint(std::chrono::hours(500000)); };
  return options;
}

void execute(sqlite3* db, const std::string& sql) {
  char* error = nullptr;
  if (sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &error) != SQLITE_OK) {
    std::string message = error != nullptr ? error : "unknown error";
    sqlite3_free(error);
    throw std::runtime_error(sql + ": " + message);
  }
}

Run record_producer_run(const Settings& settings, std::uint64_t number, const fs::path& directory) {
  Run run{number, mix(settings.seed ^ mix(number)), {}, {}};
  std::mt19937_64 random(run.seed);
  auto path = directory / "app.db";
  power::seed_randomness(run.seed);
  {
    auto box = outbox::Outbox::open(path, producer_options(settings));
    execute(box.db(),
            "CREATE TABLE orders(id INTEGER PRIMARY KEY, customer TEXT NOT NULL, note TEXT)");
  }
  power::start_recording(directory);
  {
    auto box = outbox::Outbox::open(path, producer_options(settings));
    for (std::uint64_t i = 0; i < settings.commits; ++i) {
      Commit commit;
      outbox::Transaction tx(box);
      execute(tx.db(), "INSERT INTO orders(id, customer, note) VALUES (" + std::to_string(i + 1) +
                           ", 'customer-" + std::to_string(random() % 5) + "', '" +
                           std::string(random() % 200, 'n') + "')");
      std::size_t messages = 1 + random() % 3;
      for (std::size_t m = 0; m < messages; ++m) {
        auto msg_id = "order-" + std::to_string(i + 1) + "-" + std::to_string(m);
        auto result = tx.enqueue({.topic = "orders",
                                  .key = key_for(msg_id),
                                  .payload = payload_for(msg_id),
                                  .headers = {},
                                  .msg_id = msg_id});
        if (!result.inserted()) throw std::runtime_error("workload: " + msg_id + " not inserted");
        commit.msg_ids.push_back(msg_id);
      }
      tx.commit();
      power::record_event(i);
      run.commits.push_back(std::move(commit));
    }
  }
  run.recording = power::stop_recording();
  return run;
}

Found inspect_producer(const Settings& settings, const Run& run, const fs::path& directory) {
  Found found;
  std::map<std::string, std::uint64_t> rank_of;
  for (std::uint64_t c = 0; c < run.commits.size(); ++c)
    for (const auto& msg_id : run.commits[c].msg_ids) rank_of[msg_id] = c;
  try {
    auto box = outbox::Outbox::open(directory / "app.db", producer_options(settings));
    sqlite3_stmt* statement = nullptr;
    sqlite3_prepare_v2(box.db(), "SELECT id FROM orders ORDER BY id", -1, &statement, nullptr);
    while (sqlite3_step(statement) == SQLITE_ROW)
      found.business_rows.insert(static_cast<std::uint64_t>(sqlite3_column_int64(statement, 0)));
    sqlite3_finalize(statement);
    sqlite3_prepare_v2(box.db(),
                       "SELECT msg_id, topic, partition_key, payload FROM outbox_messages "
                       "ORDER BY seq",
                       -1, &statement, nullptr);
    std::uint64_t previous_rank = 0;
    while (sqlite3_step(statement) == SQLITE_ROW) {
      auto text = [&](int column) {
        const auto* data = static_cast<const char*>(sqlite3_column_blob(statement, column));
        return std::string(data != nullptr ? data : "",
                           static_cast<std::size_t>(sqlite3_column_bytes(statement, column)));
      };
      auto msg_id = text(0);
      if (text(1) != "orders" || text(2) != key_for(msg_id) || text(3) != payload_for(msg_id))
        found.problems.push_back(msg_id + " is not what was enqueued");
      auto known = rank_of.find(msg_id);
      if (known == rank_of.end()) {
        found.problems.push_back(msg_id + " was never enqueued");
        continue;
      }
      if (known->second < previous_rank)
        found.problems.push_back(msg_id + " has a seq before a message of an earlier commit");
      previous_rank = known->second;
      found.rank.emplace(msg_id, known->second);
    }
    sqlite3_finalize(statement);
    if (auto problem = integrity_problem(box.db()); !problem.empty())
      found.problems.push_back(problem);
  } catch (const std::exception& error) {
    found.problems.push_back(std::string("the outbox does not open or read: ") + error.what());
  }
  // A business row is there iff its transaction's messages are.
  for (std::uint64_t c = 0; c < run.commits.size(); ++c) {
    bool row = found.business_rows.count(c + 1) != 0;
    bool message = found.rank.count(run.commits[c].msg_ids.front()) != 0;
    if (row != message)
      found.problems.push_back("order " + std::to_string(c + 1) +
                               (row ? " is there without" : " is missing but has") +
                               " its messages");
  }
  return found;
}

// ---- judging one crash point ---------------------------------------------------

Verdict judge(const Settings& settings, const Run& run, std::size_t crash_point,
              const Found& found) {
  Verdict verdict;
  verdict.problems = found.problems;
  const auto& log = run.recording.log;
  std::size_t last_wal_sync = 0;  // log position after the last sync of a WAL
  for (std::size_t i = 0; i < crash_point; ++i) {
    if (log[i].kind == power::Operation::Kind::event) ++verdict.acked;
    if (log[i].kind == power::Operation::Kind::sync && log[i].name.ends_with("-wal"))
      last_wal_sync = i + 1;
  }
  std::uint64_t durable_by_sync = 0;  // commits acknowledged before that sync
  for (std::size_t i = 0; i < last_wal_sync; ++i)
    if (log[i].kind == power::Operation::Kind::event) ++durable_by_sync;

  std::optional<std::uint64_t> first_lost;
  for (std::uint64_t c = 0; c < run.commits.size(); ++c) {
    const auto& ids = run.commits[c].msg_ids;
    auto present = static_cast<std::size_t>(std::count_if(
        ids.begin(), ids.end(), [&](const auto& id) { return found.rank.count(id); }));
    auto name = "commit " + std::to_string(c);
    if (present != 0 && present != ids.size())
      verdict.problems.push_back(name + " is there by halves (" + std::to_string(present) + " of " +
                                 std::to_string(ids.size()) + " messages)");
    // The commit under way at the crash may or may not have made it; later
    // ones cannot have started.
    if (c > verdict.acked && present != 0)
      verdict.problems.push_back(name + " is there but had not started at the crash");
    if (c >= verdict.acked || ids.empty()) continue;
    if (present == 0) {
      if (!first_lost) first_lost = c;
      ++verdict.commits_lost;
      verdict.messages_lost += ids.size();
      if (c < durable_by_sync)
        verdict.problems.push_back(name + " is lost though acknowledged before the WAL was synced");
    } else if (first_lost) {
      verdict.problems.push_back("commit " + std::to_string(*first_lost) +
                                 " is lost but the later " + name + " is there");
    }
  }
  if (settings.sync == "full" && verdict.commits_lost != 0)
    verdict.problems.push_back(std::to_string(verdict.commits_lost) +
                               " acknowledged commits lost with synchronous=FULL");
  return verdict;
}

std::vector<std::size_t> choose_points(const Run& run, std::uint64_t count) {
  auto candidates = power::crash_points(run.recording);
  if (candidates.size() <= count) return candidates;
  std::mt19937_64 random(mix(run.seed));
  std::vector<std::size_t> chosen(candidates.begin(), candidates.end() - 1);
  std::shuffle(chosen.begin(), chosen.end(), random);
  chosen.resize(static_cast<std::size_t>(count) - 1);
  chosen.push_back(candidates.back());  // after everything: the most there is to lose
  std::sort(chosen.begin(), chosen.end());
  return chosen;
}

int run_all(const Settings& settings) {
  power::install_recording_vfs();
  power::Cut cut = settings.cut == "torn" ? power::Cut::torn : power::Cut::discard;
  bool broker = settings.subject == "broker";
  std::string replay = "outbox-power-loss --subject " + settings.subject + " --sync " +
                       settings.sync + " --cut " + settings.cut + " --commits " +
                       std::to_string(settings.commits) + " --seed " +
                       std::to_string(settings.seed);

  std::uint64_t points_done = 0, inconsistent = 0, lost_total = 0, runs = 0;
  std::uint64_t worst_commits_lost = 0, worst_messages_lost = 0, worst_acked = 0;
  std::uint64_t torn_points = 0;
  std::size_t failures_printed = 0;
  for (std::uint64_t number = settings.only_run.value_or(0); points_done < settings.crash_points;
       ++number) {
    Run run;
    {
      test_support::TempDir work("outbox-power");
      run = broker ? record_broker_run(settings, number, work.path())
                   : record_producer_run(settings, number, work.path());
    }
    ++runs;
    std::vector<std::size_t> points =
        settings.only_crash_point
            ? std::vector<std::size_t>{static_cast<std::size_t>(*settings.only_crash_point)}
            : choose_points(run,
                            std::min(settings.points_per_run, settings.crash_points - points_done));
    for (auto point : points) {
      if (point > run.recording.log.size())
        throw std::invalid_argument("--crash-point " + std::to_string(point) +
                                    " is past the run's log of " +
                                    std::to_string(run.recording.log.size()) + " operations");
      test_support::TempDir after("outbox-power-after");
      auto image = power::crash_image(run.recording, point, cut, run.seed);
      if (!image.torn_write.empty()) ++torn_points;
      power::write_image(image, after.path());
      auto found = broker ? inspect_broker(settings, run, after.path())
                          : inspect_producer(settings, run, after.path());
      auto verdict = judge(settings, run, point, found);
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
                    image.torn_write.empty() ? "" : " torn: ", image.torn_write.c_str());
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
      "(%llu messages, of %llu acknowledged) runs=%llu torn=%llu seed=%llu\n",
      static_cast<unsigned long long>(points_done), broker ? "acked_lost" : "committed_lost",
      static_cast<unsigned long long>(lost_total), static_cast<unsigned long long>(inconsistent),
      static_cast<unsigned long long>(worst_commits_lost),
      static_cast<unsigned long long>(worst_messages_lost),
      static_cast<unsigned long long>(worst_acked), static_cast<unsigned long long>(runs),
      static_cast<unsigned long long>(torn_points), static_cast<unsigned long long>(settings.seed));
  bool lost_forbidden = settings.sync == "full";
  return inconsistent == 0 && (!lost_forbidden || lost_total == 0) ? cli::exit_ok
                                                                   : cli::exit_failure;
}

}  // namespace

int main(int argc, char** argv) {
  Settings settings;
  CLI::App app(
      "Simulated power loss under the broker's store or the producer library: records a "
      "workload, rebuilds the files a power loss at each chosen moment would leave, "
      "reopens them with the real code and checks them. The last line is the summary.");
  app.add_option("--subject", settings.subject,
                 "broker (broker::Store) or producer (outbox::Outbox)")
      ->check(CLI::IsMember({"broker", "producer"}));
  app.add_option("--sync", settings.sync,
                 "full or normal (broker: --sync; producer: Durability, normal is its default)")
      ->check(CLI::IsMember({"full", "normal"}));
  app.add_option("--cut", settings.cut,
                 "discard: unsynced writes are lost; torn: the last unsynced write survives in "
                 "part (512-byte sectors)")
      ->check(CLI::IsMember({"discard", "torn"}));
  app.add_option("--crash-points", settings.crash_points, "crash points to check in all")
      ->check(cli::count_check(1));
  app.add_option("--points-per-run", settings.points_per_run,
                 "crash points drawn from each recorded run")
      ->check(cli::count_check(1));
  app.add_option("--commits", settings.commits, "batches or transactions per run")
      ->check(cli::count_check(1, 100000));
  app.add_option("--seed", settings.seed, "chooses workloads, crash points and torn sectors");
  app.add_option("--run", settings.only_run, "start at this run (with --crash-point: only it)");
  app.add_option("--crash-point", settings.only_crash_point,
                 "check only this log position of the run given by --run")
      ->needs("--run");
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
