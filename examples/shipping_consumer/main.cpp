// shipping_consumer: ships the orders announced by order_service. Reads
// `order.created` from outbox-broker as a consumer group, ships each order
// through outbox::Inbox, and commits the group's offset after the batch.
//
//   shipping_consumer --broker tcp://127.0.0.1:7750 --db shipping.db --group shipping
//
// The broker delivers at least once: a consumer that stops after shipping but
// before its offset is committed gets the same messages (same msg_id) again.
// Inbox::process_once records the msg_id and runs the shipment in one
// transaction of the consumer's own database, so a redelivered message is
// recognised and ships nothing a second time.
//
// --crash-after N aborts right after the N-th shipment of this run, before
// its offset is committed: the next run receives those messages again and the
// inbox skips them.
//
// --inbox redis://127.0.0.1:6379 keeps the dedup records in Redis
// (outbox::RedisInbox) instead of the consumer's database, so that several
// consumers on different machines share them. The shipment row is then written
// outside the inbox (as a call to a shipping API would be): shipped, then the
// record completed. A consumer killed in between ships that order again once
// its claim's lease has passed: at least once, made idempotent by the record.
#include <sqlite3.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>

#include <CLI/CLI.hpp>
#include <broker/client.hpp>
#include <outbox/inbox.hpp>
#ifdef SHIPPING_WITH_REDIS_INBOX
#include <outbox/redis_inbox.hpp>
#endif

