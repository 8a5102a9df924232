// Reading back what a run left: the outbox databases and the consumer's
// (SQLite, read only), the broker's topics, the JetStream stream
// (--sink jetstream) and the Redis inbox's records (--inbox redis).
#pragma once

#include <sqlite3.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#ifdef OUTBOX_FAULTS_REDIS_SERVER
#include <hiredis/hiredis.h>
#endif

#ifdef OUTBOX_RELAY_WITH_JETSTREAM
#include <nats/nats.h>

#include "relay/jetstream_sink.hpp"
#endif

#include "faults_common.hpp"
#include "outbox/error.hpp"
#include "sqlite/sqlite.hpp"

namespace faults {

// Called while one of the harness's own SQLite calls waits for a lock: the
// run resumes there the processes whose pause is over, since a paused process
// may be the one holding that lock, and the harness resumes them nowhere else
// while it waits.
inline std::function<void()>& read_retry_hook() {
  static std::function<void()> hook;
  return hook;
}

// The harness's busy handler on `db`: waits up to 30 s for a lock (SQLITE_BUSY)
// in 1 ms steps, running read_retry_hook() at each.
inline void wait_for_locks_resuming_paused(sqlite3* db) {
  sqlite3_busy_handler(
      db,
      [](void*, int tries) -> int {
        if (read_retry_hook()) read_retry_hook()();
        std::this_thread::sleep_for(std::chrono::milliseconds(1));  // waiting for a lock
        return tries < 30000 ? 1 : 0;
      },
      nullptr);
}

class Database {
 public:
  explicit Database(const fs::path& path) : path_(path) {
    try {
      db_ = sqlite::open_file(path.string(), SQLITE_OPEN_READONLY);
    } catch (const outbox::Error& error) {
      throw HarnessError(error.what());
    }
    wait_for_locks_resuming_paused(db_.get());
  }
  // One read transaction around several queries, so they see one snapshot.
  void begin() { rows("BEGIN"); }
  bool has_table(const std::string& name) {
    return !rows("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '" + name + "'")
                .empty();
  }

  // Every row as text columns. SQLITE_PROTOCOL, which SQLite returns when it
  // could not start a read in the WAL within 10 s of its own tries (a process
  // stopped while it holds the WAL index's locks), is retried for up to 30 s:
  // the locks' holders are reported on stderr and read_retry_hook() runs.
  std::vector<std::vector<std::string>> rows(const std::string& sql) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (true) {
      try {
        sqlite::Statement statement(db_.get(), sql);
        auto use = statement.use();
        std::vector<std::vector<std::string>> result;
        while (use.step()) {
          std::vector<std::string> row;
          for (int i = 0; i < use.column_count(); ++i) row.push_back(use.column_text(i));
          result.push_back(std::move(row));
        }
        return result;
      } catch (const outbox::Error& error) {
        const bool protocol = (error.extended_code() & 0xff) == SQLITE_PROTOCOL;
        if (protocol && std::chrono::steady_clock::now() < deadline) {
          std::fprintf(stderr, "outbox-faults: reading %s: %s; retrying. Its WAL locks:\n%s",
                       path_.c_str(), error.what(), wal_lock_holders(path_).c_str());
          if (read_retry_hook()) read_retry_hook()();
          std::this_thread::sleep_for(std::chrono::milliseconds(10));  // bounded by the deadline
          continue;
        }
        throw HarnessError(std::string("query failed: ") + error.what() + ": " + sql);
      }
    }
  }

 private:
  fs::path path_;
  sqlite::ConnectionPtr db_;
};

struct BrokerCopy {
  std::string topic;
  std::uint64_t offset = 0;
  std::string msg_id;
  std::string key;
};

// The rows faults_sql_producer made undeliverable on purpose, by msg_id.
struct Poison {
  std::string kind, expected_reason;
};
std::map<std::string, Poison> read_poison(Database& app);

// Every topic the broker may hold a message of: ours, and any other topic a
// row names that the broker accepts (1-249 of A-Z a-z 0-9 . _ -); a poison
// row's topic outside those cannot be stored there at all.
std::vector<std::string> broker_topics(const std::vector<fs::path>& app_dbs);

std::vector<BrokerCopy> fetch_everything(const std::string& endpoint,
                                         const std::vector<std::string>& topics);

