// Real processes sharing one database: two producers enqueue at the same time
// (nothing lost, msg_ids unique, seq order is commit order), producers killed
// one after another never run out of worker ids, and two consumers receive
// the same msg_ids (each processed exactly once).
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string_view>
#include <thread>
#include <vector>

#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>

#include "outbox/inbox.hpp"
#include "outbox/outbox.hpp"
#include "outbox/relay_store.hpp"
#include "outbox_test_util.hpp"
#include "test_support.hpp"

using outbox_test::exec;

namespace {

// The outbox schema plus the business table outbox_test_producer writes to.
void create_events_table(const std::string& db_path) {
  auto box = outbox::Outbox::open(db_path);
  exec(box.db(),
       "CREATE TABLE events(id INTEGER PRIMARY KEY, tag TEXT NOT NULL, n INTEGER NOT NULL)");
}

// A process that holds the WAL index's five read locks of `db_path` (bytes
// 123-127 of its -shm file, SQLite's wal.c) from construction until release():
// what a process of SQLite's stopped in the middle of a checkpoint holds. The
// child only waits on a pipe; it dies with the test.
class ReadLocksHolder {
 public:
  explicit ReadLocksHolder(const std::string& db_path) {
    const std::string shm = db_path + "-shm";
    int ready[2], release[2];
    REQUIRE(::pipe(ready) == 0);
    REQUIRE(::pipe(release) == 0);
    pid_ = ::fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      ::close(ready[0]);
      ::close(release[1]);
      int fd = ::open(shm.c_str(), O_RDWR);
      struct flock lock {};
      lock.l_type = F_WRLCK;
      lock.l_whence = SEEK_SET;
      lock.l_start = 123;
      lock.l_len = 5;
      char ok = fd >= 0 && ::fcntl(fd, F_SETLK, &lock) == 0 ? 'y' : 'n';
      if (::write(ready[1], &ok, 1) != 1) ::_exit(1);
      char done;
      while (::read(release[0], &done, 1) < 0 && errno == EINTR) {
      }
      ::_exit(0);
    }
    ::close(ready[1]);
    ::close(release[0]);
    release_fd_ = release[1];
    char ok = 'n';
    CHECK(::read(ready[0], &ok, 1) == 1);
    ::close(ready[0]);
    REQUIRE(ok == 'y');
  }
  ~ReadLocksHolder() { release(); }
  ReadLocksHolder(const ReadLocksHolder&) = delete;
  ReadLocksHolder& operator=(const ReadLocksHolder&) = delete;

  void release() {
    if (pid_ <= 0) return;
    ::close(release_fd_);  // the child reads EOF and exits
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }

 private:
  pid_t pid_ = -1;
  int release_fd_ = -1;
};

// Counts the log messages that contain `text`.
class CountingSink : public spdlog::sinks::base_sink<std::mutex> {
 public:
  explicit CountingSink(std::string text) : text_(std::move(text)) {}
  int count() const { return count_.load(); }

 protected:
  void sink_it_(const spdlog::details::log_msg& message) override {
    if (std::string_view(message.payload.data(), message.payload.size()).find(text_) !=
        std::string_view::npos) {
      ++count_;
    }
  }
  void flush_() override {}

 private:
  std::string text_;
  std::atomic<int> count_{0};
};

}  // namespace

