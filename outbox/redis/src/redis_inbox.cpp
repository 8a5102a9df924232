#include "outbox/redis_inbox.hpp"

#include <hiredis/hiredis.h>
#include <pthread.h>
#include <signal.h>
#include <spdlog/logger.h>

#include <array>
#include <cerrno>
#include <charconv>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include "common.hpp"
#include "idgen/uuid.hpp"

namespace outbox {

namespace {

// The record format is documented in docs/redis_inbox.md; keep both in step.
// Every script reads "now" from the Redis server (TIME), so all consumers use
// one clock. Lua numbers are doubles: millisecond times and durations below
// 2^53 are exact, and string.format('%d') writes them without an exponent.
constexpr std::string_view now_lua = R"lua(
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local function checked_state(record)
  local state = record[1]
  if state == false then
    if redis.call('EXISTS', KEYS[1]) == 1 then
      return nil, 'inbox record ' .. KEYS[1] .. ' has no state field'
    end
    return 'absent'
  end
  if state ~= 'processing' and state ~= 'completed' then
    return nil, 'inbox record ' .. KEYS[1] .. ' has unknown state ' .. state
  end
  return state
end
)lua";

// KEYS[1] record; ARGV token, lease_ms, retention_ms.
// Returns {outcome, how}: outcome claimed / in_progress_elsewhere / already_done.
constexpr std::string_view begin_lua = R"lua(
local record = redis.call('HMGET', KEYS[1], 'state', 'token', 'until_ms')
local state, problem = checked_state(record)
if not state then return redis.error_reply(problem) end
if state == 'completed' then return {'already_done', ''} end
if state == 'processing' then
  -- The same token again: this begin() was sent twice after a lost reply.
  if record[2] == ARGV[1] then return {'claimed', 'repeat'} end
  local until_ms = tonumber(record[3])
  if until_ms == nil then
    return redis.error_reply('inbox record ' .. KEYS[1] .. ' has no valid until_ms')
  end
  if until_ms > now then return {'in_progress_elsewhere', ''} end
end
local lease = tonumber(ARGV[2])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'state', 'processing', 'token', ARGV[1],
           'until_ms', string.format('%d', now + lease))
redis.call('PEXPIRE', KEYS[1], string.format('%d', lease + tonumber(ARGV[3])))
if state == 'processing' then return {'claimed', 'took_over'} end
return {'claimed', 'new'}
)lua";

// KEYS[1] record; ARGV token, retention_ms. Returns ok / claim_lost.
constexpr std::string_view complete_lua = R"lua(
local record = redis.call('HMGET', KEYS[1], 'state', 'token')
local state, problem = checked_state(record)
if not state then return redis.error_reply(problem) end
if record[2] ~= ARGV[1] then return 'claim_lost' end
if state == 'completed' then return 'ok' end
redis.call('HSET', KEYS[1], 'state', 'completed', 'completed_ms', string.format('%d', now))
redis.call('HDEL', KEYS[1], 'until_ms')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 'ok'
)lua";

// KEYS[1] record; ARGV token. Returns ok / claim_lost.
constexpr std::string_view fail_lua = R"lua(
local record = redis.call('HMGET', KEYS[1], 'state', 'token')
local state, problem = checked_state(record)
if not state then return redis.error_reply(problem) end
if state ~= 'processing' or record[2] ~= ARGV[1] then return 'claim_lost' end
redis.call('DEL', KEYS[1])
return 'ok'
)lua";

// KEYS[1] record; ARGV token, lease_ms, retention_ms. Returns ok / claim_lost.
constexpr std::string_view extend_lua = R"lua(
local record = redis.call('HMGET', KEYS[1], 'state', 'token')
local state, problem = checked_state(record)
if not state then return redis.error_reply(problem) end
if state ~= 'processing' or record[2] ~= ARGV[1] then return 'claim_lost' end
local lease = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'until_ms', string.format('%d', now + lease))
redis.call('PEXPIRE', KEYS[1], string.format('%d', lease + tonumber(ARGV[3])))
return 'ok'
)lua";

enum class Script { begin, complete, fail, extend };
constexpr std::size_t script_count = 4;

std::string script_text(Script script) {
  std::string_view body;
  switch (script) {
    case Script::begin:
      body = begin_lua;
      break;
    case Script::complete:
      body = complete_lua;
      break;
    case Script::fail:
      body = fail_lua;
      break;
    case Script::extend:
      body = extend_lua;
      break;
  }
  return std::string(now_lua) + std::string(body);
}

