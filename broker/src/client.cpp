#include "broker/client.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "wire/zmq_io.hpp"

namespace broker {
namespace {

using SteadyClock = std::chrono::steady_clock;

// Request ids of the blocking helpers start high so that they do not collide
// with the batch ids a caller chooses (ERROR replies name either).
constexpr std::uint64_t kFirstRequestId = std::uint64_t{1} << 62;

wire::Error timeout_error(std::string_view what) {
  return wire::Error{wire::ErrorCode::timeout,
                     "no " + std::string(what) + " from the broker in time"};
}

wire::Error from_reply(const wire::ErrorReply& reply) {
  return wire::Error{reply.code, reply.message};
}

// What the socket monitor reports: a connection that broke after it was
// established (closed, reset, heartbeat timeout) or whose handshake failed.
// CLOSED and CONNECT_RETRIED are left out: they also come with every refused
// connection attempt while the broker is down, which ZeroMQ retries by itself
// and which loses nothing.
constexpr int kWatchedEvents =
    ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL;

// ZMQ_HEARTBEAT_TTL is carried in deciseconds in a 16-bit field.
constexpr std::int64_t kMaxHeartbeatTtlMs = 6'553'500;

}  // namespace

Client::Client(std::string endpoint, ClientOptions options)
    : endpoint_(std::move(endpoint)), options_(std::move(options)), context_(1) {
  next_request_id_ = kFirstRequestId;
  open_socket();
}

Client::~Client() noexcept {
  close_socket();
}

void Client::open_socket() {
  socket_ = zmq::socket_t(context_, zmq::socket_type::dealer);
  socket_.set(zmq::sockopt::linger, 0);
  socket_.set(zmq::sockopt::sndhwm, options_.send_high_water_mark);
  socket_.set(zmq::sockopt::rcvhwm, options_.receive_high_water_mark);
  if (options_.heartbeat_interval.count() > 0) {
    auto timeout = std::max(options_.heartbeat_timeout, options_.heartbeat_interval).count();
    socket_.set(zmq::sockopt::heartbeat_ivl, static_cast<int>(options_.heartbeat_interval.count()));
    socket_.set(zmq::sockopt::heartbeat_timeout, static_cast<int>(timeout));
    socket_.set(zmq::sockopt::heartbeat_ttl,
                static_cast<int>(std::min<std::int64_t>(timeout, kMaxHeartbeatTtlMs)));
  }
  if (options_.curve) {
    socket_.set(zmq::sockopt::curve_serverkey, options_.curve->server_public_key);
    socket_.set(zmq::sockopt::curve_publickey, options_.curve->public_key);
    socket_.set(zmq::sockopt::curve_secretkey, options_.curve->secret_key);
  }
  // One inproc name per socket, so a fresh socket never meets the events of
  // the one before it. Watched before connecting: no event is missed.
  auto events = "inproc://outbox-client-events-" + std::to_string(++monitors_opened_);
  if (zmq_socket_monitor(socket_.handle(), events.c_str(), kWatchedEvents) != 0) {
    throw zmq::error_t();
  }
  monitor_ = zmq::socket_t(context_, zmq::socket_type::pair);
  monitor_.set(zmq::sockopt::linger, 0);
  monitor_.connect(events);
  socket_.connect(endpoint_);
}

void Client::close_socket() noexcept {
  if (socket_.handle() != nullptr) zmq_socket_monitor(socket_.handle(), nullptr, 0);
  monitor_.close();
  socket_.close();
}

void Client::reconnect() {
  close_socket();
  kept_.clear();
  session_id_ = 0;
  open_socket();
}

std::optional<wire::Error> Client::read_connection_events() {
  std::optional<wire::Error> broken;
  while (true) {
    // Frame 0: event id (16 bits) and value (32 bits), native byte order;
    // frame 1: the endpoint.
    auto message = wire::receive_frames(monitor_, zmq::recv_flags::dontwait, 2);
    if (!message) return broken;
    if (message->frames.empty() || message->frames[0].size() < 6) continue;
    const auto* event = static_cast<const char*>(message->frames[0].data());
    std::uint16_t id = 0;
    std::int32_t value = 0;
    std::memcpy(&id, event, sizeof id);
    std::memcpy(&value, event + sizeof id, sizeof value);
    if (id == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) {
      broken = wire::Error{wire::ErrorCode::disconnected,
                           "the broker at " + endpoint_ +
                               " refused this client's credentials (CURVE key not allowed, "
                               "status " +
                               std::to_string(value) + ")"};
    } else if (id == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL && !broken) {
      broken = wire::Error{wire::ErrorCode::disconnected, "the ZeroMQ handshake with " + endpoint_ +
                                                              " failed (protocol error " +
                                                              std::to_string(value) + ")"};
    } else if (id == ZMQ_EVENT_DISCONNECTED && !broken) {
      broken = wire::Error{wire::ErrorCode::disconnected,
                           "connection to " + endpoint_ +
                               " lost (closed, reset, or silent past the heartbeat timeout)"};
    }
  }
}

std::optional<wire::Result<wire::AnyMessage>> Client::receive_from_socket(
    std::chrono::milliseconds timeout) {
  auto deadline = SteadyClock::now() + timeout;
  while (true) {
    zmq::pollitem_t items[] = {{socket_.handle(), 0, ZMQ_POLLIN, 0},
                               {monitor_.handle(), 0, ZMQ_POLLIN, 0}};
    // Rounded up: a remainder under a millisecond truncated to 0 made this
    // loop poll without waiting until the deadline passed, a busy wait of up
    // to a millisecond on every receive that timed out (under repeated
    // connection cuts, 160,000 polls in a relay's drain of 1.7 s).
    auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - SteadyClock::now());
    try {
      zmq::poll(items, 2, std::max(left, std::chrono::milliseconds(0)));
    } catch (const zmq::error_t& error) {
      if (error.num() != EINTR) throw;
    }
    // Replies that arrived before the connection broke are still good.
    if ((items[0].revents & ZMQ_POLLIN) != 0) {
      auto message = wire::receive_message(socket_, zmq::recv_flags::dontwait, options_.limits);
      if (message) return message;
    }
    if ((items[1].revents & ZMQ_POLLIN) != 0) {
      if (auto broken = read_connection_events()) return wire::Result<wire::AnyMessage>(*broken);
    }
    if (SteadyClock::now() >= deadline) return std::nullopt;
  }
}

