#include "power_workloads.hpp"

#include <sqlite3.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <stdexcept>

#include "broker/store.hpp"
#include "crash_image.hpp"
#include "outbox/outbox.hpp"

namespace power {
namespace {

namespace fs = std::filesystem;

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

// ---- the broker's store --------------------------------------------------------

const std::vector<std::string> broker_topics = {"orders", "payments", "audit"};

std::string topic_for(const std::string& msg_id) {
  return broker_topics[mix(std::hash<std::string>{}(msg_id) + 1) % broker_topics.size()];
}

broker::StoreOptions store_options(const Workload& workload) {
  broker::StoreOptions options;
  options.sync = *broker::parse_sync_mode(workload.sync);
  options.cache_bytes = std::size_t{8} << 20;
  // A fixed clock: the same seed writes the same bytes.
  options.clock = [] { return std::chrono::system_clock::time_point(std::chrono::hours(500000)); };
  return options;
}

struct Owned {
  std::string msg_id, topic, key, payload;
  broker::IncomingMessage view() const { return {msg_id, topic, key, {}, payload}; }
};

// A run's number and seed, with the VFS's randomness seeded from it.
Run begin_run(std::uint64_t seed, std::uint64_t number) {
  Run run{number, run_seed(seed, number), {}, {}};
  power::seed_randomness(run.seed);
  return run;
}

Owned owned_message(const std::string& msg_id) {
  return {msg_id, topic_for(msg_id), key_for(msg_id), payload_for(msg_id)};
}

Run record_broker_run(const Workload& workload, std::uint64_t seed, std::uint64_t number,
                      const fs::path& directory) {
  auto run = begin_run(seed, number);
  std::mt19937_64 random(run.seed);
  auto path = directory / "broker.db";
  { broker::Store created(path, store_options(workload)); }
  power::start_recording(directory);
  std::vector<std::string> sent;
  {
    broker::Store store(path, store_options(workload));
    for (std::uint64_t i = 0; i < workload.commits; ++i) {
      std::vector<Owned> batch;
      Commit commit;
      std::size_t size = 1 + random() % 16;
      for (std::size_t m = 0; m < size; ++m) {
        if (!sent.empty() && random() % 8 == 0) {
          batch.push_back(owned_message(sent[random() % sent.size()]));  // a resend
        } else {
          // Appended: GCC 12 at -O3 warns about "r" + std::string (a false positive).
          std::string msg_id = "r";
          msg_id.append(std::to_string(number)).append("-c").append(std::to_string(i));
          msg_id.append("-m").append(std::to_string(m));
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

// msg_id -> the commit that made it new.
std::map<std::string, std::uint64_t> commit_index(const Run& run) {
  std::map<std::string, std::uint64_t> index;
  for (std::uint64_t c = 0; c < run.commits.size(); ++c)
    for (const auto& msg_id : run.commits[c].msg_ids) index[msg_id] = c;
  return index;
}

// Runs `sql` and calls on_row for each row; throws std::runtime_error naming
// the statement when it fails.
void for_each_row(sqlite3* db, const char* sql, const std::function<void(sqlite3_stmt*)>& on_row) {
  sqlite3_stmt* raw = nullptr;
  if (sqlite3_prepare_v2(db, sql, -1, &raw, nullptr) != SQLITE_OK)
    throw std::runtime_error(std::string(sql) + ": " + sqlite3_errmsg(db));
  std::unique_ptr<sqlite3_stmt, int (*)(sqlite3_stmt*)> statement(raw, sqlite3_finalize);
  int code = SQLITE_ROW;
  while ((code = sqlite3_step(raw)) == SQLITE_ROW) on_row(raw);
  if (code != SQLITE_DONE) throw std::runtime_error(std::string(sql) + ": " + sqlite3_errmsg(db));
}

std::string column_bytes(sqlite3_stmt* statement, int column) {
  const auto* data = static_cast<const char*>(sqlite3_column_blob(statement, column));
  return {data != nullptr ? data : "",
          static_cast<std::size_t>(sqlite3_column_bytes(statement, column))};
}

// Empty when PRAGMA integrity_check says ok; else what it says, on one line.
std::string integrity_problem(sqlite3* db) {
  std::string result;
  try {
    for_each_row(db, "PRAGMA integrity_check", [&](sqlite3_stmt* row) {
      result += (result.empty() ? "" : "; ") + column_bytes(row, 0);
    });
  } catch (const std::exception& error) {
    return std::string("integrity_check cannot run: ") + error.what();
  }
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

Found inspect_broker(const Workload& workload, const Run& run, const fs::path& directory) {
  Found found;
  auto path = directory / "broker.db";
  auto rank_of = commit_index(run);
  try {
    broker::Store store(path, store_options(workload));
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
          } else if (!found.commit_of.emplace(message.msg_id, known->second).second) {
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
    // Nothing else is: a message lost with the power lost its dedup entry too,
    // so its resend is stored again rather than refused.
    std::vector<Owned> missing;
    for (const auto& [msg_id, commit] : rank_of)
      if (found.commit_of.count(msg_id) == 0) missing.push_back(owned_message(msg_id));
    views.clear();
    for (const auto& message : missing) views.push_back(message.view());
    outcomes = store.append(views);
    for (std::size_t i = 0; i < missing.size(); ++i) {
      if (outcomes[i].status != broker::AppendStatus::stored)
        found.problems.push_back("resending the missing " + missing[i].msg_id + " gives " +
                                 std::string(broker::to_string(outcomes[i].status)) +
                                 " at offset " + std::to_string(outcomes[i].offset));
    }
  } catch (const std::exception& error) {
    found.problems.push_back(std::string("the store does not open or read: ") + error.what());
    return found;
  }
  if (auto problem = integrity_problem(path); !problem.empty()) found.problems.push_back(problem);
  return found;
}

// ---- the producer library ------------------------------------------------------

outbox::Options producer_options(const Workload& workload) {
  outbox::Options options;
  options.durability =
      workload.sync == "full" ? outbox::Durability::full : outbox::Durability::normal;
  // A configured worker id and a fixed clock: the same seed writes the same bytes.
  options.worker_id = 7;
  options.clock = [] { return outbox::TimePoint(std::chrono::hours(500000)); };
  if (workload.checkpoint_pages) options.wal_autocheckpoint_pages = *workload.checkpoint_pages;
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

Run record_producer_run(const Workload& workload, std::uint64_t seed, std::uint64_t number,
                        const fs::path& directory) {
  auto run = begin_run(seed, number);
  std::mt19937_64 random(run.seed);
  auto path = directory / "app.db";
  {
    auto box = outbox::Outbox::open(path, producer_options(workload));
    execute(box.db(),
            "CREATE TABLE orders(id INTEGER PRIMARY KEY, customer TEXT NOT NULL, note TEXT)");
  }
  power::start_recording(directory);
  {
    auto box = outbox::Outbox::open(path, producer_options(workload));
    for (std::uint64_t i = 0; i < workload.commits; ++i) {
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

Found inspect_producer(const Workload& workload, const Run& run, const fs::path& directory) {
  Found found;
  auto rank_of = commit_index(run);
  try {
    auto box = outbox::Outbox::open(directory / "app.db", producer_options(workload));
    for_each_row(box.db(), "SELECT id FROM orders ORDER BY id", [&](sqlite3_stmt* row) {
      found.business_rows.insert(static_cast<std::uint64_t>(sqlite3_column_int64(row, 0)));
    });
    std::uint64_t previous_rank = 0;
    for_each_row(
        box.db(), "SELECT msg_id, topic, partition_key, payload FROM outbox_messages ORDER BY seq",
        [&](sqlite3_stmt* row) {
          auto msg_id = column_bytes(row, 0);
          if (column_bytes(row, 1) != "orders" || column_bytes(row, 2) != key_for(msg_id) ||
              column_bytes(row, 3) != payload_for(msg_id))
            found.problems.push_back(msg_id + " is not what was enqueued");
          auto known = rank_of.find(msg_id);
          if (known == rank_of.end()) {
            found.problems.push_back(msg_id + " was never enqueued");
            return;
          }
          if (known->second < previous_rank)
            found.problems.push_back(msg_id + " has a seq before a message of an earlier commit");
          previous_rank = known->second;
          found.commit_of.emplace(msg_id, known->second);
        });
    if (auto problem = integrity_problem(box.db()); !problem.empty())
      found.problems.push_back(problem);
  } catch (const std::exception& error) {
    found.problems.push_back(std::string("the outbox does not open or read: ") + error.what());
  }
  // A business row is there iff its transaction's messages are.
  for (std::uint64_t c = 0; c < run.commits.size(); ++c) {
    bool row = found.business_rows.count(c + 1) != 0;
    bool message = found.commit_of.count(run.commits[c].msg_ids.front()) != 0;
    if (row != message)
      found.problems.push_back("order " + std::to_string(c + 1) +
                               (row ? " is there without" : " is missing but has") +
                               " its messages");
  }
  return found;
}

// ---- judging one crash point ---------------------------------------------------

}  // namespace

Verdict judge(const Run& run, std::size_t crash_point, const Found& found, bool durable_required) {
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
        ids.begin(), ids.end(), [&](const auto& id) { return found.commit_of.count(id); }));
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
  if (durable_required && verdict.commits_lost != 0)
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

std::uint64_t run_seed(std::uint64_t seed, std::uint64_t number) {
  return mix(seed ^ mix(number));
}

Run record_run(const Workload& workload, std::uint64_t seed, std::uint64_t number,
               const fs::path& directory) {
  return workload.subject == "broker" ? record_broker_run(workload, seed, number, directory)
                                      : record_producer_run(workload, seed, number, directory);
}

Found inspect(const Workload& workload, const Run& run, const fs::path& directory) {
  return workload.subject == "broker" ? inspect_broker(workload, run, directory)
                                      : inspect_producer(workload, run, directory);
}

}  // namespace power
