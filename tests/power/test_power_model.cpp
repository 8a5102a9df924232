// The power-loss model on its own: crash images rebuilt from hand-made logs,
// what the recording VFS logs for a real SQLite commit, and checks that
// report damage when a crash image is damaged.
#include <sqlite3.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <set>
#include <string>

#include "crash_image.hpp"
#include "power_workloads.hpp"
#include "recording_vfs.hpp"
#include "test_support.hpp"

namespace {

using Kind = power::Operation::Kind;

power::Operation write_op(const std::string& name, int generation, std::int64_t offset,
                          std::string data) {
  return {Kind::write, name, generation, offset, std::move(data), 0};
}
power::Operation file_op(Kind kind, const std::string& name, int generation,
                         std::int64_t offset = 0) {
  return {kind, name, generation, offset, {}, 0};
}
power::Operation dir_sync() {
  return {Kind::dir_sync, {}, -1, 0, {}, 0};
}

void execute(sqlite3* db, const char* sql) {
  char* error = nullptr;
  int code = sqlite3_exec(db, sql, nullptr, nullptr, &error);
  INFO(sql << ": " << (error != nullptr ? error : ""));
  sqlite3_free(error);
  REQUIRE(code == SQLITE_OK);
}

struct Database {
  explicit Database(const std::filesystem::path& path) {
    REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
  }
  ~Database() { sqlite3_close_v2(db); }
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;
  sqlite3* db = nullptr;
};

std::int64_t count_rows(sqlite3* db, const char* sql) {
  sqlite3_stmt* statement = nullptr;
  REQUIRE(sqlite3_prepare_v2(db, sql, -1, &statement, nullptr) == SQLITE_OK);
  std::int64_t value =
      sqlite3_step(statement) == SQLITE_ROW ? sqlite3_column_int64(statement, 0) : -1;
  sqlite3_finalize(statement);
  return value;
}

// A 4-commit run recorded to its end, and its crash image after everything.
struct EndImage {
  explicit EndImage(const char* subject) : workload{subject, "full", 4, {}} {
    power::install_recording_vfs();
    test_support::TempDir directory("outbox-power-model");
    run = power::record_run(workload, 1, 0, directory.path());
    power::write_image(power::crash_image(run.recording, end(), power::Cut::discard, 1),
                       after.path());
  }
  std::size_t end() const { return run.recording.log.size(); }

  power::Workload workload;
  power::Run run;
  test_support::TempDir after{"outbox-power-model-after"};
};

}  // namespace

TEST_CASE("crash image: a file keeps the writes its last xSync covered, no later ones") {
  power::Recording recording;
  recording.baseline.files = {{"a", "AAAA"}};
  recording.log = {write_op("a", 0, 0, "BB"), file_op(Kind::sync, "a", 0),
                   write_op("a", 0, 2, "CC"), file_op(Kind::truncate, "a", 0, 1)};
  auto at = [&](std::size_t point) {
    return power::crash_image(recording, point, power::Cut::discard, 1).files.at("a");
  };
  CHECK(at(0) == "AAAA");
  CHECK(at(1) == "AAAA");  // written, not synced
  CHECK(at(2) == "BBAA");
  CHECK(at(4) == "BBAA");  // the unsynced write and truncate are lost
  recording.log.push_back(file_op(Kind::sync, "a", 0));
  CHECK(at(5) == "B");
  CHECK(power::crash_points(recording) == std::vector<std::size_t>{0, 1, 2, 3, 4, 5});
}

TEST_CASE("crash image: a torn write keeps some of its 512-byte sectors, never all or none") {
  power::Recording recording;
  const std::string before(2048, '.');
  recording.baseline.files = {{"a", before}};
  recording.log = {write_op("a", 0, 256, std::string(1536, 'x'))};
  for (std::uint64_t seed = 1; seed <= 50; ++seed) {
    auto image = power::crash_image(recording, 0, power::Cut::torn, seed);
    const auto& after = image.files.at("a");
    REQUIRE(after.size() == before.size());
    CHECK(after.substr(0, 256) == before.substr(0, 256));
    CHECK(after.substr(1792) == before.substr(1792));
    std::size_t kept = 0;
    // Sectors inside the write: [256,512) [512,1024) [1024,1536) [1536,1792).
    for (auto [from, to] : {std::pair{256, 512}, {512, 1024}, {1024, 1536}, {1536, 1792}}) {
      auto piece =
          after.substr(static_cast<std::size_t>(from), static_cast<std::size_t>(to - from));
      bool all_new = std::all_of(piece.begin(), piece.end(), [](char c) { return c == 'x'; });
      bool all_old = std::all_of(piece.begin(), piece.end(), [](char c) { return c == '.'; });
      CHECK((all_new || all_old));
      kept += all_new ? 1 : 0;
    }
    CHECK(kept > 0);
    CHECK(kept < 4);
    CHECK(image.note.find(std::to_string(kept) + " of 4 sectors") != std::string::npos);
  }
  // The same seed tears the same way (a run replays).
  CHECK(power::crash_image(recording, 0, power::Cut::torn, 7).files ==
        power::crash_image(recording, 0, power::Cut::torn, 7).files);
  // Without a tear the write is simply lost.
  CHECK(power::crash_image(recording, 0, power::Cut::discard, 7).files.at("a") == before);
}