struct Endpoint {
  std::string host;
  int port = 6379;
  std::string unix_path;
  std::string user;
  std::string password;
  long database = 0;
  std::string display;  // the endpoint without its password, for messages
};

std::optional<long> parse_number(std::string_view text, long low, long high) {
  long value = 0;
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size()) return std::nullopt;
  if (value < low || value > high) return std::nullopt;
  return value;
}

Endpoint parse_endpoint(const std::string& text) {
  auto refuse = [&](const std::string& why) -> Error {
    return Error("outbox: redis inbox endpoint '" + text + "': " + why +
                 " (expected redis://[[user]:password@]host[:port][/db] or unix:///path)");
  };
  Endpoint endpoint;
  constexpr std::string_view unix_scheme = "unix://";
  constexpr std::string_view redis_scheme = "redis://";
  std::string_view rest(text);
  if (rest.starts_with(unix_scheme)) {
    endpoint.unix_path = std::string(rest.substr(unix_scheme.size()));
    if (endpoint.unix_path.empty() || endpoint.unix_path.front() != '/') {
      throw refuse("the socket path must be absolute");
    }
    endpoint.display = text;
    return endpoint;
  }
  if (!rest.starts_with(redis_scheme)) throw refuse("unknown scheme");
  rest.remove_prefix(redis_scheme.size());
  std::string_view authority = rest.substr(0, rest.find('/'));
  if (authority.size() < rest.size()) {
    auto database = parse_number(rest.substr(authority.size() + 1), 0, 1'000'000);
    if (!database) throw refuse("the database must be a number");
    endpoint.database = *database;
  }
  std::string shown = "redis://";
  if (auto at = authority.rfind('@'); at != std::string_view::npos) {
    std::string_view userinfo = authority.substr(0, at);
    authority.remove_prefix(at + 1);
    auto colon = userinfo.find(':');
    if (colon == std::string_view::npos) throw refuse("the user needs ':password'");
    endpoint.user = std::string(userinfo.substr(0, colon));
    endpoint.password = std::string(userinfo.substr(colon + 1));
    shown += endpoint.user + ":***@";
  }
  std::string_view host = authority;
  std::string_view port;
  if (authority.starts_with('[')) {  // [IPv6]:port
    auto close = authority.find(']');
    if (close == std::string_view::npos) throw refuse("unclosed '['");
    host = authority.substr(1, close - 1);
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') throw refuse("junk after ']'");
      port = after.substr(1);
    }
  } else if (auto colon = authority.rfind(':'); colon != std::string_view::npos) {
    host = authority.substr(0, colon);
    port = authority.substr(colon + 1);
  }
  if (host.empty()) throw refuse("no host");
  endpoint.host = std::string(host);
  if (!port.empty() || authority.ends_with(':')) {
    auto number = parse_number(port, 1, 65535);
    if (!number) throw refuse("the port must be 1-65535");
    endpoint.port = static_cast<int>(*number);
  }
  shown += std::string(authority);
  if (endpoint.database != 0) shown += "/" + std::to_string(endpoint.database);
  endpoint.display = shown;
  return endpoint;
}

timeval to_timeval(std::chrono::milliseconds duration) {
  timeval value{};
  value.tv_sec = static_cast<decltype(value.tv_sec)>(duration.count() / 1000);
  value.tv_usec = static_cast<decltype(value.tv_usec)>((duration.count() % 1000) * 1000);
  return value;
}

// hiredis writes with write(2): on a connection the server closed, that
// raises SIGPIPE, whose default action kills the process. A library must not
// change the process's signal handling, so SIGPIPE is blocked in the calling
// thread for the duration of a call and a SIGPIPE the call raised is consumed;
// the write then fails with EPIPE and comes back as an error.
class SigpipeGuard {
 public:
  SigpipeGuard() {
    sigemptyset(&pipe_);
    sigaddset(&pipe_, SIGPIPE);
    sigset_t pending;
    sigemptyset(&pending);
    sigpending(&pending);
    was_pending_ = sigismember(&pending, SIGPIPE) == 1;
    blocked_ = pthread_sigmask(SIG_BLOCK, &pipe_, &previous_) == 0;
  }
  ~SigpipeGuard() noexcept {
    if (!blocked_) return;
    if (!was_pending_) {
      sigset_t pending;
      sigemptyset(&pending);
      sigpending(&pending);
      if (sigismember(&pending, SIGPIPE) == 1) {
        const timespec no_wait{0, 0};
        while (sigtimedwait(&pipe_, nullptr, &no_wait) < 0 && errno == EINTR) {
        }
      }
    }
    pthread_sigmask(SIG_SETMASK, &previous_, nullptr);
  }
  SigpipeGuard(const SigpipeGuard&) = delete;
  SigpipeGuard& operator=(const SigpipeGuard&) = delete;

