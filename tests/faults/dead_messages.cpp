#include "run.hpp"

#include "outbox/error.hpp"
#include "sqlite/sqlite.hpp"

#include <algorithm>
#include <csignal>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace faults {

std::vector<Run::DeadRow> Run::dead_rows(const std::vector<fs::path>* among) {
  std::vector<DeadRow> dead;
  for (const auto& db : among != nullptr ? *among : app_dbs_) {
    Database app(db);
    bool poison_known = app.has_table("poison");
    for (auto& row : app.rows(
             "SELECT m.msg_id, " +
             std::string(poison_known ? "EXISTS (SELECT 1 FROM poison p WHERE p.msg_id = m.msg_id)"
                                      : "0") +
             ", EXISTS (SELECT 1 FROM outbox_messages later WHERE later.seq > m.seq"
             " AND later.topic = m.topic"
             " AND coalesce(later.partition_key, '') = coalesce(m.partition_key, ''))"
             " FROM outbox_delivery d JOIN outbox_messages m USING (seq)"
             " WHERE d.state = 2 ORDER BY d.seq")) {
      dead.push_back({db, row[0], row[1] == "1", row[2] == "1"});
    }
  }
  return dead;
}

bool Run::resolve_one_dead(bool drop) {
  auto dead = dead_rows();
  if (dead.empty()) return false;
  const auto& row = dead[std::uniform_int_distribution<std::size_t>(0, dead.size() - 1)(random_)];
  operator_command(drop, row);
  return true;
}

std::size_t Run::resolve_dead_for_drain(const std::vector<fs::path>& among) {
  std::size_t left = 0;
  for (const auto& row : dead_rows(&among)) {
    if (row.poison && !row.holds_back) continue;
    ++left;
    operator_command(row.poison || std::uniform_int_distribution<int>(0, 1)(random_) == 0, row);
  }
  return left;
}

void Run::operator_command(bool drop, const DeadRow& row) {
  const auto& msg_id = row.msg_id;
  if (!drop && !row.poison) strip_padding(row.db, msg_id);
  // The harness waits here, so it resumes the processes whose pause is over
  // while it does: a relay paused inside a write transaction holds app.db's
  // write lock, and the command would wait for it past its busy timeout.
  test_support::ChildProcess command(settings_.relay_binary, {drop ? "drop" : "replay", "--db",
                                                              row.db.string(), "--msg-id", msg_id});
  std::optional<test_support::ExitStatus> status;
  const auto deadline = SteadyClock::now() + 30s;
  while (!(status = command.wait_for(5ms))) {
    if (read_retry_hook()) read_retry_hook()();
    if (SteadyClock::now() >= deadline) {
      command.signal(SIGKILL);
      throw HarnessError("outbox-relay " + std::string(drop ? "drop" : "replay") +
                         " did not finish within 30 s");
    }
  }
  const test_support::RunResult result{*status, command.stdout_text(), command.stderr_text()};
  append_file(dir_ / "logs" / "operator.log", std::string(drop ? "drop " : "replay ") + msg_id +
                                                  ": " + describe(result.status) + "\n" +
                                                  result.out + result.err);
  if (!result.status.exited || result.status.code != 0) {
    anomalies_.push_back("outbox-relay " + std::string(drop ? "drop" : "replay") + " of " +
                         shown(msg_id) + " ended with " + describe(result.status) + ": " +
                         result.err);
    return;
  }
  ++(drop ? dropped_ : replayed_);
  if (!drop && row.poison) ++replayed_poison_;
}

void Run::strip_padding(const fs::path& app_db, const std::string& msg_id) {
  try {
    auto db = sqlite::open_file(app_db.string(), SQLITE_OPEN_READWRITE);
    wait_for_locks_resuming_paused(db.get());
    sqlite::Statement update(
        db.get(),
        "UPDATE outbox_messages SET payload = substr(payload, 1, length(payload) - 20001) "
        "WHERE msg_id = ?1 AND length(payload) > 20001");
    update.use().bind_text(1, msg_id).run();
  } catch (const outbox::Error& error) {
    throw HarnessError("repairing " + msg_id + " in " + app_db.string() +
                       " failed: " + error.what());
  }
}

}  // namespace faults