TEST_CASE("crash image: reordered writeback leaves each sector at one of its versions") {
  power::Recording recording;
  recording.baseline.files = {{"a", std::string(1024, '.')}};
  recording.log = {write_op("a", 0, 0, std::string(1024, 'x')),
                   write_op("a", 0, 256, std::string(512, 'y'))};
  const std::vector<std::set<std::string>> versions = {
      {std::string(512, '.'), std::string(512, 'x'), std::string(256, 'x') + std::string(256, 'y')},
      {std::string(512, '.'), std::string(512, 'x'),
       std::string(256, 'y') + std::string(256, 'x')}};
  std::vector<std::set<std::string>> seen(2);
  for (std::uint64_t seed = 1; seed <= 100; ++seed) {
    auto after = power::crash_image(recording, 2, power::Cut::reordered, seed).files.at("a");
    REQUIRE(after.size() == 1024);
    for (std::size_t sector = 0; sector < 2; ++sector) {
      auto piece = after.substr(sector * 512, 512);
      CHECK(versions[sector].count(piece) == 1);
      seen[sector].insert(piece);
    }
  }
  CHECK(seen == versions);  // every version turns up
  // Synced writes are never undone.
  recording.log.insert(recording.log.begin() + 1, file_op(Kind::sync, "a", 0));
  for (std::uint64_t seed = 1; seed <= 20; ++seed) {
    auto after = power::crash_image(recording, 3, power::Cut::reordered, seed).files.at("a");
    CHECK(after.find('.') == std::string::npos);
  }
}

TEST_CASE("crash image: creating and deleting a file last only with a directory fsync") {
  power::Recording recording;
  recording.baseline.files = {{"a", "old"}};
  recording.log = {file_op(Kind::create, "b", 1), write_op("b", 1, 0, "new"),
                   file_op(Kind::sync, "b", 1), file_op(Kind::remove, "a", 0)};
  auto image = power::crash_image(recording, 4, power::Cut::discard, 1);
  CHECK(image.files.count("b") == 0);   // its directory entry was never synced
  CHECK(image.files.at("a") == "old");  // the deletion was not synced either
  recording.log.push_back(dir_sync());
  image = power::crash_image(recording, 5, power::Cut::discard, 1);
  CHECK(image.files.at("b") == "new");
  CHECK(image.files.count("a") == 0);
  // A name created again after a synced deletion is a new file, empty until synced.
  recording.log.push_back(file_op(Kind::create, "a", 2));
  recording.log.push_back(write_op("a", 2, 0, "again"));
  recording.log.push_back(dir_sync());
  image = power::crash_image(recording, recording.log.size(), power::Cut::discard, 1);
  CHECK(image.files.at("a").empty());
}