// --- Redis (--inbox redis) ------------------------------------------------

// A Redis inbox record (docs/redis_inbox.md): "completed" or "processing", and
// the token of the claim that wrote it.
struct InboxRecord {
  std::string state, token;
};

#ifdef OUTBOX_FAULTS_REDIS_SERVER
const char* const kInboxKeyPrefix = "outbox:inbox:";

// One hiredis connection to the suite's redis-server.
class RedisReader {
 public:
  explicit RedisReader(int port) : context_(redisConnectWithTimeout("127.0.0.1", port, {2, 0})) {}
  ~RedisReader() {
    if (context_ != nullptr) redisFree(context_);
  }
  RedisReader(const RedisReader&) = delete;
  RedisReader& operator=(const RedisReader&) = delete;

  bool ping() {
    if (context_ == nullptr || context_->err != 0) return false;
    auto* reply = static_cast<redisReply*>(redisCommand(context_, "PING"));
    bool pong = reply != nullptr && reply->type == REDIS_REPLY_STATUS &&
                std::string(reply->str, reply->len) == "PONG";
    if (reply != nullptr) freeReplyObject(reply);
    return pong;
  }

  // The record of each msg_id (pipelined HMGET); a missing one has empty fields.
  std::map<std::string, InboxRecord> records(const std::vector<std::string>& msg_ids) {
    std::map<std::string, InboxRecord> found;
    if (context_ == nullptr || context_->err != 0) throw HarnessError("cannot connect to Redis");
    constexpr std::size_t kPipeline = 1000;
    for (std::size_t from = 0; from < msg_ids.size(); from += kPipeline) {
      auto to = std::min(msg_ids.size(), from + kPipeline);
      for (auto i = from; i < to; ++i) {
        auto key = kInboxKeyPrefix + msg_ids[i];
        redisAppendCommand(context_, "HMGET %b state token", key.data(), key.size());
      }
      for (auto i = from; i < to; ++i) {
        void* raw = nullptr;
        if (redisGetReply(context_, &raw) != REDIS_OK || raw == nullptr) {
          throw HarnessError(std::string("reading the Redis inbox: ") + context_->errstr);
        }
        auto* reply = static_cast<redisReply*>(raw);
        InboxRecord record;
        if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2) {
          for (std::size_t field = 0; field < 2; ++field) {
            auto* value = reply->element[field];
            if (value->type == REDIS_REPLY_STRING) {
              (field == 0 ? record.state : record.token) = std::string(value->str, value->len);
            }
          }
        }
        freeReplyObject(reply);
        found[msg_ids[i]] = record;
      }
    }
    return found;
  }

 private:
  redisContext* context_;
};
#endif

// --- JetStream (--sink jetstream) -----------------------------------------

// The stream the relays publish to, and its duplicate window: far above the
// relays' retry horizon (ack-timeout 1s + connect-timeout 2s + backoff-max
// 500ms + lease 1s = 4.5 s) and above every pause the run injects.
const char* const kStream = "OUTBOX";

#ifdef OUTBOX_RELAY_WITH_JETSTREAM

constexpr auto kDuplicateWindow = 60s;

// $OUTBOX_NATS_SERVER if set, else nats-server on PATH or in /usr/sbin and
// /usr/bin; empty when there is none.
std::string find_nats_server();

std::string nats_error(natsStatus status);

// One libnats connection with a JetStream context; no automatic reconnect.
class JetStreamClient {
 public:
  // Empty when the server does not answer (yet).
  static std::unique_ptr<JetStreamClient> connect(const std::string& url) {
    auto client = std::unique_ptr<JetStreamClient>(new JetStreamClient());
    natsOptions* options = nullptr;
    if (natsOptions_Create(&options) != NATS_OK) return nullptr;
    natsOptions_SetURL(options, url.c_str());
    natsOptions_SetAllowReconnect(options, false);
    natsOptions_SetTimeout(options, 2000);
    auto status = natsConnection_Connect(&client->connection_, options);
    natsOptions_Destroy(options);
    if (status != NATS_OK) return nullptr;
    jsOptions js_options;
    jsOptions_Init(&js_options);
    js_options.Wait = 10000;
    if (natsConnection_JetStream(&client->js_, client->connection_, &js_options) != NATS_OK)
      return nullptr;
    // JetStream answers once the server has recovered its store.
    jsAccountInfo* account = nullptr;
    jsErrCode code = static_cast<jsErrCode>(0);
    status = js_GetAccountInfo(&account, client->js_, nullptr, &code);
    if (account != nullptr) jsAccountInfo_Destroy(account);
    if (status != NATS_OK) return nullptr;
    return client;
  }
  ~JetStreamClient() {
    if (js_ != nullptr) jsCtx_Destroy(js_);
    if (connection_ != nullptr) natsConnection_Destroy(connection_);
  }
  JetStreamClient(const JetStreamClient&) = delete;
  JetStreamClient& operator=(const JetStreamClient&) = delete;

