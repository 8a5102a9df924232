#include "broker/server.hpp"

#include <algorithm>
#include <cerrno>
#include <fstream>
#include <stdexcept>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include <spdlog/sinks/null_sink.h>
#include <zmq.hpp>

#include "broker/store.hpp"
#include "wire/zmq_io.hpp"

namespace broker {
namespace {

using Clock = std::chrono::steady_clock;

std::shared_ptr<spdlog::logger> null_logger() {
  return std::make_shared<spdlog::logger>("broker",
                                          std::make_shared<spdlog::sinks::null_sink_mt>());
}

std::string trim(std::string text) {
  auto not_space = [](unsigned char c) { return !std::isspace(c); };
  text.erase(text.begin(), std::find_if(text.begin(), text.end(), not_space));
  text.erase(std::find_if(text.rbegin(), text.rend(), not_space).base(), text.end());
  return text;
}

std::vector<std::string> key_lines(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read key file " + path.string());
  std::vector<std::string> keys;
  std::string line;
  while (std::getline(in, line)) {
    line = trim(line);
    if (line.empty() || line[0] == '#') continue;
    if (line.size() != 40) {
      throw std::runtime_error("key file " + path.string() +
                               ": expected 40-character Z85 keys, got a line of " +
                               std::to_string(line.size()) + " characters");
    }
    keys.push_back(line);
  }
  return keys;
}

std::string z85_to_binary(const std::string& z85, const char* what) {
  std::string binary(32, '\0');
  if (z85.size() != 40 ||
      zmq_z85_decode(reinterpret_cast<std::uint8_t*>(binary.data()), z85.c_str()) == nullptr) {
    throw std::runtime_error(std::string(what) + " is not a valid Z85 CURVE key");
  }
  return binary;
}

std::string binary_to_z85(std::string_view binary) {
  if (binary.size() != 32) return {};
  char text[41] = {};
  if (zmq_z85_encode(text, reinterpret_cast<const std::uint8_t*>(binary.data()), 32) == nullptr) {
    return {};
  }
  return std::string(text, 40);
}

std::string reject_text(RejectReason reason) {
  return std::string(to_string(reason));
}

}  // namespace

std::string read_curve_key_file(const std::filesystem::path& path) {
  auto keys = key_lines(path);
  if (keys.empty()) throw std::runtime_error("key file " + path.string() + " holds no key");
  z85_to_binary(keys.front(), ("key in " + path.string()).c_str());
  return keys.front();
}

std::vector<std::string> read_allowed_clients_file(const std::filesystem::path& path) {
  auto keys = key_lines(path);
  for (const auto& key : keys) z85_to_binary(key, ("key in " + path.string()).c_str());
  return keys;
}

struct Server::Impl {
  struct Session {
    std::uint64_t id = 0;
    bool failed = false;
    std::string producer;
    Clock::time_point last_active;
    // (topic, key) pairs with a CONFLICT or REJECTED message in this session:
    // later messages of them are answered BLOCKED, not stored.
    std::unordered_set<std::string> refused_keys;
  };

  struct PendingBatch {
    std::string routing_id;
    std::uint64_t session_id = 0;
    std::uint64_t batch_id = 0;
    // Per message of the batch: its index in `incoming`, or kBlocked.
    std::vector<std::uint32_t> slots;
    std::unique_ptr<wire::Received> frames;  // the views in `incoming` point into these
  };

  struct WaitingFetch {
    std::string routing_id;
    wire::Fetch request;  // from_offset resolved, limits clamped
    Clock::time_point deadline;
  };

