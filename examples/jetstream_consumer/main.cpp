// jetstream_consumer: applies the messages outbox-relay forwarded into a NATS
// JetStream stream (`outbox-relay run --sink jetstream`), each exactly once.
//
//   jetstream_consumer create-stream --stream OUTBOX --subjects 'outbox.>' --replicas 1
//   jetstream_consumer run --stream OUTBOX --durable shipping --db shipping.db
//
// `run` reads the stream through a durable pull consumer. JetStream delivers at
// least once: a message whose acknowledgement did not reach the server (the
// consumer died after applying it, the connection broke) comes again once the
// consumer's ack wait has passed, with the same `Nats-Msg-Id` header, which the
// relay sets to the outbox msg_id. Inbox::process_once records that msg_id and
// applies the message (a row in `effects`, where a real service would ship,
// book or update) in one transaction of the consumer's own database; only after
// that transaction committed is the message acknowledged. So a redelivery is
// recognised and applies nothing a second time — also when JetStream stored the
// message twice because a producer resent it after the stream's duplicate
// window (docs/jetstream.md, "Two layers of dedup").
//
// Order: with `--max-ack-pending 1` (the default) JetStream hands out the next
// message only after the previous one was acknowledged, so messages are applied
// in stream order, which keeps the per-(topic, key) commit order the relay
// published in, through crashes and redeliveries and with several consumer
// processes sharing one durable (and one inbox database). A larger value is
// faster but lets a later message be applied before the redelivery of an
// earlier one of its key.
//
// Crash points, as in shipping_consumer: --crash-after N kills the process
// (SIGKILL, as kill -9 would) right after the N-th message of this run was
// applied, before its acknowledgement; --crash-before N right before applying
// the N-th. SIGINT/SIGTERM finish the message in hand and exit 0.
//
// --inbox redis://127.0.0.1:6379 keeps the dedup records in Redis
// (outbox::RedisInbox) instead of the consumer's database, as shipping_consumer
// does, so that consumers on different machines share them. The effect row is
// then written outside the inbox (as a call to another service would be):
// claimed, applied, the record completed, and only then acknowledged. A Redis
// failure means nothing is known about the message: it is not acknowledged and
// comes again. A consumer killed between its side effect and completing the
// record applies that message again once the claim's lease has passed: at
// least once, made idempotent by the record.
#include <sqlite3.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <nats/nats.h>
#include <CLI/CLI.hpp>
#include <outbox/inbox.hpp>
#ifdef JETSTREAM_WITH_REDIS_INBOX
#include <outbox/redis_inbox.hpp>
#endif

#include "fetch.hpp"

