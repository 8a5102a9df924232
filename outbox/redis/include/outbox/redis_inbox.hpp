// The consumer's inbox on Redis: process each msg_id once for consumers that
// keep no SQLite database of their own (a stateless service calling other
// APIs, replicas of one consumer group on several machines sharing one Redis).
// Same claim contract as outbox::Inbox (outbox/inbox.hpp): begin() claims a
// msg_id under a token, complete()/fail()/extend() require that token.
//
//   outbox::RedisInboxOptions options;
//   options.endpoint = "redis://127.0.0.1:6379";
//   auto inbox = outbox::RedisInbox::connect(options);
//   auto result = inbox.process_once(msg.msg_id, [&] { call_shipping_api(msg); });
//   if (result == outbox::ProcessResult::already_done) { /* a redelivery */ }
//
// A handler that continues the producer's trace takes the message as it is
// and gets its trace context (traceparent and tracestate, see outbox::Inbox):
//
//   inbox.process_once(msg, [&](const outbox::TraceContext& trace) { ... });
//
// What it guarantees. The side effect and the record are not one transaction
// (unlike outbox::Inbox::process_once): a consumer that dies after its side
// effect and before complete() leaves a "processing" claim, which another
// consumer takes over once the lease has passed and does the work again. So
// side effects are at-least-once, made idempotent by the record: after a
// complete() no consumer starts the msg_id again for `retention`. Make the
// effect itself idempotent (an idempotency key on the API call) where a repeat
// after a crash would hurt.
//
// Records. One hash per msg_id, key `key_prefix + msg_id`, fields `state`
// ("processing" or "completed"), `token`, `until_ms` (the claim's expiry, Redis
// server time), `completed_ms`. Every change is one Lua script (EVALSHA), so
// check and set are atomic; expiry times come from the Redis server's clock, so
// consumers on different machines agree on them. A completed record expires
// after `retention`; a processing record whose holder vanished expires
// `retention` after its lease. docs/redis_inbox.md is the contract for
// clients in other languages.
//
// Durability. A completed record survives a Redis restart only as far as
// Redis persists it: with `appendonly yes` and `appendfsync always`, nothing
// completed is forgotten; with `appendfsync everysec` about a second of
// completions may be lost on a crash of the machine; without persistence a
// restart forgets every record, and each msg_id redelivered after it is
// processed again.
//
// Thread safety: a RedisInbox owns one connection; use it from one thread at a
// time. Any number of RedisInbox objects (threads, processes, machines) may
// share one Redis.
//
// Errors: outbox::RedisError when Redis cannot be reached, does not answer
// within command_timeout, or answers with an error; the message names the
// endpoint and the operation. A failed call never reports already_done or
// claim_lost: those come only from a record Redis returned. After a broken
// connection the next call reconnects; a call whose reply was lost is sent
// once more on the new connection (begin, complete and extend give the same
// answer when repeated with the same token; a repeated fail answers
// claim_lost, the claim being released either way). A call that timed out
// may still take effect when Redis reads it later: a begin() then leaves a
// claim whose token nobody holds, taken over once its lease has passed.
// outbox::Error for bad options or arguments.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>

#include "outbox/error.hpp"
#include "outbox/inbox.hpp"

namespace spdlog {
class logger;
}

namespace outbox {

// Redis could not be reached, did not answer in time, or answered with an
// error. Kind io.
class RedisError : public Error {
 public:
  explicit RedisError(const std::string& message) : Error(ErrorKind::io, message) {}
};

struct RedisInboxOptions {
  // redis://[[user]:password@]host[:port][/db] (port 6379, db 0 by default)
  // or unix:///path/to/redis.sock.
  std::string endpoint = "redis://127.0.0.1:6379";
  // Prepended to each msg_id to form its key.
  std::string key_prefix = "outbox:inbox:";
  std::chrono::milliseconds connect_timeout{std::chrono::seconds(2)};
  std::chrono::milliseconds command_timeout{std::chrono::seconds(2)};
  // How long a completed msg_id is remembered. A msg_id delivered again after
  // its record expired is processed again, so this must cover the longest
  // time after which the broker (or a consumer group rewound to an old
  // offset) can deliver the same msg_id again: `redelivery_horizon`.
  std::chrono::milliseconds retention{std::chrono::hours(24 * 7)};
  std::chrono::milliseconds redelivery_horizon{std::chrono::hours(24 * 7)};
  // connect() refuses retention < redelivery_horizon unless this is set, for
  // consumers that accept repeats of old messages in exchange for memory.
  bool allow_retention_below_redelivery_horizon = false;
  // The claim lease process_once() takes; a handler running longer than this
  // may find its claim taken over (ProcessResult::claim_lost).
  std::chrono::milliseconds process_lease{std::chrono::minutes(5)};
  // Longest msg_id accepted (bytes); longer ones are refused with outbox::Error.
  std::size_t max_msg_id_bytes = 1024;
  std::shared_ptr<spdlog::logger> logger{};
};

class RedisInbox {
 public:
  // Checks the options (outbox::Error naming the bad one), connects, and loads
  // the scripts. Throws RedisError when Redis cannot be reached.
  static RedisInbox connect(RedisInboxOptions options);

  RedisInbox(RedisInbox&&) noexcept;
  RedisInbox& operator=(RedisInbox&&) noexcept;
  ~RedisInbox() noexcept;

  // Claims msg_id for `lease` under a new token. A claim past its lease is
  // taken over; its old holder gets claim_lost from then on.
  Claim begin(const std::string& msg_id, std::chrono::milliseconds lease);
  // Marks the claim held by `token` completed; the record then expires after
  // `retention`. A repeat with the same token answers ok.
  ClaimResult complete(const std::string& msg_id, const std::string& token);
  // Releases the claim held by `token` (the record is deleted) so the next
  // delivery starts afresh. A completed record is never released.
  ClaimResult fail(const std::string& msg_id, const std::string& token);
  // Moves the claim's expiry to now + `lease`, also for a claim past its lease
  // that nobody took over yet.
  ClaimResult extend(const std::string& msg_id, const std::string& token,
                     std::chrono::milliseconds lease);

  // begin() with options.process_lease, then `handler`, then complete();
  // fail() and rethrow when the handler throws. Returns processed,
  // already_done, in_progress (another consumer holds a live claim) or
  // claim_lost (the handler outlived the lease and another consumer took the
  // claim over meanwhile).
  ProcessResult process_once(const std::string& msg_id, const std::function<void()>& handler);
  // The same for a handler that continues the message's trace: it also gets
  // the message's trace context (empty when it carries none).
  ProcessResult process_once(const std::string& msg_id, const TraceContext& trace,
                             const std::function<void(const TraceContext&)>& handler);
  // The same for a received message taken as it is (wire::StoredMessage): its
  // msg_id, and the trace context read from its headers (trace_context_of).
  template <ReceivedMessage Received>
  ProcessResult process_once(const Received& message,
                             const std::function<void(const TraceContext&)>& handler) {
    return process_once(message.msg_id, trace_context_of(message.headers), handler);
  }

  const RedisInboxOptions& options() const;

 private:
  struct Impl;
  explicit RedisInbox(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_{};
};

}  // namespace outbox