std::optional<wire::Result<wire::AnyMessage>> Client::receive(std::chrono::milliseconds timeout) {
  if (!kept_.empty()) {
    auto front = std::move(kept_.front());
    kept_.pop_front();
    return front;
  }
  return receive_from_socket(timeout);
}

template <typename Reply, typename Matches>
wire::Result<Reply> Client::await(Matches matches, std::uint64_t request_id,
                                  std::chrono::milliseconds timeout) {
  auto deadline = SteadyClock::now() + timeout;
  while (true) {
    auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - SteadyClock::now());
    auto received = receive_from_socket(std::max(left, std::chrono::milliseconds(0)));
    if (!received)
      return timeout_error(
          std::string(wire::command_name(wire::command_of(wire::AnyMessage(Reply{})))));
    if (!received->ok()) return received->error();
    auto& message = received->value();
    if (auto* reply = std::get_if<Reply>(&message); reply != nullptr && matches(*reply)) {
      return std::move(*reply);
    }
    if (auto* error = std::get_if<wire::ErrorReply>(&message);
        error != nullptr && (error->request_id == request_id || error->request_id == 0)) {
      return from_reply(*error);
    }
    // An answer to something else in flight (a pipelined batch): keep it in order.
    kept_.push_back(std::move(*received));
  }
}

wire::Result<wire::Welcome> Client::hello(const std::string& producer,
                                          std::chrono::milliseconds timeout) {
  return hello(wire::Hello{producer, 0, {}, 0}, timeout);
}

wire::Result<wire::Welcome> Client::hello(const wire::Hello& request,
                                          std::chrono::milliseconds timeout) {
  if (!send_hello(request)) return wire::Error{wire::ErrorCode::busy, "send queue full"};
  return await_welcome(timeout);
}

bool Client::send_hello(const wire::Hello& request) {
  forget_connection_events();
  return wire::send_message(socket_, request, zmq::send_flags::dontwait);
}

wire::Result<wire::Welcome> Client::await_welcome(std::chrono::milliseconds timeout) {
  auto welcome = await<wire::Welcome>([](const wire::Welcome&) { return true; }, 0, timeout);
  if (welcome) session_id_ = welcome->session_id;
  return welcome;
}

bool Client::send_publish(std::uint64_t batch_id, std::span<const wire::OutgoingMessage> messages) {
  return send_publish(session_id_, batch_id, messages);
}

