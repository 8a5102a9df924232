// A consumer for the fault suite: reads topics from outbox-broker as a
// consumer group and applies each message's side effect once, through
// outbox::Inbox, in its own SQLite database. It is killed at random by the
// suite; after a restart the group resumes at its committed offset, so some
// messages come again and the inbox must recognise them.
//
//   faults_consumer --broker ENDPOINT --db CONSUMER.DB --group G --topic T [--topic T2 ...]
//
// Side effects are rows in `effects` (msg_id, topic, broker offset), with no
// unique constraint: a message applied twice shows up as two rows. Pages are
// committed to the group after they were applied, as a consumer does.
// SIGTERM: finish the current page and exit 0.
//
// With --inbox redis://HOST:PORT the dedup records live in Redis
// (outbox::RedisInbox), shared with the other consumers of the group, and the
// side effect is a row in the shared database named by --db, written outside
// the record (as a call to another service would be): begin() claims the
// msg_id under a token and a lease of --lease-ms, the effect row (with the
// token and this process's name-pid) is written, then complete(). The Redis
// inbox promises at least once, made idempotent by the record: a consumer that
// dies between its side effect and complete(), or whose lease lapsed before
// it completed (claim_lost), leaves an effect that the next claim repeats.
// Every claim_lost and every complete() that failed is recorded in
// `claim_outcomes` (msg_id, token, outcome) so that the checker can tell the
// repeats the contract allows from any other. --self-kill-rate P: with
// probability P each, the process kills itself with SIGKILL after begin()
// before the side effect, between the side effect and complete(), and after
// complete() before the page's offset is committed (a line on stderr first
// says which).
#include <sqlite3.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "broker/client.hpp"
#include "faults_flags.hpp"
#include "outbox/inbox.hpp"
#ifdef FAULTS_WITH_REDIS_INBOX
#include "outbox/redis_inbox.hpp"
#endif

namespace {

using namespace std::chrono_literals;

std::atomic<bool> stop_requested{false};
extern "C" void on_stop_signal(int) {
  stop_requested.store(true);
}

void exec(sqlite3* db, const char* sql) {
  char* error = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &error) != SQLITE_OK) {
    std::string text = error != nullptr ? error : "?";
    sqlite3_free(error);
    throw std::runtime_error(text);
  }
}

// A statement prepared once; run() binds text and integer values in order.
class Statement {
 public:
  Statement(sqlite3* db, const char* sql) : db_(db) {
    if (sqlite3_prepare_v2(db, sql, -1, &handle_, nullptr) != SQLITE_OK) {
      throw std::runtime_error(sqlite3_errmsg(db));
    }
  }
  ~Statement() { sqlite3_finalize(handle_); }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  void run(const std::vector<std::string>& texts, std::optional<std::int64_t> number = {}) {
    int index = 1;
    for (const auto& text : texts) {
      sqlite3_bind_text(handle_, index++, text.data(), static_cast<int>(text.size()),
                        SQLITE_TRANSIENT);
    }
    if (number) sqlite3_bind_int64(handle_, index, *number);
    int rc = sqlite3_step(handle_);
    sqlite3_reset(handle_);
    if (rc != SQLITE_DONE) throw std::runtime_error(sqlite3_errmsg(db_));
  }

 private:
  sqlite3* db_;
  sqlite3_stmt* handle_ = nullptr;
};

const char* const kEffectsTable =
    "CREATE TABLE IF NOT EXISTS effects("
    " id INTEGER PRIMARY KEY, msg_id TEXT NOT NULL, topic TEXT NOT NULL,"
    " broker_offset INTEGER NOT NULL, claim_token TEXT, consumer TEXT)";
const char* const kInsertEffect =
    "INSERT INTO effects(msg_id, topic, claim_token, consumer, broker_offset)"
    " VALUES (?1, ?2, ?3, ?4, ?5)";

struct Counts {
  long applied = 0, redelivered = 0, failures = 0;
};

// Applies each message once: the side effect and the record in one SQLite
// transaction (outbox::Inbox), or with the record in Redis (below).
class Applier {
 public:
  virtual ~Applier() = default;
  // False when the message cannot be settled now (the page must come again).
  virtual bool apply(const std::string& topic, const wire::StoredMessage& message,
                     Counts& counts) = 0;
  // Called after the page's offset was committed.
  virtual void page_committed() {}
};

class SqliteApplier : public Applier {
 public:
  explicit SqliteApplier(const std::string& db_path)
      : inbox_(outbox::Inbox::open(db_path)), insert_(with_effects(inbox_.db()), kInsertEffect) {}

  bool apply(const std::string& topic, const wire::StoredMessage& message,
             Counts& counts) override {
    auto result = inbox_.process_once(message.msg_id, [&](sqlite3*) {
      insert_.run({message.msg_id, topic, "", ""}, static_cast<std::int64_t>(message.offset));
    });
    ++(result == outbox::ProcessResult::processed ? counts.applied : counts.redelivered);
    return true;
  }