TEST_CASE("two processes enqueue concurrently without losing anything", "[integration]") {
  test_support::TempDir dir;
  const auto db_path = (dir / "app.db").string();
  create_events_table(db_path);
  constexpr int per_process = 1500;
  const auto start_file = dir / "go";
  test_support::ChildProcess first(
      OUTBOX_BIN_OUTBOX_TEST_PRODUCER,
      {db_path, std::to_string(per_process), "p1", start_file.string()}, dir.path());
  test_support::ChildProcess second(
      OUTBOX_BIN_OUTBOX_TEST_PRODUCER,
      {db_path, std::to_string(per_process), "p2", start_file.string()}, dir.path());
  // Both have opened the outbox (and leased a worker id) before either starts.
  REQUIRE(test_support::wait_until(
      [&] {
        return first.stdout_text().find("worker") != std::string::npos &&
               second.stdout_text().find("worker") != std::string::npos;
      },
      std::chrono::seconds(60)));
  CHECK(first.stdout_text() != second.stdout_text());  // distinct worker ids
  std::ofstream(start_file) << "go";

  auto first_status = first.wait_for(std::chrono::seconds(240));
  auto second_status = second.wait_for(std::chrono::seconds(240));
  REQUIRE(first_status);
  REQUIRE(second_status);
  INFO(first.stderr_text() << second.stderr_text());
  REQUIRE(first_status->exited);
  REQUIRE(first_status->code == 0);
  REQUIRE(second_status->exited);
  REQUIRE(second_status->code == 0);

  auto store = outbox::RelayStore::open(db_path);
  auto pending = store.read_pending(10 * per_process);
  REQUIRE(pending.size() == 2 * per_process);

  // Every committed message is there once, with a unique msg_id.
  std::set<std::string> ids, payloads;
  for (const auto& message : pending) {
    ids.insert(message.msg_id);
    payloads.insert(message.payload);
  }
  CHECK(ids.size() == 2 * per_process);
  CHECK(payloads.size() == 2 * per_process);

  // seq order is commit order: the business rows' ids were assigned under the
  // same write lock, so both orders must agree message by message; per
  // producer, n grows with seq.
  outbox_test::RawDb raw(db_path);
  sqlite3_stmt* stmt = nullptr;
  REQUIRE(sqlite3_prepare_v2(raw.get(), "SELECT tag, n FROM events ORDER BY id", -1, &stmt,
                             nullptr) == SQLITE_OK);
  std::vector<std::string> business_order;
  while (sqlite3_step(stmt) == SQLITE_ROW) {
    business_order.push_back(
        std::string(reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0))) + ":" +
        std::to_string(sqlite3_column_int64(stmt, 1)));
  }
  sqlite3_finalize(stmt);
  REQUIRE(business_order.size() == pending.size());
  std::map<std::string, long> last_n;
  bool interleaved = false;
  for (std::size_t i = 0; i < pending.size(); ++i) {
    REQUIRE(pending[i].payload == business_order[i]);
    auto colon = pending[i].payload.find(':');
    auto tag = pending[i].payload.substr(0, colon);
    auto n = std::stol(pending[i].payload.substr(colon + 1));
    CHECK(n == last_n[tag] + 1);
    last_n[tag] = n;
    if (i > 0 && *pending[i].partition_key != *pending[i - 1].partition_key) interleaved = true;
  }
  CHECK(last_n["p1"] == per_process);
  CHECK(last_n["p2"] == per_process);
  // Not a correctness requirement, but shows the two really ran together.
  WARN("commits interleaved: " << (interleaved ? "yes" : "no"));
}