bool Client::send_publish(std::uint64_t session_id, std::uint64_t batch_id,
                          std::span<const wire::OutgoingMessage> messages) {
  std::string body;
  wire::begin_publish_body(body, session_id, batch_id);
  for (const auto& message : messages) {
    wire::append_publish_message(body, message.msg_id, message.topic, message.key, message.headers,
                                 message.payload);
  }
  wire::finish_publish_body(body, static_cast<std::uint32_t>(messages.size()));
  return send_publish_body(body);
}

bool Client::send_resume(std::uint64_t previous_session_id, std::uint64_t from_batch_id) {
  return wire::send_message(socket_, wire::Resume{session_id_, previous_session_id, from_batch_id},
                            zmq::send_flags::dontwait);
}

bool Client::send_publish_body(const std::string& body) {
  static const std::string tag = wire::encode_tag();
  const char command = static_cast<char>(wire::Command::publish);
  return wire::send_frames(socket_, tag, std::string_view(&command, 1), body,
                           zmq::send_flags::dontwait);
}

wire::Result<wire::Ack> Client::publish(std::uint64_t batch_id,
                                        std::span<const wire::OutgoingMessage> messages,
                                        std::chrono::milliseconds timeout) {
  return publish(session_id_, batch_id, messages, timeout);
}

wire::Result<wire::Ack> Client::publish(std::uint64_t session_id, std::uint64_t batch_id,
                                        std::span<const wire::OutgoingMessage> messages,
                                        std::chrono::milliseconds timeout) {
  if (!send_publish(session_id, batch_id, messages)) {
    return wire::Error{wire::ErrorCode::busy, "send queue full"};
  }
  return await<wire::Ack>([batch_id](const wire::Ack& ack) { return ack.batch_id == batch_id; },
                          batch_id, timeout);
}

wire::Result<wire::Messages> Client::fetch(wire::Fetch request, std::chrono::milliseconds timeout) {
  forget_connection_events();
  request.request_id = next_request_id_++;
  if (!wire::send_message(socket_, request, zmq::send_flags::dontwait)) {
    return wire::Error{wire::ErrorCode::busy, "send queue full"};
  }
  auto id = request.request_id;
  return await<wire::Messages>([id](const wire::Messages& m) { return m.request_id == id; }, id,
                               timeout + std::chrono::milliseconds(request.wait_ms));
}

wire::Result<wire::OffsetCommitted> Client::commit_offset(const std::string& topic,
                                                          const std::string& group,
                                                          std::uint64_t offset,
                                                          std::chrono::milliseconds timeout) {
  forget_connection_events();
  auto id = next_request_id_++;
  if (!wire::send_message(socket_, wire::CommitOffset{id, topic, group, offset},
                          zmq::send_flags::dontwait)) {
    return wire::Error{wire::ErrorCode::busy, "send queue full"};
  }
  return await<wire::OffsetCommitted>(
      [id](const wire::OffsetCommitted& m) { return m.request_id == id; }, id, timeout);
}

wire::Result<wire::StatsReply> Client::stats(std::chrono::milliseconds timeout) {
  forget_connection_events();
  auto id = next_request_id_++;
  if (!wire::send_message(socket_, wire::StatsRequest{id}, zmq::send_flags::dontwait)) {
    return wire::Error{wire::ErrorCode::busy, "send queue full"};
  }
  return await<wire::StatsReply>([id](const wire::StatsReply& m) { return m.request_id == id; }, id,
                                 timeout);
}

wire::Result<wire::Pong> Client::ping(std::chrono::milliseconds timeout) {
  forget_connection_events();
  auto nonce = next_request_id_++;
  if (!wire::send_message(socket_, wire::Ping{nonce}, zmq::send_flags::dontwait)) {
    return wire::Error{wire::ErrorCode::busy, "send queue full"};
  }
  return await<wire::Pong>([nonce](const wire::Pong& m) { return m.nonce == nonce; }, nonce,
                           timeout);
}

bool Client::send_request(const wire::AnyMessage& request) {
  return wire::send_message(socket_, request, zmq::send_flags::dontwait);
}

bool Client::send_raw(std::span<const std::string> frames) {
  if (frames.empty()) {
    return socket_.send(zmq::message_t(), zmq::send_flags::dontwait).has_value();
  }
  for (std::size_t i = 0; i < frames.size(); ++i) {
    auto flags = zmq::send_flags::dontwait;
    if (i + 1 < frames.size()) flags = flags | zmq::send_flags::sndmore;
    if (!socket_.send(zmq::buffer(frames[i].data(), frames[i].size()), flags)) return false;
  }
  return true;
}

}  // namespace broker