 private:
  static sqlite3* with_effects(sqlite3* db) {
    exec(db, kEffectsTable);
    return db;
  }
  outbox::Inbox inbox_;
  Statement insert_;
};

#ifdef FAULTS_WITH_REDIS_INBOX
// The dedup records in Redis, shared with the other consumers; the side
// effect is a row in a database shared by all of them.
class RedisApplier : public Applier {
 public:
  RedisApplier(const std::string& db_path, outbox::RedisInboxOptions options, double self_kill_rate,
               std::uint64_t seed)
      : db_(open(db_path)),
        insert_(db_, kInsertEffect),
        outcome_(db_,
                 "INSERT INTO claim_outcomes(msg_id, claim_token, outcome) VALUES (?1, ?2, ?3)"),
        inbox_(connect(std::move(options))),
        self_kill_rate_(self_kill_rate),
        random_(seed ^ (static_cast<std::uint64_t>(::getpid()) << 20)),
        name_("consumer-" + std::to_string(::getpid())) {}
  // The statements (members, destroyed after this body) are still open here:
  // sqlite3_close would refuse with SQLITE_BUSY and leave the connection open for
  // good, sqlite3_close_v2 closes it once they are finalized.
  ~RedisApplier() override { sqlite3_close_v2(db_); }
  RedisApplier(const RedisApplier&) = delete;
  RedisApplier& operator=(const RedisApplier&) = delete;

  bool apply(const std::string& topic, const wire::StoredMessage& message,
             Counts& counts) override {
    const auto lease = inbox_.options().process_lease;
    auto claim = inbox_.begin(message.msg_id, lease);
    // Another consumer holds a live claim: its outcome decides (it completes,
    // or it died and its lease passes and this one takes over). Moving the
    // offset past the message before then could lose it.
    while (claim.result == outbox::BeginResult::in_progress_elsewhere && !stop_requested.load()) {
      std::this_thread::sleep_for(20ms);  // retry backoff, not synchronisation
      claim = inbox_.begin(message.msg_id, lease);
    }
    if (claim.result == outbox::BeginResult::in_progress_elsewhere) return false;
    if (claim.result == outbox::BeginResult::already_done) {
      ++counts.redelivered;
      return true;
    }
    maybe_kill_myself("after begin, before the side effect", message.msg_id);
    insert_.run({message.msg_id, topic, claim.token, name_},
                static_cast<std::int64_t>(message.offset));
    maybe_kill_myself("between the side effect and complete", message.msg_id);
    outbox::ClaimResult completed;
    try {
      completed = inbox_.complete(message.msg_id, claim.token);
    } catch (const outbox::RedisError& error) {
      // Unknown whether the record says completed: the next delivery decides.
      outcome_.run({message.msg_id, claim.token, std::string("error: ") + error.what()});
      throw;
    }
    if (completed == outbox::ClaimResult::claim_lost) {
      // The lease passed first and another consumer took the claim over: it
      // makes the side effect again (at least once).
      outcome_.run({message.msg_id, claim.token, "claim_lost"});
    }
    ++counts.applied;
    completed_in_page_ = true;
    return true;
  }

  void page_committed() override { completed_in_page_ = false; }

  // Before the offset is committed: the page comes again, and the records
  // answer already_done.
  void before_commit() {
    // Once per page rather than per message: as often as the other two windows.
    if (completed_in_page_) maybe_kill_myself("after complete, before the offset commit", "", 50);
  }

 private:
  // Redis restarts under the suite too: a consumer started meanwhile waits
  // for it (up to 30 s) instead of failing.
  static outbox::RedisInbox connect(outbox::RedisInboxOptions options) {
    auto deadline = std::chrono::steady_clock::now() + 30s;
    for (;;) {
      try {
        return outbox::RedisInbox::connect(options);
      } catch (const outbox::RedisError&) {
        if (std::chrono::steady_clock::now() >= deadline) throw;
      }
      std::this_thread::sleep_for(50ms);  // retry backoff
    }
  }

  static sqlite3* open(const std::string& path) {
    sqlite3* db = nullptr;
    if (sqlite3_open(path.c_str(), &db) != SQLITE_OK) {
      std::string text = db ? sqlite3_errmsg(db) : "out of memory";
      sqlite3_close(db);
      throw std::runtime_error("cannot open " + path + ": " + text);
    }
    sqlite3_busy_timeout(db, 10000);
    try {
      exec(db, "PRAGMA journal_mode = WAL");
      // A killed process loses nothing committed with NORMAL in WAL mode; only
      // a power cut could, which this suite does not inject.
      exec(db, "PRAGMA synchronous = NORMAL");
      exec(db, kEffectsTable);
      exec(db,
           "CREATE TABLE IF NOT EXISTS claim_outcomes("
           " msg_id TEXT NOT NULL, claim_token TEXT NOT NULL, outcome TEXT NOT NULL)");
    } catch (...) {
      sqlite3_close(db);
      throw;
    }
    return db;
  }