TEST_CASE("2,000 producers killed with SIGKILL in a row never lock anyone out of worker ids",
          "[integration]") {
  // Each producer leases a worker id, commits one message and is killed. A
  // killed holder's id must come back at once (the lease is a lock the kernel
  // drops), and whoever takes it next must never repeat one of its ids.
  test_support::TempDir dir;
  const auto db_path = (dir / "app.db").string();
  create_events_table(db_path);
  // 2,000 producers: more than the 1,024 worker ids, so the run fails unless a killed
  // holder's id comes back. The sanitizer trees start 250 (test_support::scaled): each
  // producer runs the same lease, commit and kill as in the plain tree, whose run
  // is the one that would run out of ids without reuse (tests/sanitizers/README.md).
  const int total = test_support::scaled(2000, 250);
  constexpr int parallel = 8;
  std::set<std::string> msg_ids;
  std::set<unsigned> worker_ids;
  int started = 0;
  while (started < total) {
    std::vector<std::unique_ptr<test_support::ChildProcess>> batch;
    for (int i = 0; i < parallel && started < total; ++i, ++started) {
      batch.push_back(std::make_unique<test_support::ChildProcess>(
          OUTBOX_BIN_OUTBOX_TEST_PRODUCER,
          std::vector<std::string>{"--commit-one-and-wait", db_path,
                                   test_support::concat("p", started)},
          dir.path()));
    }
    for (auto& producer : batch) {
      REQUIRE(test_support::wait_until(
          [&] {
            return producer->stdout_text().find('\n') != std::string::npos || !producer->running();
          },
          std::chrono::seconds(60)));
      auto out = producer->stdout_text();
      INFO("producer " << started << ": " << out << producer->stderr_text());
      unsigned worker = 0;
      char msg_id[64] = {};
      REQUIRE(std::sscanf(out.c_str(), "committed %u %63s", &worker, msg_id) == 2);
      CHECK(msg_ids.insert(msg_id).second);
      worker_ids.insert(worker);
      producer->signal(SIGKILL);
    }
    for (auto& producer : batch) {
      auto status = producer->wait_for(std::chrono::seconds(30));
      REQUIRE(status);
      CHECK(status->signal == SIGKILL);
    }
  }
  CHECK(msg_ids.size() == static_cast<std::size_t>(total));
  outbox_test::RawDb raw(db_path);
  CHECK(raw.count("events") == total);
  CHECK(raw.count("outbox_messages") == total);
  CHECK(outbox_test::query_int(raw.get(), "SELECT count(DISTINCT msg_id) FROM outbox_messages") ==
        total);
  WARN("worker ids used: " << worker_ids.size() << " for " << total << " producers");
}

TEST_CASE("two consumer processes of the same msg_ids process each one once", "[integration]") {
  test_support::TempDir dir;
  const auto db_path = (dir / "consumer.db").string();
  {
    auto inbox = outbox::Inbox::open(db_path);
    exec(inbox.db(), "CREATE TABLE shipments(msg_id TEXT NOT NULL, tag TEXT NOT NULL)");
  }
  constexpr int messages = 1000;
  const auto start_file = dir / "go";
  test_support::ChildProcess first(
      OUTBOX_BIN_OUTBOX_TEST_PRODUCER,
      {"--inbox", db_path, std::to_string(messages), "c1", start_file.string()}, dir.path());
  test_support::ChildProcess second(
      OUTBOX_BIN_OUTBOX_TEST_PRODUCER,
      {"--inbox", db_path, std::to_string(messages), "c2", start_file.string()}, dir.path());
  REQUIRE(test_support::wait_until(
      [&] {
        return first.stdout_text().find("ready") != std::string::npos &&
               second.stdout_text().find("ready") != std::string::npos;
      },
      std::chrono::seconds(60)));
  std::ofstream(start_file) << "go";
  auto first_status = first.wait_for(std::chrono::seconds(240));
  auto second_status = second.wait_for(std::chrono::seconds(240));
  REQUIRE(first_status);
  REQUIRE(second_status);
  INFO(first.stderr_text() << second.stderr_text());
  REQUIRE(first_status->exited);
  REQUIRE(first_status->code == 0);
  REQUIRE(second_status->exited);
  REQUIRE(second_status->code == 0);

  outbox_test::RawDb raw(db_path);
  CHECK(raw.count("shipments") == messages);
  CHECK(outbox_test::query_int(raw.get(), "SELECT count(DISTINCT msg_id) FROM shipments") ==
        messages);
  CHECK(outbox_test::query_int(raw.get(),
                               "SELECT count(*) FROM outbox_inbox WHERE msg_id LIKE 'c-%' "
                               "AND state = 2") == messages);
  // Both reported what they did; together every message and claim exactly once.
  auto total = [](const std::string& text, const std::string& word) {
    auto at = text.find(word);
    return at == std::string::npos ? -1L : std::stol(text.substr(at + word.size() + 1));
  };
  CHECK(total(first.stdout_text(), "processed") + total(second.stdout_text(), "processed") ==
        messages);
  CHECK(total(first.stdout_text(), "claimed") + total(second.stdout_text(), "claimed") == messages);
  WARN("c1 shipped " << outbox_test::query_int(raw.get(),
                                               "SELECT count(*) FROM shipments WHERE tag = 'c1'")
                     << " of " << messages);
}