 private:
  sigset_t pipe_{};
  sigset_t previous_{};
  bool was_pending_ = false;
  bool blocked_ = false;
};

struct ContextDeleter {
  void operator()(redisContext* context) const noexcept { redisFree(context); }
};
using ContextPtr = std::unique_ptr<redisContext, ContextDeleter>;

struct ReplyDeleter {
  void operator()(redisReply* reply) const noexcept { freeReplyObject(reply); }
};
using ReplyPtr = std::unique_ptr<redisReply, ReplyDeleter>;

std::string reply_text(const redisReply& reply) {
  return std::string(reply.str ? reply.str : "", reply.len);
}

bool is_text(const redisReply& reply) {
  return reply.type == REDIS_REPLY_STRING || reply.type == REDIS_REPLY_STATUS;
}

// Durations travel as decimal milliseconds; a bound keeps them exact in Lua.
constexpr std::chrono::milliseconds max_duration{std::chrono::hours(24 * 365 * 100)};

void check_duration(std::chrono::milliseconds value, const char* what) {
  if (value.count() <= 0 || value > max_duration) {
    throw Error(std::string("outbox: redis inbox ") + what +
                " must be positive and at most 100 years, not " + std::to_string(value.count()) +
                " ms");
  }
}

}  // namespace

struct RedisInbox::Impl {
  RedisInboxOptions options;
  Endpoint endpoint;
  std::shared_ptr<spdlog::logger> logger;
  ContextPtr context;
  std::array<std::string, script_count> scripts;
  std::array<std::string, script_count> shas;

  // Sends one command; nullptr with `failure` set when the connection broke
  // (the context is then dropped). Error replies are returned as replies.
  ReplyPtr send(const std::vector<std::string>& args, std::string& failure) {
    std::vector<const char*> argv;
    std::vector<std::size_t> lengths;
    for (const auto& arg : args) {
      argv.push_back(arg.data());
      lengths.push_back(arg.size());
    }
    void* raw = nullptr;
    int saved_errno = 0;
    {
      SigpipeGuard guard;
      errno = 0;
      raw = redisCommandArgv(context.get(), static_cast<int>(argv.size()), argv.data(),
                             lengths.data());
      saved_errno = errno;
    }
    if (raw != nullptr) return ReplyPtr(static_cast<redisReply*>(raw));
    if (context->err == REDIS_ERR_IO && (saved_errno == EAGAIN || saved_errno == EWOULDBLOCK)) {
      failure = "no answer within " + std::to_string(options.command_timeout.count()) + " ms";
    } else if (context->err == REDIS_ERR_EOF) {
      failure = "the server closed the connection";
    } else {
      failure = context->errstr[0] ? context->errstr : "connection failed";
    }
    context.reset();
    return nullptr;
  }

  [[noreturn]] void fail_with(const std::string& operation, const std::string& why) {
    throw RedisError("outbox: redis inbox at " + endpoint.display + ": " + operation + ": " + why);
  }

  // One command during connection setup; throws on any failure.
  ReplyPtr setup_command(const std::vector<std::string>& args, const std::string& operation) {
    std::string failure;
    auto reply = send(args, failure);
    if (!reply) fail_with(operation, failure);
    if (reply->type == REDIS_REPLY_ERROR) {
      context.reset();
      fail_with(operation, reply_text(*reply));
    }
    return reply;
  }

  void connect() {
    const timeval connect_timeout = to_timeval(options.connect_timeout);
    redisContext* raw =
        endpoint.unix_path.empty()
            ? redisConnectWithTimeout(endpoint.host.c_str(), endpoint.port, connect_timeout)
            : redisConnectUnixWithTimeout(endpoint.unix_path.c_str(), connect_timeout);
    if (raw == nullptr) fail_with("connect", "out of memory");
    ContextPtr fresh(raw);
    if (fresh->err != 0) {
      fail_with("connect", fresh->errstr[0] ? fresh->errstr : "connection failed");
    }
    if (redisSetTimeout(fresh.get(), to_timeval(options.command_timeout)) != REDIS_OK) {
      fail_with("connect", "cannot set the command timeout");
    }
    // Keepalive probes notice a peer that vanished without closing (TCP only).
    if (endpoint.unix_path.empty() && redisEnableKeepAlive(fresh.get()) != REDIS_OK) {
      fail_with("connect", "cannot enable TCP keepalive");
    }
    context = std::move(fresh);
    if (!endpoint.password.empty() || !endpoint.user.empty()) {
      if (endpoint.user.empty()) {
        setup_command({"AUTH", endpoint.password}, "AUTH");
      } else {
        setup_command({"AUTH", endpoint.user, endpoint.password}, "AUTH");
      }
    }
    if (endpoint.database != 0) {
      setup_command({"SELECT", std::to_string(endpoint.database)}, "SELECT");
    }
    for (std::size_t i = 0; i < script_count; ++i) {
      auto reply = setup_command({"SCRIPT", "LOAD", scripts[i]}, "SCRIPT LOAD");
      if (!is_text(*reply)) {
        context.reset();
        fail_with("SCRIPT LOAD", "unexpected reply");
      }
      shas[i] = reply_text(*reply);
    }
    logger->info("outbox: redis inbox connected to {}", endpoint.display);
  }