namespace {

using namespace std::chrono_literals;

std::atomic<bool> stop_requested{false};

extern "C" void request_stop(int) {
  stop_requested.store(true);
}

// Exit codes, as the toolkit's daemons use them.
constexpr int kExitBadFlag = 2;
constexpr int kExitDatabase = 3;
constexpr int kExitNotFound = 7;

struct Settings {
  std::string nats_url = "nats://127.0.0.1:4222";
  std::string stream = "OUTBOX";
  // create-stream
  std::vector<std::string> subjects{"outbox.>"};
  int replicas = 1;
  double duplicate_window = 120;  // seconds
  // run
  std::string durable = "shipping";
  std::string filter_subject = "outbox.>";
  std::string db = "shipping.db";
  std::string inbox = "sqlite";  // or a Redis endpoint: redis://host:port, unix:///path
  double lease = 30;             // seconds: the Redis inbox's claim lease
  double ack_wait = 30;          // seconds
  int max_ack_pending = 1;
  int batch = 1;
  double stop_after_idle = 0;  // seconds without a message; 0: never
  long expect = -1;            // stop when the database holds this many effects
  long crash_after = -1;
  long crash_before = -1;
  bool json = false;
};

// A failure the program reports on one line and exits with `code`.
struct Failure : std::runtime_error {
  Failure(int exit_code, const std::string& what) : std::runtime_error(what), code(exit_code) {}
  int code;
};

std::string nats_error(natsStatus status, jsErrCode code = static_cast<jsErrCode>(0)) {
  natsStatus last = NATS_OK;
  const char* detail = nats_GetLastError(&last);
  std::string text = natsStatus_GetText(status);
  if (detail != nullptr && *detail != '\0') text += std::string(": ") + detail;
  if (code != 0) text += " (JetStream error " + std::to_string(static_cast<int>(code)) + ")";
  return text;
}

std::int64_t nanoseconds(double seconds) {
  return static_cast<std::int64_t>(seconds * 1e9);
}

// One NATS connection with a JetStream context. libnats reconnects by itself
// (forever, every 200 ms): a consumer only reads, so unlike the relay it has no
// order of publishes to protect, and its pull subscription carries on.
class JetStream {
 public:
  // Retries until the server answers or a stop is requested (then throws).
  // `url` is one URL or several comma-separated (the nodes of a cluster):
  // libnats tries them in turn, when connecting and when reconnecting.
  explicit JetStream(const std::string& url) {
    natsOptions* options = nullptr;
    if (natsOptions_Create(&options) != NATS_OK) throw std::bad_alloc();
    std::unique_ptr<natsOptions, void (*)(natsOptions*)> guard(options, natsOptions_Destroy);
    std::vector<std::string> urls;
    for (std::size_t start = 0; start <= url.size();) {
      auto end = url.find(',', start);
      if (end == std::string::npos) end = url.size();
      urls.push_back(url.substr(start, end - start));
      start = end + 1;
    }
    std::vector<const char*> servers;
    servers.reserve(urls.size());
    for (const auto& one : urls) servers.push_back(one.c_str());
    if (natsOptions_SetServers(options, servers.data(), static_cast<int>(servers.size())) !=
        NATS_OK) {
      throw Failure(kExitBadFlag, "--nats-url " + url + ": " + nats_error(NATS_INVALID_ARG));
    }
    natsOptions_SetMaxReconnect(options, -1);
    natsOptions_SetReconnectWait(options, 200);
    natsOptions_SetTimeout(options, 2000);
    bool reported = false;
    for (;;) {
      const natsStatus status = natsConnection_Connect(&connection_, options);
      if (status == NATS_OK) break;
      if (!reported) {
        std::fprintf(stderr, "jetstream_consumer: cannot connect to %s (%s); retrying\n",
                     url.c_str(), natsStatus_GetText(status));
        reported = true;
      }
      if (stop_requested.load()) throw Failure(0, "stopped before connecting");
      std::this_thread::sleep_for(200ms);  // retry backoff
    }
    jsOptions js_options;
    jsOptions_Init(&js_options);
    js_options.Wait = 5000;
    const natsStatus status = natsConnection_JetStream(&js_, connection_, &js_options);
    if (status != NATS_OK) throw std::runtime_error("JetStream context: " + nats_error(status));
  }
  ~JetStream() noexcept {
    if (js_ != nullptr) jsCtx_Destroy(js_);
    if (connection_ != nullptr) natsConnection_Destroy(connection_);
  }
  JetStream(const JetStream&) = delete;
  JetStream& operator=(const JetStream&) = delete;

  jsCtx* context() const { return js_; }