namespace {

using namespace std::chrono_literals;

std::atomic<bool> stop_requested{false};

extern "C" void request_stop(int) {
  stop_requested.store(true);
}

struct Settings {
  std::string broker = "tcp://127.0.0.1:7750";
  std::string group = "shipping";
  std::string topic = "order.created";
  std::string db = "shipping.db";
  std::string inbox = "sqlite";  // or a Redis endpoint: redis://host:port, unix:///path
  double lease = 30;             // seconds: the Redis inbox's claim lease
  std::uint32_t batch = 500;
  std::uint32_t wait_ms = 500;  // long-poll: how long the broker holds an empty FETCH
  double stop_after_idle = 0;   // seconds without a message; 0: never
  long expect = -1;             // stop when the database holds this many shipments
  long crash_after = -1;
  bool json = false;
};

struct Counts {
  long shipped = 0;    // shipments made by this run
  long skipped = 0;    // redeliveries the inbox recognised: nothing shipped
  long malformed = 0;  // messages that are not an order; acknowledged, not shipped
};

// The value of a top-level field in the flat JSON object order_service writes
// ({"order_id":42,"customer":"customer-7",...}). A real service would use a
// JSON library; the example keeps its dependencies to the toolkit.
std::optional<std::string> json_field(std::string_view json, std::string_view name) {
  const std::string pattern = "\"" + std::string(name) + "\":";
  const auto at = json.find(pattern);
  if (at == std::string_view::npos) return std::nullopt;
  auto value = json.substr(at + pattern.size());
  if (!value.empty() && value.front() == '"') {
    const auto end = value.find('"', 1);
    if (end == std::string_view::npos) return std::nullopt;
    return std::string(value.substr(1, end - 1));
  }
  const auto end = value.find_first_of(",}");
  if (end == std::string_view::npos || end == 0) return std::nullopt;
  return std::string(value.substr(0, end));
}

// The side effect: a row in `shipments`, written on the inbox's connection
// inside process_once's transaction. The table deliberately has no UNIQUE
// constraint on order_id: that the inbox alone prevents a second shipment is
// what this example shows (and what `SELECT count(DISTINCT order_id)` checks).
class Shipments {
 public:
  explicit Shipments(sqlite3* db) {
    if (sqlite3_exec(db,
                     "CREATE TABLE IF NOT EXISTS shipments("
                     "  id            INTEGER PRIMARY KEY,"
                     "  order_id      INTEGER NOT NULL,"
                     "  customer      TEXT    NOT NULL,"
                     "  msg_id        TEXT    NOT NULL,"
                     "  broker_offset INTEGER NOT NULL,"
                     "  shipped_at_ms INTEGER NOT NULL)",
                     nullptr, nullptr, nullptr) != SQLITE_OK ||
        sqlite3_prepare_v2(db,
                           "INSERT INTO shipments(order_id, customer, msg_id, broker_offset, "
                           "shipped_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                           -1, &insert_, nullptr) != SQLITE_OK) {
      throw std::runtime_error(std::string("shipments table: ") + sqlite3_errmsg(db));
    }
  }
  ~Shipments() noexcept { sqlite3_finalize(insert_); }
  Shipments(const Shipments&) = delete;
  Shipments& operator=(const Shipments&) = delete;

  // Throws std::invalid_argument when the message is not an order.
  void ship(sqlite3* db, const wire::StoredMessage& message) {
    const auto order_id = json_field(message.payload, "order_id");
    const auto customer = json_field(message.payload, "customer");
    if (!order_id || !customer || order_id->empty() ||
        order_id->find_first_not_of("0123456789") != std::string::npos) {
      throw std::invalid_argument("not an order");
    }
    const auto now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                            std::chrono::system_clock::now().time_since_epoch())
                            .count();
    sqlite3_bind_int64(insert_, 1, std::stoll(*order_id));
    sqlite3_bind_text(insert_, 2, customer->c_str(), -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(insert_, 3, message.msg_id.c_str(), -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(insert_, 4, static_cast<sqlite3_int64>(message.offset));
    sqlite3_bind_int64(insert_, 5, now_ms);
    const int rc = sqlite3_step(insert_);
    sqlite3_reset(insert_);
    if (rc != SQLITE_DONE) {
      throw std::runtime_error(std::string("insert shipment: ") + sqlite3_errmsg(db));
    }
  }

 private:
  sqlite3_stmt* insert_ = nullptr;
};

// A signal (SIGINT, SIGTERM) that arrives while ZeroMQ works makes the call
// fail with EINTR. The loop then checks whether to stop; a fresh connection
// drops whatever the interrupted call left half done.
bool interrupted(const zmq::error_t& error) {
  return error.num() == EINTR;
}

long count_shipments(sqlite3* db) {
  sqlite3_stmt* statement = nullptr;
  long count = -1;
  if (sqlite3_prepare_v2(db, "SELECT count(*) FROM shipments", -1, &statement, nullptr) ==
          SQLITE_OK &&
      sqlite3_step(statement) == SQLITE_ROW) {
    count = static_cast<long>(sqlite3_column_int64(statement, 0));
  }
  sqlite3_finalize(statement);
  if (count < 0) throw std::runtime_error(std::string("count shipments: ") + sqlite3_errmsg(db));
  return count;
}

void print_summary(const Settings& settings, const Counts& counts, long total) {
  if (settings.json) {
    std::printf("{\"shipped\":%ld,\"skipped\":%ld,\"malformed\":%ld,\"shipments_in_db\":%ld}\n",
                counts.shipped, counts.skipped, counts.malformed, total);
  } else {
    std::printf(
        "shipped %ld orders, skipped %ld already shipped (redelivered), %ld malformed; "
        "%ld shipments in %s\n",
        counts.shipped, counts.skipped, counts.malformed, total, settings.db.c_str());
  }
  std::fflush(stdout);
}

// A flag value the program cannot use (exit code 2, like a parse error).
struct BadFlag : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

// Ships one message once, through the inbox the flags chose.
class Dedup {
 public:
  explicit Dedup(const Settings& settings) : inbox_(outbox::Inbox::open(settings.db)) {
    if (settings.inbox == "sqlite") return;
#ifdef SHIPPING_WITH_REDIS_INBOX
    outbox::RedisInboxOptions options;
    options.endpoint = settings.inbox;
    options.process_lease = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::duration<double>(settings.lease));
    try {
      redis_.emplace(outbox::RedisInbox::connect(options));
    } catch (const outbox::RedisError&) {
      throw;  // Redis unreachable: a runtime failure, not a bad flag
    } catch (const outbox::Error& error) {
      throw BadFlag(std::string("--inbox: ") + error.what());
    }
#else
    throw BadFlag("--inbox " + settings.inbox +
                  ": this build has no Redis inbox (hiredis was not found)");
#endif
  }

  // The consumer's database: shipments (and, with the SQLite inbox, the records).
  sqlite3* db() const {
    return inbox_.db();
  }

  outbox::ProcessResult process_once(const wire::StoredMessage& message, Shipments& shipments) {
#ifdef SHIPPING_WITH_REDIS_INBOX
    if (redis_) {
      return redis_->process_once(message.msg_id, [&] { shipments.ship(db(), message); });
    }
#endif
    return inbox_.process_once(message.msg_id, [&](sqlite3* db) { shipments.ship(db, message); });
  }

 private:
  outbox::Inbox inbox_;
#ifdef SHIPPING_WITH_REDIS_INBOX
  std::optional<outbox::RedisInbox> redis_;
#endif
};

int run(const Settings& settings) {
  Dedup inbox(settings);
  Shipments shipments(inbox.db());

  broker::Client client(settings.broker);
  Counts counts;
  auto last_message_at = std::chrono::steady_clock::now();
  bool resumed = false;
  bool broker_trouble = false;

  while (!stop_requested.load()) {
    // Consumers sharing a Redis inbox also share the shipments table: --expect
    // counts what all of them shipped.
    if (settings.expect >= 0 && count_shipments(inbox.db()) >= settings.expect) break;
    if (settings.stop_after_idle > 0 &&
        std::chrono::steady_clock::now() - last_message_at >
            std::chrono::duration<double>(settings.stop_after_idle)) {
      break;
    }

    // Resume where the group's committed offset says, waiting up to wait_ms
    // for the first message when there is none yet.
    wire::Fetch request;
    request.topic = settings.topic;
    request.group = settings.group;
    request.use_group_offset = true;
    request.max_messages = settings.batch;
    request.wait_ms = settings.wait_ms;
    std::optional<wire::Result<wire::Messages>> answer;
    try {
      answer = client.fetch(request, 5s);
    } catch (const zmq::error_t& error) {
      if (!interrupted(error)) throw;
      client.reconnect();
      continue;
    }
    auto& reply = *answer;
    if (!reply) {
      if (!broker_trouble) {
        std::fprintf(stderr, "shipping_consumer: fetch from %s failed (%s); retrying\n",
                     settings.broker.c_str(), reply.error().message.c_str());
        broker_trouble = true;
      }
      // The answer may still arrive later: start afresh on a new connection.
      // A broken connection is reported at once (ErrorCode::disconnected),
      // so pause a little rather than reconnect in a tight loop.
      client.reconnect();
      if (reply.error().code == wire::ErrorCode::disconnected) std::this_thread::sleep_for(100ms);
      continue;
    }
    if (broker_trouble) {
      std::fprintf(stderr, "shipping_consumer: broker reachable again\n");
      broker_trouble = false;
    }
    if (reply->messages.empty()) continue;
    if (!resumed) {
      std::fprintf(stderr, "shipping_consumer: group %s resumes %s at offset %llu\n",
                   settings.group.c_str(), settings.topic.c_str(),
                   static_cast<unsigned long long>(reply->messages.front().offset));
      resumed = true;
    }
    last_message_at = std::chrono::steady_clock::now();

    long unacknowledged = 0;
    bool batch_unfinished = false;  // stopped or the inbox failed: do not commit
    for (const auto& message : reply->messages) {
      ++unacknowledged;
      try {
        auto result = inbox.process_once(message, shipments);
        // Another consumer holds the claim (a shared Redis inbox). Its outcome
        // decides: it completes (already_done), or it dies and its lease passes
        // (this one ships). Moving the offset past it now could lose the order.
        while (result == outbox::ProcessResult::in_progress && !stop_requested.load()) {
          std::this_thread::sleep_for(50ms);  // retry backoff, not synchronisation
          result = inbox.process_once(message, shipments);
        }
        if (result == outbox::ProcessResult::in_progress) {
          batch_unfinished = true;
          break;
        }
        if (result == outbox::ProcessResult::processed ||
            result == outbox::ProcessResult::claim_lost) {  // shipped, late: the other may too
          ++counts.shipped;
          if (counts.shipped == settings.crash_after) {
            std::fprintf(stderr,
                         "shipping_consumer: crashing after %ld shipments; the last %ld messages "
                         "are shipped but their offset is not committed\n",
                         counts.shipped, unacknowledged);
            std::fflush(stderr);
            std::abort();
          }
        } else {
          ++counts.skipped;  // already_done
        }
#ifdef SHIPPING_WITH_REDIS_INBOX
      } catch (const outbox::RedisError& error) {
        // Redis away: nothing is known about this message; the batch comes again.
        std::fprintf(stderr, "shipping_consumer: %s; retrying the batch\n", error.what());
        std::this_thread::sleep_for(200ms);
        batch_unfinished = true;
        break;
#endif
      } catch (const std::logic_error&) {  // std::invalid_argument from ship(), std::stoll
        // Nothing was recorded; a real service would keep it in a dead-letter table.
        ++counts.malformed;
        std::fprintf(stderr, "shipping_consumer: offset %llu (msg_id %s) is not an order\n",
                     static_cast<unsigned long long>(message.offset), message.msg_id.c_str());
      }
    }

    if (batch_unfinished) continue;  // the next FETCH starts at the committed offset again
    // Only now the group moves on. A crash before this line means the batch
    // is delivered again, and the inbox makes that harmless.
    try {
      auto committed =
          client.commit_offset(settings.topic, settings.group, reply->messages.back().offset, 5s);
      if (!committed) {
        std::fprintf(stderr,
                     "shipping_consumer: commit offset failed (%s); the batch will come again\n",
                     committed.error().message.c_str());
        client.reconnect();
      }
    } catch (const zmq::error_t& error) {
      if (!interrupted(error)) throw;
      client.reconnect();  // not committed: the batch comes again, the inbox skips it
    }
  }

  print_summary(settings, counts, count_shipments(inbox.db()));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Settings settings;
  CLI::App app{"shipping_consumer: ships each order from order.created exactly once"};
  app.add_option("--broker", settings.broker, "outbox-broker endpoint")->capture_default_str();
  app.add_option("--group", settings.group, "Consumer group (its offset is kept by the broker)")
      ->capture_default_str();
  app.add_option("--topic", settings.topic, "Topic to read")->capture_default_str();
  app.add_option("--db", settings.db, "SQLite database of the consumer (inbox and shipments)")
      ->capture_default_str();
  app.add_option("--inbox", settings.inbox,
                 "Where the dedup records live: 'sqlite' (the --db database, in the shipment's "
                 "transaction) or a Redis endpoint, redis://host:port or unix:///path")
      ->capture_default_str();
  app.add_option("--lease", settings.lease,
                 "Seconds a Redis inbox claim lasts before another consumer may take it over")
      ->capture_default_str()
      ->check(CLI::Range(0.001, 86400.0));
  app.add_option("--batch", settings.batch, "Messages per FETCH")
      ->capture_default_str()
      ->check(CLI::Range(1u, 100'000u));
  app.add_option("--wait-ms", settings.wait_ms, "Long-poll: how long one FETCH waits for news")
      ->capture_default_str()
      ->check(CLI::Range(0u, 60'000u));
  app.add_option("--stop-after-idle", settings.stop_after_idle,
                 "Exit after this many seconds without a message (0: never)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--expect", settings.expect,
                 "Exit once the database holds this many shipments (from all runs)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--crash-after", settings.crash_after,
                 "Abort right after this many shipments, before committing their offset")
      ->check(CLI::PositiveNumber);
  app.add_flag("--json", settings.json, "Print the summary as one JSON object");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    return app.exit(error) == 0 ? 0 : 2;
  }

  std::signal(SIGINT, request_stop);
  std::signal(SIGTERM, request_stop);
  try {
    return run(settings);
  } catch (const BadFlag& error) {
    std::fprintf(stderr, "shipping_consumer: %s\n", error.what());
    return 2;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "shipping_consumer: %s\n", error.what());
    return 1;
  }
}