  void maybe_kill_myself(const char* where, const std::string& msg_id, double scale = 1) {
    if (self_kill_rate_ <= 0 ||
        std::uniform_real_distribution<double>(0, 1)(random_) >= self_kill_rate_ * scale) {
      return;
    }
    std::fprintf(stderr, "faults_consumer: kill -9 of itself %s%s%s\n", where,
                 msg_id.empty() ? "" : " of ", msg_id.c_str());
    std::fflush(stderr);
    ::kill(::getpid(), SIGKILL);
  }

  sqlite3* db_;
  Statement insert_, outcome_;
  outbox::RedisInbox inbox_;
  double self_kill_rate_;
  std::mt19937_64 random_;
  std::string name_;
  bool completed_in_page_ = false;
};
#endif

}  // namespace

int main(int argc, char** argv) {
  auto flags = faults::Flags::parse(argc, argv, "faults_consumer",
                                    {"--broker", "--db", "--group", "--topic", "--inbox",
                                     "--lease-ms", "--self-kill-rate", "--seed"});
  if (!flags) return 2;
  const std::string endpoint = flags->text("--broker"), db_path = flags->text("--db"),
                    group = flags->text("--group", "faults"),
                    inbox = flags->text("--inbox", "sqlite");
  const auto topics = flags->all("--topic");
  const long lease_ms = static_cast<long>(flags->number("--lease-ms", 1000));
  const double self_kill_rate = flags->number("--self-kill-rate", 0);
  const auto seed = std::stoull(flags->text("--seed", "1"));
  if (endpoint.empty() || db_path.empty() || topics.empty()) {
    std::fprintf(stderr,
                 "usage: faults_consumer --broker E --db DB --group G --topic T ... "
                 "[--inbox sqlite|redis://HOST:PORT] [--lease-ms 1000] [--self-kill-rate 0] "
                 "[--seed N]\n");
    return 2;
  }
  std::signal(SIGTERM, on_stop_signal);
  std::signal(SIGINT, on_stop_signal);

  Counts counts;
  try {
    std::unique_ptr<Applier> applier;
#ifdef FAULTS_WITH_REDIS_INBOX
    RedisApplier* redis = nullptr;
#endif
    if (inbox == "sqlite") {
      applier = std::make_unique<SqliteApplier>(db_path);
    } else {
#ifdef FAULTS_WITH_REDIS_INBOX
      outbox::RedisInboxOptions options;
      options.endpoint = inbox;
      options.process_lease = std::chrono::milliseconds(lease_ms);
      auto made = std::make_unique<RedisApplier>(db_path, options, self_kill_rate, seed);
      redis = made.get();
      applier = std::move(made);
#else
      (void)lease_ms, (void)self_kill_rate, (void)seed;
      std::fprintf(stderr, "faults_consumer: built without the Redis inbox\n");
      return 2;
#endif
    }
    broker::Client client(endpoint);
    auto trouble = [&](const std::string& what) {
      // The broker (or Redis) restarts under us: start a fresh connection and go on.
      ++counts.failures;
      std::fprintf(stderr, "faults_consumer: %s; reconnecting\n", what.c_str());
      client.reconnect();
      std::this_thread::sleep_for(20ms);  // backoff before the next attempt
    };
    while (!stop_requested.load()) {
      for (const auto& topic : topics) {
        if (stop_requested.load()) break;
        wire::Fetch request;
        request.topic = topic;
        request.group = group;
        request.use_group_offset = true;
        request.max_messages = 200;
        request.wait_ms = 50;
        auto page = client.fetch(request, 2s);
        if (!page) {
          trouble(page.error().message);
          continue;
        }
        if (page->messages.empty()) continue;
        bool settled = true;
        for (const auto& message : page->messages) {
#ifdef FAULTS_WITH_REDIS_INBOX
          try {
            settled = applier->apply(topic, message, counts);
          } catch (const outbox::RedisError& error) {
            trouble(error.what());
            settled = false;
          }
#else
          settled = applier->apply(topic, message, counts);
#endif
          if (!settled) break;
        }
        if (!settled) continue;  // the page comes again from the committed offset
#ifdef FAULTS_WITH_REDIS_INBOX
        if (redis != nullptr) redis->before_commit();
#endif
        auto committed = client.commit_offset(topic, group, page->messages.back().offset, 2s);
        if (!committed) {
          trouble(committed.error().message);
          continue;
        }
        applier->page_committed();
      }
    }
  } catch (const std::exception& error) {
    std::fprintf(stderr, "faults_consumer: %s\n", error.what());
    return 1;
  }
  std::printf("applied %ld redelivered %ld failures %ld\n", counts.applied, counts.redelivered,
              counts.failures);
  return 0;
}