 private:
  natsConnection* connection_ = nullptr;
  jsCtx* js_ = nullptr;
};

// --- create-stream -----------------------------------------------------------

int create_stream(const Settings& settings) {
  JetStream nats(settings.nats_url);
  std::vector<const char*> subjects;
  for (const auto& subject : settings.subjects) subjects.push_back(subject.c_str());
  jsStreamConfig config;
  jsStreamConfig_Init(&config);
  config.Name = settings.stream.c_str();
  config.Subjects = subjects.data();
  config.SubjectsLen = static_cast<int>(subjects.size());
  config.Storage = js_FileStorage;
  config.Replicas = settings.replicas;
  config.Duplicates = nanoseconds(settings.duplicate_window);
  jsStreamInfo* info = nullptr;
  jsErrCode code = static_cast<jsErrCode>(0);
  // Idempotent: the same configuration again is accepted; another one is refused.
  const natsStatus status = js_AddStream(&info, nats.context(), &config, nullptr, &code);
  if (info != nullptr) jsStreamInfo_Destroy(info);
  if (status != NATS_OK) {
    throw Failure(kExitBadFlag,
                  "cannot create stream " + settings.stream + ": " + nats_error(status, code));
  }
  std::printf("stream %s: %zu subject(s), %d replica(s), duplicate window %.0f s\n",
              settings.stream.c_str(), subjects.size(), settings.replicas,
              settings.duplicate_window);
  return 0;
}

// --- run ---------------------------------------------------------------------

// The side effect: a row in `effects`, written on the inbox's connection inside
// process_once's transaction. No UNIQUE constraint on msg_id, on purpose: that
// the inbox alone prevents a second row is what this example shows.
class Effects {
 public:
  explicit Effects(sqlite3* db) : db_(db) {
    if (sqlite3_exec(db,
                     "CREATE TABLE IF NOT EXISTS effects("
                     "  id              INTEGER PRIMARY KEY,"
                     "  msg_id          TEXT    NOT NULL,"
                     "  subject         TEXT    NOT NULL,"
                     "  stream_sequence INTEGER NOT NULL,"
                     "  payload_bytes   INTEGER NOT NULL)",
                     nullptr, nullptr, nullptr) != SQLITE_OK ||
        sqlite3_prepare_v2(db,
                           "INSERT INTO effects(msg_id, subject, stream_sequence, payload_bytes) "
                           "VALUES (?1, ?2, ?3, ?4)",
                           -1, &insert_, nullptr) != SQLITE_OK ||
        sqlite3_prepare_v2(db, "SELECT count(*) FROM effects", -1, &count_, nullptr) != SQLITE_OK) {
      throw Failure(kExitDatabase, std::string("effects table: ") + sqlite3_errmsg(db));
    }
  }
  ~Effects() noexcept {
    sqlite3_finalize(insert_);
    sqlite3_finalize(count_);
  }
  Effects(const Effects&) = delete;
  Effects& operator=(const Effects&) = delete;