TEST_CASE("a commit in another process wakes the waiting relay side", "[integration]") {
  test_support::TempDir dir;
  const auto db_path = (dir / "app.db").string();
  create_events_table(db_path);
  outbox::RelayOptions options;
  options.poll_interval = std::chrono::minutes(1);  // only the wake-up can end the wait early
  auto store = outbox::RelayStore::open(db_path, options);
  CHECK(store.read_pending(10).empty());
  CHECK_FALSE(store.wait_for_work(std::chrono::milliseconds(1)));  // now listening
  test_support::ChildProcess producer(OUTBOX_BIN_OUTBOX_TEST_PRODUCER, {db_path, "1", "p"},
                                      dir.path());
  const auto started = std::chrono::steady_clock::now();
  CHECK(store.wait_for_work(std::chrono::seconds(50)));
  CHECK(std::chrono::steady_clock::now() - started < std::chrono::seconds(50));
  auto status = producer.wait_for(std::chrono::seconds(60));
  REQUIRE(status);
  CHECK(status->code == 0);
  CHECK(store.read_pending(10).size() == 1);
}

TEST_CASE(
    "a process stopped while holding the WAL index's locks delays a producer's BEGIN, within "
    "its busy timeout, and never fails it",
    "[integration]") {
  test_support::TempDir dir;
  const auto db_path = (dir / "app.db").string();
  create_events_table(db_path);
  // Opened before the locks are taken: opening reads the schema.
  auto retries = std::make_shared<CountingSink>("locking protocol");
  outbox::Options patient;
  patient.busy_timeout = std::chrono::seconds(120);
  patient.logger = std::make_shared<spdlog::logger>("patient", retries);
  auto waiting = outbox::Outbox::open(db_path, patient);
  outbox::Options impatient;
  impatient.busy_timeout = std::chrono::milliseconds(1);
  auto giving_up = outbox::Outbox::open(db_path, impatient);
  {
    outbox::Transaction tx(waiting);  // the WAL index exists and has a header
    tx.enqueue({.topic = "orders", .key = "k", .payload = "before"});
    tx.commit();
  }

  ReadLocksHolder holder(db_path);
  // Within the busy timeout, the producer's BEGIN waits it out...
  std::optional<std::string> failure;
  std::thread producer([&] {
    try {
      outbox::Transaction tx(waiting);
      tx.enqueue({.topic = "orders", .key = "k", .payload = "after"});
      tx.commit();
    } catch (const std::exception& error) {
      failure = error.what();
    }
  });
  // ...while without patience SQLite's SQLITE_PROTOCOL reaches the caller
  // (after the same 10 s of SQLite's own tries, meanwhile).
  try {
    outbox::Transaction tx(giving_up);
    FAIL("BEGIN succeeded while another process held the WAL index's read locks");
  } catch (const outbox::Error& error) {
    CHECK((error.extended_code() & 0xff) == SQLITE_PROTOCOL);
    CHECK_THAT(error.what(), Catch::Contains("nothing was written"));
  }
  // Released once the producer has met SQLITE_PROTOCOL and said so.
  CHECK(test_support::wait_until([&] { return retries->count() > 0; }, std::chrono::seconds(100)));
  holder.release();
  producer.join();
  INFO(failure.value_or(""));
  CHECK_FALSE(failure);
  CHECK(outbox_test::query_int(waiting.db(), "SELECT count(*) FROM outbox_messages") == 2);
}