TEST_CASE(
    "recording VFS: a WAL commit with synchronous=FULL is writes, a sync, and one directory "
    "fsync") {
  power::install_recording_vfs();
  test_support::TempDir directory("outbox-power-model");
  auto path = directory / "x.db";
  {
    Database setup(path);
    execute(setup.db, "PRAGMA journal_mode=WAL");
    execute(setup.db, "CREATE TABLE t(v TEXT)");
  }
  power::start_recording(directory.path());
  {
    Database database(path);
    execute(database.db, "PRAGMA synchronous=FULL");
    execute(database.db, "INSERT INTO t VALUES ('one')");
    power::record_event(1);
    execute(database.db, "INSERT INTO t VALUES ('two')");
    power::record_event(2);
    // Keep the WAL (no checkpoint at close), as a crash would.
    REQUIRE(sqlite3_db_config(database.db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, nullptr) ==
            SQLITE_OK);
  }
  auto recording = power::stop_recording();
  const auto& log = recording.log;
  REQUIRE(recording.baseline.files.count("x.db") == 1);

  auto position = [&](auto predicate) {
    return static_cast<std::size_t>(std::find_if(log.begin(), log.end(), predicate) - log.begin());
  };
  auto created =
      position([](const auto& op) { return op.kind == Kind::create && op.name == "x.db-wal"; });
  auto first_sync =
      position([](const auto& op) { return op.kind == Kind::sync && op.name == "x.db-wal"; });
  auto first_event = position([](const auto& op) { return op.kind == Kind::event; });
  REQUIRE(first_sync < log.size());
  CHECK(created < first_sync);
  CHECK(log[first_sync + 1].kind == Kind::dir_sync);
  CHECK(first_sync < first_event);
  CHECK(std::count_if(log.begin(), log.end(),
                      [](const auto& op) { return op.kind == Kind::dir_sync; }) == 1);
  // A sync of the WAL before each commit is acknowledged (one more for a new WAL's header).
  CHECK(std::count_if(log.begin(), log.end(),
                      [](const auto& op) { return op.kind == Kind::sync; }) >= 2);
  auto second_event = static_cast<std::size_t>(
      std::find_if(log.begin() + static_cast<std::ptrdiff_t>(first_event) + 1, log.end(),
                   [](const auto& op) { return op.kind == Kind::event; }) -
      log.begin());
  REQUIRE(second_event < log.size());
  CHECK(std::any_of(log.begin() + static_cast<std::ptrdiff_t>(first_event),
                    log.begin() + static_cast<std::ptrdiff_t>(second_event),
                    [](const auto& op) { return op.kind == Kind::sync && op.name == "x.db-wal"; }));

  // Reopened by SQLite: the first row is there once its sync is, the second not before its own.
  auto rows_after = [&](std::size_t point) {
    test_support::TempDir after("outbox-power-model-after");
    power::write_image(power::crash_image(recording, point, power::Cut::discard, 1), after.path());
    Database reopened(after / "x.db");
    return count_rows(reopened.db, "SELECT count(*) FROM t");
  };
  CHECK(rows_after(first_sync) == 0);
  CHECK(rows_after(first_event) == 1);
  CHECK(rows_after(second_event) == 2);
  CHECK(rows_after(log.size()) == 2);
}

TEST_CASE("power checks: a broker store with a message gone but its dedup entry kept is reported") {
  EndImage image("broker");
  CHECK(power::inspect(image.workload, image.run, image.after.path()).problems.empty());
  {
    Database damage(image.after / "broker.db");
    execute(damage.db, "DELETE FROM chunks WHERE id = (SELECT max(id) FROM chunks)");
  }
  auto found = power::inspect(image.workload, image.run, image.after.path());
  INFO(found.problems.size());
  CHECK(std::any_of(found.problems.begin(), found.problems.end(), [](const std::string& problem) {
    return problem.find("dedup entries for") != std::string::npos;
  }));
  // One chunk holds one topic's part of a batch: the batch is there by halves.
  auto verdict = power::judge(image.run, image.end(), found, true);
  CHECK(std::any_of(verdict.problems.begin(), verdict.problems.end(), [](const std::string& p) {
    return p.find("is there by halves") != std::string::npos;
  }));
}

TEST_CASE("power checks: a producer's business row without its messages is reported") {
  EndImage image("producer");
  auto judged = [&] {
    return power::judge(image.run, image.end(),
                        power::inspect(image.workload, image.run, image.after.path()), true);
  };
  CHECK(judged().problems.empty());
  {
    Database damage(image.after / "app.db");
    execute(damage.db, "DELETE FROM outbox_messages WHERE msg_id LIKE 'order-2-%'");
  }
  auto verdict = judged();
  CHECK(std::find(verdict.problems.begin(), verdict.problems.end(),
                  "order 2 is there without its messages") != verdict.problems.end());
  CHECK(std::any_of(verdict.problems.begin(), verdict.problems.end(), [](const std::string& p) {
    return p.find("commit 1 is lost but the later commit 2 is there") != std::string::npos;
  }));
}

TEST_CASE("power workloads: the same seed records the same operations, byte for byte") {
  power::install_recording_vfs();
  for (const char* subject : {"broker", "producer"}) {
    INFO(subject);
    power::Workload workload{subject, "normal", 6, {}};
    auto record = [&] {
      test_support::TempDir directory("outbox-power-model");
      return power::record_run(workload, 3, 1, directory.path());
    };
    auto first = record();
    auto second = record();
    CHECK(first.recording.baseline.files == second.recording.baseline.files);
    REQUIRE(first.recording.log.size() == second.recording.log.size());
    std::size_t differing = 0;
    for (std::size_t i = 0; i < first.recording.log.size(); ++i) {
      const auto& a = first.recording.log[i];
      const auto& b = second.recording.log[i];
      bool same = a.kind == b.kind && a.name == b.name && a.generation == b.generation &&
                  a.offset == b.offset && a.data == b.data && a.event == b.event;
      differing += same ? 0 : 1;
    }
    CHECK(differing == 0);
  }
}