  void apply(sqlite3* db, const std::string& msg_id, natsMsg* message, std::uint64_t sequence) {
    sqlite3_bind_text(insert_, 1, msg_id.c_str(), -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(insert_, 2, natsMsg_GetSubject(message), -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(insert_, 3, static_cast<sqlite3_int64>(sequence));
    sqlite3_bind_int64(insert_, 4, natsMsg_GetDataLength(message));
    const int rc = sqlite3_step(insert_);
    sqlite3_reset(insert_);
    if (rc != SQLITE_DONE) throw std::runtime_error(std::string("insert: ") + sqlite3_errmsg(db));
  }

  long count() {
    long total = -1;
    if (sqlite3_step(count_) == SQLITE_ROW)
      total = static_cast<long>(sqlite3_column_int64(count_, 0));
    sqlite3_reset(count_);
    if (total < 0) throw std::runtime_error(std::string("count effects: ") + sqlite3_errmsg(db_));
    return total;
  }

 private:
  sqlite3* db_;
  sqlite3_stmt* insert_ = nullptr;
  sqlite3_stmt* count_ = nullptr;
};

// The durable pull consumer, created when missing, then bound by name: the
// program never deletes it. nats-server updates an existing durable to the
// settings given here (ack wait, max ack pending, filter subject) where it can.
// JetStream's refusals (no such stream, other settings) end the program; no
// answer (a server starting or restarting) is retried until a stop.
natsSubscription* bind_durable(jsCtx* js, const Settings& settings) {
  jsConsumerConfig config;
  jsConsumerConfig_Init(&config);
  config.Durable = settings.durable.c_str();
  config.FilterSubject = settings.filter_subject.c_str();
  config.DeliverPolicy = js_DeliverAll;
  config.AckPolicy = js_AckExplicit;
  config.AckWait = nanoseconds(settings.ack_wait);
  config.MaxAckPending = settings.max_ack_pending;
  config.MaxDeliver = -1;  // redeliver until applied: the inbox makes repeats harmless
  jsSubOptions options;
  jsSubOptions_Init(&options);
  options.Stream = settings.stream.c_str();
  options.Consumer = settings.durable.c_str();
  bool reported = false;
  for (;;) {
    jsConsumerInfo* info = nullptr;
    jsErrCode code = static_cast<jsErrCode>(0);
    natsStatus status = js_AddConsumer(&info, js, settings.stream.c_str(), &config, nullptr, &code);
    if (info != nullptr) jsConsumerInfo_Destroy(info);
    natsSubscription* subscription = nullptr;
    if (status == NATS_OK) {
      status = js_PullSubscribe(&subscription, js, settings.filter_subject.c_str(),
                                settings.durable.c_str(), nullptr, &options, &code);
      if (status == NATS_OK) return subscription;
    }
    if (code == JSStreamNotFoundErr) {
      throw Failure(kExitNotFound, "stream " + settings.stream + " does not exist");
    }
    if (code != 0) {
      throw Failure(
          kExitBadFlag,
          "cannot use durable consumer " + settings.durable + " on stream " + settings.stream +
              " (an existing one with other settings is not changed): " + nats_error(status, code));
    }
    if (!reported) {
      std::fprintf(stderr, "jetstream_consumer: no answer from JetStream (%s); retrying\n",
                   nats_error(status).c_str());
      reported = true;
    }
    if (stop_requested.load()) throw Failure(0, "stopped before binding");
    std::this_thread::sleep_for(200ms);  // retry backoff
  }
}

// Applies one message once, through the inbox the flags chose.
class Dedup {
 public:
  explicit Dedup(const Settings& settings) : inbox_(outbox::Inbox::open(settings.db)) {
    if (settings.inbox == "sqlite") return;
#ifdef JETSTREAM_WITH_REDIS_INBOX
    outbox::RedisInboxOptions options;
    options.endpoint = settings.inbox;
    options.process_lease = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::duration<double>(settings.lease));
    try {
      redis_.emplace(outbox::RedisInbox::connect(options));
    } catch (const outbox::RedisError& error) {
      throw Failure(1, error.what());  // Redis unreachable: a runtime failure, not a bad flag
    } catch (const outbox::Error& error) {
      throw Failure(kExitBadFlag, std::string("--inbox: ") + error.what());
    }
#else
    throw Failure(kExitBadFlag, "--inbox " + settings.inbox +
                                    ": this build has no Redis inbox (hiredis was not found)");
#endif
  }

  // The consumer's database: effects (and, with the SQLite inbox, the records).
  sqlite3* db() const {
    return inbox_.db();
  }

  // No value when Redis did not answer (reported on one line): nothing is
  // known about the message then, not even whether `apply` ran.
  std::optional<outbox::ProcessResult> process_once(const std::string& msg_id,
                                                    const std::function<void(sqlite3*)>& apply) {
#ifdef JETSTREAM_WITH_REDIS_INBOX
    if (redis_) {
      try {
        return redis_->process_once(msg_id, [&] { apply(db()); });
      } catch (const outbox::RedisError& error) {
        std::fprintf(stderr, "jetstream_consumer: %s; msg_id %s not acknowledged, it comes again\n",
                     error.what(), msg_id.c_str());
        std::this_thread::sleep_for(200ms);  // retry backoff
        return std::nullopt;
      }
    }
#endif
    return inbox_.process_once(msg_id, apply);
  }

 private:
  outbox::Inbox inbox_;
#ifdef JETSTREAM_WITH_REDIS_INBOX
  std::optional<outbox::RedisInbox> redis_;
#endif
};

struct Counts {
  long applied = 0;  // messages applied by this run
  long skipped = 0;  // redeliveries and second copies the inbox recognised
  long refused = 0;  // messages without a msg_id: terminated, not applied
};

[[noreturn]] void crash(const char* where, long count) {
  std::fprintf(stderr,
               "jetstream_consumer: crash point: kill -9 of itself %s message %ld of this run\n",
               where, count);
  std::fflush(stderr);
  std::raise(SIGKILL);
  std::abort();  // not reached
}

void print_summary(const Settings& settings, const Counts& counts, long total) {
  if (settings.json) {
    std::printf("{\"applied\":%ld,\"skipped\":%ld,\"refused\":%ld,\"effects_in_db\":%ld}\n",
                counts.applied, counts.skipped, counts.refused, total);
  } else {
    std::printf(
        "applied %ld messages, skipped %ld already applied (redelivered or stored twice), "
        "refused %ld; %ld effects in %s\n",
        counts.applied, counts.skipped, counts.refused, total, settings.db.c_str());
  }
  std::fflush(stdout);
}

// One message: applied once through the inbox, acknowledged after the commit.
void handle(natsMsg* message, Dedup& inbox, Effects& effects, const Settings& settings,
            Counts& counts) {
  jsMsgMetaData* meta = nullptr;
  std::uint64_t sequence = 0;
  if (natsMsg_GetMetaData(&meta, message) == NATS_OK) {
    sequence = meta->Sequence.Stream;
    jsMsgMetaData_Destroy(meta);
  }
  const char* id = nullptr;
  if (natsMsgHeader_Get(message, "Nats-Msg-Id", &id) != NATS_OK || id == nullptr || *id == '\0') {
    // Not from the relay (or from a publisher that sets no id): nothing to
    // deduplicate by. Terminate it so that it is not redelivered forever.
    ++counts.refused;
    std::fprintf(stderr,
                 "jetstream_consumer: stream sequence %llu on %s has no Nats-Msg-Id header; "
                 "terminated, not applied\n",
                 static_cast<unsigned long long>(sequence), natsMsg_GetSubject(message));
    natsMsg_Term(message, nullptr);
    return;
  }
  const std::string msg_id = id;
  if (counts.applied + 1 == settings.crash_before) crash("before applying", counts.applied + 1);
  const auto result = inbox.process_once(
      msg_id, [&](sqlite3* db) { effects.apply(db, msg_id, message, sequence); });
  // Redis away (nothing known), or a claim elsewhere holds it: no ack.
  // JetStream redelivers it after the ack wait, by when the inbox can tell
  // (the claim completed, or its lease passed and this one applies it).
  if (!result || *result == outbox::ProcessResult::in_progress) return;
  if (*result == outbox::ProcessResult::processed ||
      *result == outbox::ProcessResult::claim_lost) {  // applied, late: the other may too
    ++counts.applied;
    if (counts.applied == settings.crash_after) crash("after applying", counts.applied);
  } else {
    ++counts.skipped;
  }
  // Only now: a crash before this line means a redelivery, which the inbox
  // recognises. A lost ack means the same.
  natsMsg_Ack(message, nullptr);
}

int run(const Settings& settings) {
  Dedup inbox(settings);
  Effects effects(inbox.db());
  JetStream nats(settings.nats_url);
  std::unique_ptr<natsSubscription, void (*)(natsSubscription*)> subscription(
      bind_durable(nats.context(), settings), natsSubscription_Destroy);
  std::fprintf(stderr, "jetstream_consumer: durable %s on stream %s (%s), max ack pending %d\n",
               settings.durable.c_str(), settings.stream.c_str(), settings.filter_subject.c_str(),
               settings.max_ack_pending);
  if (jetstream_consumer::safe_fetch_batch(settings.batch) != settings.batch) {
    std::fprintf(stderr,
                 "jetstream_consumer: --batch %d: libnats %s overflows a heap buffer in fetches of "
                 "more than one message (fixed in 3.9.0, fetch.hpp); fetching one at a time\n",
                 settings.batch, nats_GetVersion());
  }

  Counts counts;
  auto last_message_at = std::chrono::steady_clock::now();
  bool trouble = false;
  while (!stop_requested.load()) {
    if (settings.expect >= 0 && effects.count() >= settings.expect) break;
    if (settings.stop_after_idle > 0 &&
        std::chrono::steady_clock::now() - last_message_at >
            std::chrono::duration<double>(settings.stop_after_idle)) {
      break;
    }
    natsMsgList list{nullptr, 0};
    jsErrCode code = static_cast<jsErrCode>(0);
    // Waits up to 500 ms for the first message, so that a stop is noticed.
    const natsStatus status =
        jetstream_consumer::fetch_messages(&list, subscription.get(), settings.batch, 500, &code);
    if (status == NATS_TIMEOUT) continue;
    if (status != NATS_OK) {
      // Server restarting, connection lost (libnats reconnects): try again.
      if (!trouble) {
        std::fprintf(stderr, "jetstream_consumer: fetch failed (%s); retrying\n",
                     nats_error(status, code).c_str());
        trouble = true;
      }
      natsMsgList_Destroy(&list);
      std::this_thread::sleep_for(100ms);  // retry backoff
      continue;
    }
    if (trouble) {
      std::fprintf(stderr, "jetstream_consumer: fetching again\n");
      trouble = false;
    }
    last_message_at = std::chrono::steady_clock::now();
    try {
      for (int i = 0; i < list.Count; ++i) handle(list.Msgs[i], inbox, effects, settings, counts);
    } catch (...) {
      natsMsgList_Destroy(&list);
      throw;
    }
    natsMsgList_Destroy(&list);
  }
  print_summary(settings, counts, effects.count());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Settings settings;
  CLI::App app{"jetstream_consumer: applies each message of a JetStream stream exactly once"};
  app.require_subcommand(1);
  app.add_option("--nats-url", settings.nats_url,
                 "The NATS server, or a cluster's nodes comma-separated")
      ->capture_default_str();
  app.add_option("--stream", settings.stream, "The JetStream stream")->capture_default_str();

  auto* create = app.add_subcommand("create-stream", "Create the stream the relay publishes to");
  create->add_option("--subjects", settings.subjects, "Subjects the stream covers")
      ->capture_default_str();
  create->add_option("--replicas", settings.replicas, "Copies of each message (3 in a cluster)")
      ->capture_default_str()
      ->check(CLI::Range(1, 5));
  create
      ->add_option("--dupe-window", settings.duplicate_window,
                   "Seconds JetStream remembers a Nats-Msg-Id (longer than the relay's retry "
                   "horizon)")
      ->capture_default_str()
      ->check(CLI::Range(0.001, 365.0 * 86400));

  auto* consume = app.add_subcommand("run", "Apply the stream's messages through the inbox");
  consume->add_option("--durable", settings.durable, "Durable consumer name (created if missing)")
      ->capture_default_str();
  consume->add_option("--filter-subject", settings.filter_subject, "Subjects to read")
      ->capture_default_str();
  consume->add_option("--db", settings.db, "SQLite database of the consumer (inbox and effects)")
      ->capture_default_str();
  consume
      ->add_option("--inbox", settings.inbox,
                   "Where the dedup records live: 'sqlite' (the --db database, in the effect's "
                   "transaction) or a Redis endpoint, redis://host:port or unix:///path")
      ->capture_default_str();
  consume
      ->add_option("--lease", settings.lease,
                   "Seconds a Redis inbox claim lasts before another consumer may take it over")
      ->capture_default_str()
      ->check(CLI::Range(0.001, 86400.0));
  consume
      ->add_option("--ack-wait", settings.ack_wait,
                   "Seconds before JetStream redelivers an unacknowledged message")
      ->capture_default_str()
      ->check(CLI::Range(0.1, 86400.0));
  consume
      ->add_option("--max-ack-pending", settings.max_ack_pending,
                   "Unacknowledged messages at a time; 1 keeps stream order through crashes")
      ->capture_default_str()
      ->check(CLI::Range(1, 100'000));
  consume
      ->add_option("--batch", settings.batch,
                   "Messages per fetch (1 with libnats before 3.9.0, whose fetch of more "
                   "overflows a heap buffer: fetch.hpp)")
      ->capture_default_str()
      ->check(CLI::Range(1, 10'000));
  consume
      ->add_option("--stop-after-idle", settings.stop_after_idle,
                   "Exit after this many seconds without a message (0: never)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  consume
      ->add_option("--expect", settings.expect,
                   "Exit once the database holds this many effects (from all runs)")
      ->check(CLI::NonNegativeNumber);
  consume
      ->add_option("--crash-after", settings.crash_after,
                   "Die (SIGKILL) right after applying this many messages, before the ack")
      ->check(CLI::PositiveNumber);
  consume
      ->add_option("--crash-before", settings.crash_before,
                   "Die (SIGKILL) right before applying the N-th message of this run")
      ->check(CLI::PositiveNumber);
  consume->add_flag("--json", settings.json, "Print the summary as one JSON object");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    return app.exit(error) == 0 ? 0 : kExitBadFlag;
  }

  std::signal(SIGINT, request_stop);
  std::signal(SIGTERM, request_stop);
  int code = 0;
  try {
    code = create->parsed() ? create_stream(settings) : run(settings);
  } catch (const Failure& failure) {
    if (failure.code != 0) std::fprintf(stderr, "jetstream_consumer: %s\n", failure.what());
    code = failure.code;
  } catch (const outbox::Error& error) {
    std::fprintf(stderr, "jetstream_consumer: %s: %s\n", settings.db.c_str(), error.what());
    code = kExitDatabase;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "jetstream_consumer: %s\n", error.what());
    code = 1;
  }
  nats_Close();
  return code;
}