  // Runs one script on msg_id's record. A broken connection is reopened and
  // the script sent once more (the scripts answer a repeat with the same
  // token as the first time; see the header). Anything else throws.
  ReplyPtr run(Script script, const std::string& operation, const std::string& msg_id,
               std::vector<std::string> arguments) {
    const auto index = static_cast<std::size_t>(script);
    const std::string what = operation + " '" + msg_id + "'";
    std::vector<std::string> args{"EVALSHA", shas[index], "1", options.key_prefix + msg_id};
    args.insert(args.end(), std::make_move_iterator(arguments.begin()),
                std::make_move_iterator(arguments.end()));
    std::string failure;
    for (int attempt = 0; attempt < 2; ++attempt) {
      const bool reused = context != nullptr;
      if (!reused) {
        try {
          connect();
        } catch (const RedisError& error) {
          throw RedisError(std::string(error.what()) + " (reconnecting for " + what + ")");
        }
      }
      args[1] = shas[index];
      auto reply = send(args, failure);
      if (reply && reply->type == REDIS_REPLY_ERROR && reply_text(*reply).starts_with("NOSCRIPT")) {
        // The server lost its script cache (a restart): send the script itself.
        args[0] = "EVAL";
        args[1] = scripts[index];
        reply = send(args, failure);
        args[0] = "EVALSHA";
      }
      if (reply) {
        if (reply->type == REDIS_REPLY_ERROR) fail_with(what, reply_text(*reply));
        return reply;
      }
      logger->warn("outbox: redis inbox at {}: {}: {}; reconnecting", endpoint.display, what,
                   failure);
      if (!reused) break;  // a fresh connection failed at once: do not hammer
    }
    fail_with(what, failure);
  }

  std::string run_for_text(Script script, const std::string& operation, const std::string& msg_id,
                           std::vector<std::string> arguments) {
    auto reply = run(script, operation, msg_id, std::move(arguments));
    if (!is_text(*reply)) fail_with(operation + " '" + msg_id + "'", "unexpected reply type");
    return reply_text(*reply);
  }

  ClaimResult to_claim_result(const std::string& text, const std::string& operation,
                              const std::string& msg_id) {
    if (text == "ok") return ClaimResult::ok;
    if (text == "claim_lost") return ClaimResult::claim_lost;
    fail_with(operation + " '" + msg_id + "'", "unexpected reply '" + text + "'");
  }

  void check_msg_id(const std::string& msg_id) const {
    if (msg_id.empty()) throw Error("outbox: inbox msg_id is empty");
    if (msg_id.size() > options.max_msg_id_bytes) {
      throw Error("outbox: inbox msg_id of " + std::to_string(msg_id.size()) +
                  " bytes is longer than max_msg_id_bytes (" +
                  std::to_string(options.max_msg_id_bytes) + ")");
    }
  }
  static void check_token(const std::string& token) {
    if (token.empty()) throw Error("outbox: inbox claim token is empty");
  }
};