  void add_stream(const std::string& name, const std::string& subject,
                  std::chrono::nanoseconds duplicate_window) {
    jsStreamConfig config;
    jsStreamConfig_Init(&config);
    config.Name = name.c_str();
    const char* subjects[] = {subject.c_str()};
    config.Subjects = subjects;
    config.SubjectsLen = 1;
    config.Storage = js_FileStorage;
    config.Duplicates = duplicate_window.count();
    jsStreamInfo* info = nullptr;
    jsErrCode code = static_cast<jsErrCode>(0);
    auto status = js_AddStream(&info, js_, &config, nullptr, &code);
    if (info != nullptr) jsStreamInfo_Destroy(info);
    if (status != NATS_OK)
      throw HarnessError("creating stream " + name + ": " + nats_error(status));
  }

  // Every message of the stream as (topic, stream sequence, msg_id, key),
  // topic and key decoded from the subject outbox.<topic>.<key>.
  std::vector<BrokerCopy> read_all(const std::string& stream) {
    jsStreamInfo* info = nullptr;
    jsErrCode code = static_cast<jsErrCode>(0);
    auto status = js_GetStreamInfo(&info, js_, stream.c_str(), nullptr, &code);
    if (status != NATS_OK) throw HarnessError("reading stream info: " + nats_error(status));
    auto first = info->State.FirstSeq, last = info->State.LastSeq;
    jsStreamInfo_Destroy(info);
    std::vector<BrokerCopy> all;
    for (auto sequence = std::max<std::uint64_t>(first, 1); last > 0 && sequence <= last;
         ++sequence) {
      natsMsg* msg = nullptr;
      status = js_GetMsg(&msg, js_, stream.c_str(), sequence, nullptr, &code);
      if (status != NATS_OK) {
        throw HarnessError("reading stream sequence " + std::to_string(sequence) + ": " +
                           nats_error(status));
      }
      BrokerCopy copy;
      copy.offset = sequence;
      std::string subject = natsMsg_GetSubject(msg);
      const char* id = nullptr;
      if (natsMsgHeader_Get(msg, "Nats-Msg-Id", &id) == NATS_OK && id != nullptr) copy.msg_id = id;
      natsMsg_Destroy(msg);
      // outbox.<topic>.<key>, one token each; anything else keeps the raw
      // subject as its topic, so that the checker reports it.
      auto first_dot = subject.find('.');
      auto second_dot =
          first_dot == std::string::npos ? first_dot : subject.find('.', first_dot + 1);
      std::optional<std::string> topic, key;
      if (second_dot != std::string::npos && subject.substr(0, first_dot) == "outbox" &&
          subject.find('.', second_dot + 1) == std::string::npos) {
        topic = relay::decode_subject_token(
            std::string_view(subject).substr(first_dot + 1, second_dot - first_dot - 1));
        auto key_token = std::string_view(subject).substr(second_dot + 1);
        key = key_token == "_" ? std::optional<std::string>("")
                               : relay::decode_subject_token(key_token);
      }
      if (topic && key) {
        copy.topic = *topic;
        copy.key = *key;
      } else {
        copy.topic = "subject " + subject;
      }
      all.push_back(std::move(copy));
    }
    return all;
  }

 private:
  JetStreamClient() = default;
  natsConnection* connection_ = nullptr;
  jsCtx* js_ = nullptr;
};

#endif  // OUTBOX_RELAY_WITH_JETSTREAM

}  // namespace faults