  Impl(Store& store_ref, ServerOptions opts)
      : store(store_ref),
        options(std::move(opts)),
        logger(options.logger ? options.logger : null_logger()),
        context(1),
        router(context, zmq::socket_type::router) {
    next_session_id =
        static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                       std::chrono::system_clock::now().time_since_epoch())
                                       .count())
        << 16;
    router.set(zmq::sockopt::router_mandatory, 1);
    router.set(zmq::sockopt::rcvhwm, options.receive_high_water_mark);
    router.set(zmq::sockopt::sndhwm, options.send_high_water_mark);
    router.set(zmq::sockopt::linger, 0);
    // A frame above the largest body we decode (plus slack for the other
    // frames) disconnects the peer inside ZeroMQ before it costs memory.
    router.set(zmq::sockopt::maxmsgsize,
               static_cast<std::int64_t>(options.limits.max_body_bytes + 1024));
    if (options.curve) setup_curve(*options.curve);
    try {
      router.bind(options.bind_endpoint);
    } catch (const zmq::error_t& error) {
      throw std::runtime_error("cannot bind " + options.bind_endpoint + ": " + error.what());
    }
    endpoint = router.get(zmq::sockopt::last_endpoint);
    if (!options.endpoint_file.empty()) write_endpoint_file();
    logger->info("listening on {}", endpoint);
  }

  void setup_curve(const CurveServerConfig& curve) {
    if (!zmq_has("curve")) throw std::runtime_error("this libzmq was built without CURVE");
    auto secret = z85_to_binary(curve.secret_key, "the CURVE secret key");
    for (const auto& key : curve.allowed_client_keys) {
      allowed_clients.push_back(z85_to_binary(key, "an allowed client key"));
    }
    zap = zmq::socket_t(context, zmq::socket_type::rep);
    zap->set(zmq::sockopt::linger, 0);
    zap->bind("inproc://zeromq.zap.01");
    router.set(zmq::sockopt::curve_server, 1);
    router.set(zmq::sockopt::curve_secretkey, zmq::buffer(secret.data(), secret.size()));
    router.set(zmq::sockopt::zap_domain, "outbox");
    logger->info("CURVE on, {} allowed client keys{}", allowed_clients.size(),
                 allowed_clients.empty() ? " (any client key accepted)" : "");
  }

  void write_endpoint_file() {
    auto temporary = options.endpoint_file;
    temporary += ".tmp";
    {
      std::ofstream out(temporary, std::ios::trunc);
      out << endpoint << '\n';
      if (!out) throw std::runtime_error("cannot write " + temporary.string());
    }
    std::filesystem::rename(temporary, options.endpoint_file);
  }

  // ---- replies ----------------------------------------------------------------

  void reply(const std::string& routing_id, const wire::AnyMessage& message) {
    try {
      if (!wire::send_message(router, message, zmq::send_flags::dontwait, routing_id)) {
        ++counters.replies_dropped;
      }
    } catch (const zmq::error_t& error) {
      // EHOSTUNREACH: the peer is gone. Nothing else a send can report matters here.
      ++counters.replies_dropped;
      logger->debug("reply dropped: {}", error.what());
    }
  }

  void reply_error(const std::string& routing_id, std::uint64_t request_id, wire::ErrorCode code,
                   std::string message) {
    reply(routing_id, wire::ErrorReply{request_id, code, std::move(message)});
  }

  void malformed(const std::string& routing_id, std::uint64_t request_id,
                 const wire::Error& error) {
    ++counters.malformed;
    logger->debug("malformed input: {}", error.message);
    reply_error(routing_id, request_id, error.code, error.message);
  }

  // ---- input ------------------------------------------------------------------

  // Reads what is waiting (up to one group commit's worth), then commits it.
  // Returns whether anything was read.
  bool read_round() {
    bool any = false;
    while (incoming.size() < options.max_commit_messages &&
           pending_bytes < options.max_commit_bytes) {
      std::optional<wire::Received> received;
      try {
        received = wire::receive_frames(router, zmq::recv_flags::dontwait, 5);
      } catch (const zmq::error_t& error) {
        if (error.num() == EINTR) break;
        throw;
      }
      if (!received) break;
      any = true;
      handle(std::make_unique<wire::Received>(std::move(*received)));
    }
    commit_pending();
    return any;
  }

  void handle(std::unique_ptr<wire::Received> received) {
    if (received->frames.empty()) return;
    std::string routing_id(static_cast<const char*>(received->frames[0].data()),
                           received->frames[0].size());
    if (received->too_many_frames || received->frames.size() != 4) {
      malformed(routing_id, 0,
                {wire::ErrorCode::bad_frame_count,
                 "expected 3 frames (tag, command, body), got " +
                     (received->too_many_frames ? std::string("more than 4")
                                                : std::to_string(received->frames.size() - 1))});
      return;
    }
    auto views = received->views(1);
    if (auto tag = wire::decode_tag(views[0]); !tag) return malformed(routing_id, 0, tag.error());
    auto command = wire::decode_command(views[1]);
    if (!command) return malformed(routing_id, 0, command.error());
    if (*command == wire::Command::publish) {
      return handle_publish(routing_id, std::move(received));
    }
    // Replies go out in arrival order per connection: acknowledge this peer's
    // earlier batches before answering anything else it sent.
    if (has_pending_from(routing_id)) commit_pending();
    auto decoded = wire::decode_body(*command, views[2], options.limits);
    if (!decoded) return malformed(routing_id, 0, decoded.error());
    std::visit([&](auto& message) { on_message(routing_id, message); }, decoded.value());
  }

  bool has_pending_from(const std::string& routing_id) const {
    return std::any_of(pending.begin(), pending.end(),
                       [&](const PendingBatch& batch) { return batch.routing_id == routing_id; });
  }

  Session* find_session(const std::string& routing_id) {
    auto found = sessions.find(routing_id);
    return found == sessions.end() ? nullptr : &found->second;
  }

  void handle_publish(const std::string& routing_id, std::unique_ptr<wire::Received> received) {
    auto views = received->views(1);
    Session* session = find_session(routing_id);
    auto view = wire::decode_publish_view(views[2], options.limits);
    if (!view) {
      std::uint64_t batch_id = 0;
      if (views[2].size() >= 16) {
        for (int i = 0; i < 8; ++i) {
          batch_id |= static_cast<std::uint64_t>(static_cast<std::uint8_t>(views[2][8 + i]))
                      << (8 * i);
        }
      }
      if (session != nullptr && !session->failed) {
        session->failed = true;
        logger->warn("session {} ({}) failed: {}", session->id, session->producer,
                     view.error().message);
      }
      return malformed(routing_id, batch_id, view.error());
    }
    if (session == nullptr || session->id != view->session_id) {
      ++counters.refused_batches;
      return reply_error(
          routing_id, view->batch_id, wire::ErrorCode::no_session,
          "no session " + std::to_string(view->session_id) + " on this connection; send HELLO");
    }
    session->last_active = Clock::now();
    if (session->failed) {
      ++counters.refused_batches;
      return reply_error(
          routing_id, view->batch_id, wire::ErrorCode::session_failed,
          "an earlier batch of session " + std::to_string(session->id) +
              " failed; send HELLO and resend from the first unacknowledged message");
    }
    PendingBatch batch;
    batch.routing_id = routing_id;
    batch.session_id = session->id;
    batch.batch_id = view->batch_id;
    batch.slots.reserve(view->messages.size());
    for (const auto& message : view->messages) {
      // The session is the order group: inside one group commit the store
      // blocks later messages of a key after a refused one.
      IncomingMessage incoming_message{message.msg_id,  message.topic,   message.key,
                                       message.headers, message.payload, session->id};
      if (!session->refused_keys.empty() &&
          session->refused_keys.count(refusal_key(message.topic, message.key)) > 0) {
        batch.slots.push_back(kBlocked);
        continue;
      }
      batch.slots.push_back(static_cast<std::uint32_t>(incoming.size()));
      incoming.push_back(incoming_message);
      pending_bytes += message.payload.size() + message.headers.size() + message.key.size();
    }
    batch.frames = std::move(received);
    pending.push_back(std::move(batch));
  }

  void commit_pending() {
    if (pending.empty()) return;
    bool ok = false;
    try {
      auto started = Clock::now();
      if (incoming.empty()) {
        outcomes.clear();
      } else {
        store.append(incoming, outcomes);
      }
      counters.append_nanoseconds += static_cast<std::uint64_t>(
          std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - started).count());
      ok = true;
    } catch (const std::exception& error) {
      ++counters.storage_failures;
      logger->error("group commit of {} messages failed: {}", incoming.size(), error.what());
      for (const auto& batch : pending) {
        if (auto* session = find_session(batch.routing_id);
            session != nullptr && session->id == batch.session_id) {
          session->failed = true;
        }
        reply_error(batch.routing_id, batch.batch_id, wire::ErrorCode::storage_failure,
                    std::string("batch not stored: ") + error.what());
      }
    }
    if (ok) {
      ++counters.group_commits;
      counters.batches += pending.size();
      counters.messages += incoming.size();
      touched_topics.clear();
      for (const auto& batch : pending) {
        wire::Ack ack;
        ack.batch_id = batch.batch_id;
        ack.entries.reserve(batch.slots.size());
        Session* session = find_session(batch.routing_id);
        if (session != nullptr && session->id != batch.session_id) session = nullptr;
        for (auto slot : batch.slots) {
          wire::AckEntry entry;
          if (slot == kBlocked) {
            ++counters.blocked;
            entry.status = wire::AckStatus::blocked;
            entry.reason = kBlockedReason;
            ack.entries.push_back(std::move(entry));
            continue;
          }
          auto i = static_cast<std::size_t>(slot);
          const auto& outcome = outcomes[i];
          if ((outcome.status == AppendStatus::conflict ||
               outcome.status == AppendStatus::rejected ||
               outcome.status == AppendStatus::blocked) &&
              session != nullptr) {
            session->refused_keys.insert(refusal_key(incoming[i].topic, incoming[i].partition_key));
          }
          entry.offset = outcome.offset;
          switch (outcome.status) {
            case AppendStatus::stored:
              entry.status = wire::AckStatus::stored;
              note_topic(incoming[i].topic);
              break;
            case AppendStatus::duplicate:
              entry.status = wire::AckStatus::duplicate;
              break;
            case AppendStatus::conflict:
              entry.status = wire::AckStatus::conflict;
              entry.reason = "msg_id already stored with a different payload or topic";
              break;
            case AppendStatus::rejected:
              entry.status = wire::AckStatus::rejected;
              entry.reason = reject_text(outcome.reason);
              break;
            case AppendStatus::blocked:
              ++counters.blocked;
              entry.status = wire::AckStatus::blocked;
              entry.reason = kBlockedReason;
              break;
          }
          ack.entries.push_back(std::move(entry));
        }
        reply(batch.routing_id, ack);
      }
    }
    pending.clear();
    incoming.clear();
    pending_bytes = 0;
    if (ok && !waiting.empty()) wake_fetches();
  }

  static std::string refusal_key(std::string_view topic, std::string_view key) {
    std::string text;
    text.reserve(topic.size() + 1 + key.size());
    text.append(topic);
    text.push_back('\0');
    text.append(key);
    return text;
  }

  void note_topic(std::string_view topic) {
    if (std::find(touched_topics.begin(), touched_topics.end(), topic) == touched_topics.end()) {
      touched_topics.emplace_back(topic);
    }
  }

  // ---- other commands ---------------------------------------------------------

  void on_message(const std::string& routing_id, wire::Hello& hello) {
    if (sessions.size() >= options.max_sessions && find_session(routing_id) == nullptr) {
      auto oldest = std::min_element(sessions.begin(), sessions.end(), [](auto& a, auto& b) {
        return a.second.last_active < b.second.last_active;
      });
      sessions.erase(oldest);
    }
    Session& session = sessions[routing_id];
    session = Session{++next_session_id, false, hello.producer, Clock::now(), {}};
    ++counters.sessions_opened;
    logger->info("session {} opened by '{}'", session.id, hello.producer);
    reply(routing_id, wire::welcome_for(session.id, store.options().max_message_bytes,
                                        options.broker_name, options.limits));
  }

  void on_message(const std::string& routing_id, wire::Fetch& fetch) {
    ++counters.fetches;
    if (fetch.topic.empty()) {
      return reply_error(routing_id, fetch.request_id, wire::ErrorCode::invalid_value,
                         "FETCH needs a topic");
    }
    if (fetch.use_group_offset) {
      if (fetch.group.empty()) {
        return reply_error(routing_id, fetch.request_id, wire::ErrorCode::invalid_value,
                           "FETCH from the group offset needs a group");
      }
      try {
        fetch.from_offset = store.committed_offset(fetch.group, fetch.topic) + 1;
      } catch (const std::exception& error) {
        return reply_error(routing_id, fetch.request_id, wire::ErrorCode::storage_failure,
                           error.what());
      }
    }
    fetch.from_offset = std::max<std::uint64_t>(fetch.from_offset, 1);
    fetch.max_messages = fetch.max_messages == 0
                             ? options.default_fetch_messages
                             : std::min(fetch.max_messages, options.max_fetch_messages);
    fetch.max_bytes = static_cast<std::uint32_t>(
        fetch.max_bytes == 0 ? options.max_fetch_bytes
                             : std::min<std::size_t>(fetch.max_bytes, options.max_fetch_bytes));
    fetch.wait_ms = std::min(fetch.wait_ms, options.max_fetch_wait_ms);
    if (fetch.wait_ms == 0 || store.last_offset(fetch.topic) >= fetch.from_offset ||
        waiting.size() >= options.max_waiting_fetches) {
      return answer_fetch(routing_id, fetch);
    }
    waiting.push_back(
        WaitingFetch{routing_id, fetch, Clock::now() + std::chrono::milliseconds(fetch.wait_ms)});
  }

  void answer_fetch(const std::string& routing_id, const wire::Fetch& fetch) {
    wire::Messages reply_message;
    reply_message.request_id = fetch.request_id;
    reply_message.topic = fetch.topic;
    try {
      auto result =
          store.fetch(fetch.topic, fetch.from_offset, fetch.max_messages, fetch.max_bytes);
      reply_message.next_offset = result.next_offset;
      reply_message.last_offset = result.last_offset;
      reply_message.messages.reserve(result.messages.size());
      for (auto& stored : result.messages) {
        wire::StoredMessage message;
        message.offset = stored.offset;
        message.timestamp_ms = stored.stored_at_ms;
        message.msg_id = std::move(stored.msg_id);
        message.key = std::move(stored.partition_key);
        auto headers = wire::decode_headers(stored.headers, options.limits);
        if (headers) message.headers = std::move(headers.value());
        message.payload = std::move(stored.payload);
        reply_message.messages.push_back(std::move(message));
      }
    } catch (const std::exception& error) {
      return reply_error(routing_id, fetch.request_id, wire::ErrorCode::storage_failure,
                         error.what());
    }
    reply(routing_id, reply_message);
  }

  void wake_fetches() {
    auto ready = [&](const WaitingFetch& entry) {
      if (std::find(touched_topics.begin(), touched_topics.end(), entry.request.topic) ==
          touched_topics.end()) {
        return false;
      }
      return store.last_offset(entry.request.topic) >= entry.request.from_offset;
    };
    answer_waiting_if(ready);
  }

  template <typename Predicate>
  void answer_waiting_if(Predicate predicate) {
    std::vector<WaitingFetch> still;
    still.reserve(waiting.size());
    std::vector<WaitingFetch> due;
    for (auto& entry : waiting) {
      (predicate(entry) ? due : still).push_back(std::move(entry));
    }
    waiting = std::move(still);
    for (const auto& entry : due) answer_fetch(entry.routing_id, entry.request);
  }

  void on_message(const std::string& routing_id, wire::CommitOffset& commit) {
    if (commit.topic.empty() || commit.group.empty()) {
      return reply_error(routing_id, commit.request_id, wire::ErrorCode::invalid_value,
                         "COMMIT_OFFSET needs a topic and a group");
    }
    try {
      store.commit_offset(commit.group, commit.topic, commit.offset);
    } catch (const std::invalid_argument& error) {
      return reply_error(routing_id, commit.request_id, wire::ErrorCode::invalid_value,
                         error.what());
    } catch (const std::exception& error) {
      return reply_error(routing_id, commit.request_id, wire::ErrorCode::storage_failure,
                         error.what());
    }
    reply(routing_id,
          wire::OffsetCommitted{commit.request_id, commit.topic, commit.group, commit.offset});
  }

  void on_message(const std::string& routing_id, wire::Ping& ping) {
    reply(routing_id, wire::Pong{ping.nonce});
  }

  void on_message(const std::string& routing_id, wire::StatsRequest& request) {
    wire::StatsReply stats;
    stats.request_id = request.request_id;
    try {
      auto store_stats = store.stats();
      stats.counters = {
          {"stored", store_stats.stored},
          {"duplicates", store_stats.duplicates},
          {"conflicts", store_stats.conflicts},
          {"rejected", store_stats.rejected},
          {"dedup_entries", store_stats.dedup_entries},
          {"malformed", counters.malformed},
          {"refused_batches", counters.refused_batches},
          {"blocked", counters.blocked},
          {"storage_failures", counters.storage_failures},
          {"group_commits", counters.group_commits},
          {"batches", counters.batches},
          {"sessions_opened", counters.sessions_opened},
          {"sessions_active", sessions.size()},
          {"waiting_fetches", waiting.size()},
          {"replies_dropped", counters.replies_dropped},
      };
      for (auto& topic : store_stats.topics) {
        stats.topics.push_back({std::move(topic.topic), topic.message_count, topic.last_offset});
      }
    } catch (const std::exception& error) {
      return reply_error(routing_id, request.request_id, wire::ErrorCode::storage_failure,
                         error.what());
    }
    reply(routing_id, stats);
  }

  void on_message(const std::string&, wire::Pong&) {}
  void on_message(const std::string&, wire::ErrorReply& error) {
    logger->debug("peer reported error {}: {}", wire::error_code_name(error.code), error.message);
  }
  // Broker-to-client commands arriving at the broker.
  template <typename Other>
  void on_message(const std::string& routing_id, Other& message) {
    malformed(routing_id, 0,
              {wire::ErrorCode::unexpected_command,
               std::string(wire::command_name(wire::command_of(wire::AnyMessage(message)))) +
                   " is not a request the broker serves"});
  }

  // ---- ZAP (CURVE authorisation) ----------------------------------------------

  void serve_zap() {
    while (true) {
      auto request = wire::receive_frames(*zap, zmq::recv_flags::dontwait, 10);
      if (!request) return;
      auto frames = request->views();
      std::string request_id = frames.size() > 1 ? std::string(frames[1]) : std::string();
      bool allowed = false;
      std::string client_key;
      if (frames.size() >= 7 && frames[0] == "1.0" && frames[5] == "CURVE") {
        client_key = std::string(frames[6]);
        allowed = allowed_clients.empty() ||
                  std::find(allowed_clients.begin(), allowed_clients.end(), client_key) !=
                      allowed_clients.end();
      }
      if (!allowed) {
        logger->warn("refused CURVE client {}", binary_to_z85(client_key));
      }
      std::string_view reply_frames[] = {
          "1.0", request_id, allowed ? "200" : "400", allowed ? "OK" : "client key not allowed",
          "",    ""};
      for (std::size_t i = 0; i < std::size(reply_frames); ++i) {
        auto flags =
            i + 1 < std::size(reply_frames) ? zmq::send_flags::sndmore : zmq::send_flags::none;
        zap->send(zmq::buffer(reply_frames[i].data(), reply_frames[i].size()), flags);
      }
    }
  }

  // ---- loop -------------------------------------------------------------------

  std::chrono::milliseconds next_timeout(Clock::time_point now) const {
    auto deadline = now + std::chrono::milliseconds(100);  // re-check the stop flag
    for (const auto& entry : waiting) deadline = std::min(deadline, entry.deadline);
    if (maintenance_enabled()) deadline = std::min(deadline, next_maintenance);
    auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now);
    return std::max(wait, std::chrono::milliseconds(0));
  }

  bool maintenance_enabled() const {
    return store.options().retention.count() > 0 || store.options().dedup_window.count() > 0;
  }

  void maintain(Clock::time_point now) {
    if (!maintenance_enabled() || now < next_maintenance) return;
    next_maintenance = now + options.maintenance_interval;
    try {
      auto result = store.run_maintenance();
      if (result.bodies_deleted > 0 || result.dedup_entries_deleted > 0) {
        logger->debug("maintenance removed {} bodies, {} dedup entries", result.bodies_deleted,
                      result.dedup_entries_deleted);
      }
      if (result.more) next_maintenance = now;
    } catch (const std::exception& error) {
      logger->error("maintenance failed: {}", error.what());
    }
  }

  void run() {
    logger->info("serving on {}", endpoint);
    while (!stop.load(std::memory_order_relaxed)) {
      auto now = Clock::now();
      std::vector<zmq::pollitem_t> items = {{router.handle(), 0, ZMQ_POLLIN, 0}};
      if (zap) items.push_back({zap->handle(), 0, ZMQ_POLLIN, 0});
      try {
        zmq::poll(items, next_timeout(now));
      } catch (const zmq::error_t& error) {
        if (error.num() != EINTR) throw;
        continue;
      }
      if (zap && (items[1].revents & ZMQ_POLLIN) != 0) serve_zap();
      if ((items[0].revents & ZMQ_POLLIN) != 0) read_round();
      now = Clock::now();
      if (!waiting.empty()) {
        answer_waiting_if([now](const WaitingFetch& entry) { return entry.deadline <= now; });
      }
      maintain(now);
    }
    shutdown();
  }

  void shutdown() {
    logger->info("stopping: committing and acknowledging what was received");
    // Bounded: a peer that keeps sending cannot keep the broker alive.
    for (int round = 0; round < 20 && read_round(); ++round) {
    }
    answer_waiting_if([](const WaitingFetch&) { return true; });
    router.set(zmq::sockopt::linger, static_cast<int>(options.shutdown_linger.count()));
    router.close();
    if (zap) zap->close();
    logger->info("stopped after {} group commits, {} messages", counters.group_commits,
                 counters.messages);
  }

  static constexpr std::uint32_t kBlocked = 0xffffffffu;
  static constexpr const char* kBlockedReason =
      "an earlier message of this topic and key was refused in this session";

  Store& store;
  ServerOptions options;
  std::shared_ptr<spdlog::logger> logger;
  zmq::context_t context;
  zmq::socket_t router;
  std::optional<zmq::socket_t> zap;
  std::vector<std::string> allowed_clients;  // binary 32-byte keys
  std::string endpoint;
  std::atomic<bool> stop{false};
  ServerCounters counters;

  std::unordered_map<std::string, Session> sessions;
  std::uint64_t next_session_id = 0;
  std::vector<PendingBatch> pending;
  std::vector<IncomingMessage> incoming;
  std::vector<AppendOutcome> outcomes;
  std::size_t pending_bytes = 0;
  std::vector<std::string> touched_topics;
  std::vector<WaitingFetch> waiting;
  Clock::time_point next_maintenance{};
};

static_assert(std::atomic<bool>::is_always_lock_free, "request_stop must be signal-safe");

Server::Server(Store& store, ServerOptions options)
    : impl_(std::make_unique<Impl>(store, std::move(options))) {}

Server::~Server() noexcept = default;

const std::string& Server::endpoint() const noexcept {
  return impl_->endpoint;
}

void Server::run() {
  impl_->run();
}

void Server::request_stop() noexcept {
  impl_->stop.store(true, std::memory_order_relaxed);
}

ServerCounters Server::counters() const {
  return impl_->counters;
}

}  // namespace broker