RedisInbox::RedisInbox(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RedisInbox::RedisInbox(RedisInbox&&) noexcept = default;
RedisInbox& RedisInbox::operator=(RedisInbox&&) noexcept = default;
RedisInbox::~RedisInbox() noexcept = default;

RedisInbox RedisInbox::connect(RedisInboxOptions options) {
  check_duration(options.connect_timeout, "connect_timeout");
  check_duration(options.command_timeout, "command_timeout");
  check_duration(options.retention, "retention");
  check_duration(options.redelivery_horizon, "redelivery_horizon");
  check_duration(options.process_lease, "process_lease");
  if (options.retention < options.redelivery_horizon &&
      !options.allow_retention_below_redelivery_horizon) {
    throw Error("outbox: redis inbox retention (" + std::to_string(options.retention.count()) +
                " ms) is shorter than the redelivery horizon (" +
                std::to_string(options.redelivery_horizon.count()) +
                " ms): a msg_id delivered again after its record expired would be processed "
                "again; raise the retention or set allow_retention_below_redelivery_horizon");
  }
  if (options.max_msg_id_bytes == 0) {
    throw Error("outbox: redis inbox max_msg_id_bytes must be positive");
  }
  auto impl = std::make_unique<Impl>();
  impl->endpoint = parse_endpoint(options.endpoint);
  impl->logger = outbox::logger_or_null(options.logger, "outbox");
  impl->options = std::move(options);
  for (std::size_t i = 0; i < script_count; ++i) {
    impl->scripts[i] = script_text(static_cast<Script>(i));
  }
  impl->connect();
  return RedisInbox(std::move(impl));
}

const RedisInboxOptions& RedisInbox::options() const {
  return impl_->options;
}

Claim RedisInbox::begin(const std::string& msg_id, std::chrono::milliseconds lease) {
  auto& impl = *impl_;
  impl.check_msg_id(msg_id);
  check_duration(lease, "claim lease");
  Claim claim{BeginResult::claimed, idgen::to_string(idgen::uuid_v4())};
  auto reply = impl.run(
      Script::begin, "begin", msg_id,
      {claim.token, std::to_string(lease.count()), std::to_string(impl.options.retention.count())});
  if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 || !is_text(*reply->element[0]) ||
      !is_text(*reply->element[1])) {
    impl.fail_with("begin '" + msg_id + "'", "unexpected reply");
  }
  const std::string outcome = reply_text(*reply->element[0]);
  if (outcome == "already_done") return Claim{BeginResult::already_done};
  if (outcome == "in_progress_elsewhere") return Claim{BeginResult::in_progress_elsewhere};
  if (outcome != "claimed")
    impl.fail_with("begin '" + msg_id + "'", "unexpected '" + outcome + "'");
  if (reply_text(*reply->element[1]) == "took_over") {
    impl.logger->warn("outbox: redis inbox claim on {} expired; taking it over", msg_id);
  }
  return claim;
}

ClaimResult RedisInbox::complete(const std::string& msg_id, const std::string& token) {
  auto& impl = *impl_;
  impl.check_msg_id(msg_id);
  Impl::check_token(token);
  auto text = impl.run_for_text(Script::complete, "complete", msg_id,
                                {token, std::to_string(impl.options.retention.count())});
  return impl.to_claim_result(text, "complete", msg_id);
}

ClaimResult RedisInbox::fail(const std::string& msg_id, const std::string& token) {
  auto& impl = *impl_;
  impl.check_msg_id(msg_id);
  Impl::check_token(token);
  auto text = impl.run_for_text(Script::fail, "fail", msg_id, {token});
  return impl.to_claim_result(text, "fail", msg_id);
}

ClaimResult RedisInbox::extend(const std::string& msg_id, const std::string& token,
                               std::chrono::milliseconds lease) {
  auto& impl = *impl_;
  impl.check_msg_id(msg_id);
  Impl::check_token(token);
  check_duration(lease, "claim lease");
  auto text = impl.run_for_text(
      Script::extend, "extend", msg_id,
      {token, std::to_string(lease.count()), std::to_string(impl.options.retention.count())});
  return impl.to_claim_result(text, "extend", msg_id);
}

ProcessResult RedisInbox::process_once(const std::string& msg_id,
                                       const std::function<void()>& handler) {
  auto claim = begin(msg_id, impl_->options.process_lease);
  if (claim.result == BeginResult::already_done) return ProcessResult::already_done;
  if (claim.result == BeginResult::in_progress_elsewhere) return ProcessResult::in_progress;
  try {
    handler();
  } catch (...) {
    try {
      fail(msg_id, claim.token);
    } catch (const std::exception& error) {
      // The claim stays until its lease passes; the handler's error matters more.
      impl_->logger->warn("outbox: redis inbox could not release {}: {}", msg_id, error.what());
    }
    throw;
  }
  return complete(msg_id, claim.token) == ClaimResult::ok ? ProcessResult::processed
                                                          : ProcessResult::claim_lost;
}

ProcessResult RedisInbox::process_once(const std::string& msg_id, const TraceContext& trace,
                                       const std::function<void(const TraceContext&)>& handler) {
  return process_once(msg_id, [&] { handler(trace); });
}

}  // namespace outbox
