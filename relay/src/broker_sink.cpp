#include "relay/broker_sink.hpp"

#include <algorithm>
#include <deque>
#include <stdexcept>
#include <unordered_map>
#include <variant>

#include <zmq.h>
#include <zmq.hpp>

#include "broker/client.hpp"
#include "deadline.hpp"
#include "outbox/error.hpp"
#include "wire/zmq_io.hpp"

namespace relay {
namespace {

broker::ClientOptions client_options(const BrokerSinkOptions& options) {
  broker::ClientOptions client;
  client.send_high_water_mark = options.send_high_water_mark;
  if (options.curve) {
    char public_key[41] = {};
    if (options.curve->server_public_key.size() != 40) {
      throw outbox::Error(outbox::ErrorKind::io,
                          "the broker's CURVE public key must be 40 Z85 characters");
    }
    if (options.curve->client_secret_key.size() != 40 ||
        zmq_curve_public(public_key, options.curve->client_secret_key.c_str()) != 0) {
      throw outbox::Error(outbox::ErrorKind::io,
                          "the relay's CURVE secret key is not a valid 40-character Z85 key");
    }
    client.curve = broker::CurveClientConfig{options.curve->server_public_key, public_key,
                                             options.curve->client_secret_key};
  }
  return client;
}

DeliveryStatus from_wire(wire::AckStatus status) {
  switch (status) {
    case wire::AckStatus::stored:
      return DeliveryStatus::stored;
    case wire::AckStatus::duplicate:
      return DeliveryStatus::duplicate;
    case wire::AckStatus::conflict:
      return DeliveryStatus::conflict;
    case wire::AckStatus::rejected:
      return DeliveryStatus::rejected;
    case wire::AckStatus::blocked:
      return DeliveryStatus::blocked;
  }
  return DeliveryStatus::blocked;
}

// What the broker announced, clamped to what the wire format can carry at all
// (str16 fields, u16 header count), so that the encoder never meets a field it
// cannot write. An unannounced (0) limit falls back to the wire defaults.
SinkLimits limits_from(const wire::Welcome& welcome) {
  const wire::Limits defaults;
  auto pick = [](std::uint32_t announced, std::size_t fallback, std::size_t wire_max) {
    return std::min<std::size_t>(announced != 0 ? announced : fallback, wire_max);
  };
  constexpr std::size_t str16 = 0xffff, u32 = 0xffffffff;
  SinkLimits limits;
  limits.max_batch_messages = pick(welcome.max_batch_messages, defaults.max_batch_messages, u32);
  limits.max_batch_bytes = pick(welcome.max_body_bytes, defaults.max_body_bytes, u32);
  limits.max_msg_id_bytes = pick(welcome.max_msg_id_bytes, defaults.max_msg_id_bytes, str16);
  limits.max_topic_bytes = pick(welcome.max_name_bytes, defaults.max_name_bytes, str16);
  limits.max_key_bytes = pick(welcome.max_key_bytes, defaults.max_key_bytes, str16);
  limits.max_headers = pick(welcome.max_headers, defaults.max_headers, str16);
  limits.max_header_name_bytes =
      pick(welcome.max_header_name_bytes, defaults.max_msg_id_bytes, str16);
  limits.max_header_value_bytes =
      pick(welcome.max_header_value_bytes, defaults.max_header_value_bytes, u32);
  limits.max_payload_bytes = pick(welcome.max_payload_bytes, defaults.max_payload_bytes, u32);
  limits.max_message_bytes = pick(welcome.max_message_bytes, u32, u32);
  return limits;
}

// A PUBLISH body for `messages`; `headers` is scratch space kept between calls.
void encode_publish(std::string& body, std::vector<wire::Header>& headers, std::uint64_t session_id,
                    std::uint64_t batch_id, std::span<const outbox::PendingMessage> messages) {
  body.clear();
  wire::begin_publish_body(body, session_id, batch_id);
  for (const auto& message : messages) {
    headers.clear();
    for (const auto& header : message.headers) headers.push_back({header.name, header.value});
    wire::append_publish_message(body, message.msg_id, message.topic,
                                 message.partition_key.value_or(std::string()), headers,
                                 message.payload);
  }
  wire::finish_publish_body(body, static_cast<std::uint32_t>(messages.size()));
}

// A failed event about the batch `batch_id` (0: the whole connection).
SinkEvent failed_event(std::uint64_t batch_id, std::string error) {
  SinkEvent event;
  event.kind = SinkEvent::Kind::failed;
  event.batch_id = batch_id;
  event.error = std::move(error);
  return event;
}

std::string refused_batch_text(const wire::ErrorReply& error, std::uint64_t batch_id) {
  return "broker refused batch " + std::to_string(batch_id) + " (" +
         std::string(wire::error_code_name(error.code)) + "): " + error.message;
}

std::string welcome_error(const wire::Error& error, std::chrono::milliseconds timeout) {
  if (error.code == wire::ErrorCode::timeout) {
    return "no answer from the broker within " + std::to_string(timeout.count()) + " ms";
  }
  if (error.code == wire::ErrorCode::disconnected) return error.message;
  if (error.code == wire::ErrorCode::stale_epoch) {
    // Normally the relay then finds its lease lost and goes standby.
    return "broker refused the session (stale_epoch): " + error.message +
           "; should this relay still hold the lease, the database is an older copy "
           "(restored from a backup): see docs/operations.md, Backups";
  }
  return "broker refused the session: " + error.message;
}

}  // namespace

struct BrokerSink::Impl {
  explicit Impl(BrokerSinkOptions options_in)
      : options(std::move(options_in)),
        client(std::make_unique<broker::Client>(options.endpoint, client_options(options))) {}

  BrokerSinkOptions options;
  std::unique_ptr<broker::Client> client;  // the open session's connection
  // A second connection whose HELLO went out ahead of need: when the session's
  // connection breaks, the next session is already open (or its WELCOME on
  // the way), so a cut costs neither a new socket nor a handshake through
  // whatever cut it. Measured behind a proxy cutting every 2 KB-400 KB: the
  // fresh socket and HELLO took 1-2.5 ms of every cut. Made ready at the first
  // poll() after a session opened that finds no reply waiting (the first
  // batches are out by then; a waiting reply is not delayed by it), and
  // only after a session opened, so a broker that is down sees no extra
  // connection attempts.
  std::unique_ptr<broker::Client> spare;
  std::optional<wire::Hello> spare_hello;  // what the spare's HELLO carried
  bool spare_wanted = false;
  bool used = false;
  SinkLimits limits = limits_from(wire::Welcome{});
  SinkLease lease;
  // The session the last batch went out on: the one resume() asks about
  // (a session that broke before it sent anything leaves it unchanged).
  std::uint64_t publishing_session = 0;
  bool awaiting_resumed = false;
  std::deque<SinkEvent> resumed_events;  // from RESUMED, handed out by poll()
  std::string body;
  std::vector<wire::Header> headers;

  wire::Hello hello() const {
    return wire::Hello{options.producer, 0, lease.origin,
                       static_cast<std::uint64_t>(std::max<std::int64_t>(lease.epoch, 0))};
  }

  void prepare_spare() {
    spare_wanted = false;
    spare_hello.reset();
    if (spare) {
      spare->reconnect();
    } else {
      spare = std::make_unique<broker::Client>(options.endpoint, client_options(options));
    }
    auto request = hello();
    if (spare->send_hello(request)) spare_hello = std::move(request);
  }
};

BrokerSink::BrokerSink(BrokerSinkOptions options) {
  try {
    impl_ = std::make_unique<Impl>(std::move(options));
  } catch (const zmq::error_t& error) {
    throw outbox::Error(outbox::ErrorKind::io,
                        "cannot use broker endpoint: " + std::string(error.what()));
  }
}

BrokerSink::~BrokerSink() noexcept = default;

void BrokerSink::set_lease(SinkLease lease) {
  impl_->lease = std::move(lease);
  impl_->spare_hello.reset();  // its HELLO carried the old epoch
}

SessionResult BrokerSink::open_session(std::chrono::milliseconds timeout) {
  auto& impl = *impl_;
  // The broker fences by origin and epoch: no local lease check is needed.
  auto request = impl.hello();
  impl.spare_wanted = false;
  impl.awaiting_resumed = false;
  impl.resumed_events.clear();
  if (impl.used && impl.spare_hello == request) {
    // The old connection goes out of use; the spare's session takes over.
    std::swap(impl.client, impl.spare);
    impl.spare_hello.reset();
  } else {
    // After any trouble the old connection's state is unknown: start afresh.
    if (impl.used) impl.client->reconnect();
    if (!impl.client->send_hello(request)) {
      return SessionResult::failed("the HELLO could not be queued");
    }
  }
  impl.used = true;
  auto welcome = impl.client->await_welcome(timeout);
  if (!welcome) return SessionResult::failed(welcome_error(welcome.error(), timeout));
  impl_->limits = limits_from(*welcome);
  impl_->spare_wanted = true;
  return SessionResult::opened();
}

bool BrokerSink::resume(std::uint64_t first_batch_id) {
  auto& impl = *impl_;
  if (impl.publishing_session == 0 || impl.publishing_session == impl.client->session_id()) {
    return false;
  }
  if (!impl.client->send_resume(impl.publishing_session, first_batch_id)) return false;
  impl.awaiting_resumed = true;
  return true;
}

bool BrokerSink::send(std::uint64_t batch_id, std::span<const outbox::PendingMessage> messages) {
  impl_->publishing_session = impl_->client->session_id();
  encode_publish(impl_->body, impl_->headers, impl_->client->session_id(), batch_id, messages);
  return impl_->client->send_publish_body(impl_->body);
}

namespace {

SinkEvent acked_event(wire::Ack& ack) {
  SinkEvent event;
  event.batch_id = ack.batch_id;
  event.deliveries.reserve(ack.entries.size());
  for (auto& entry : ack.entries) {
    event.deliveries.push_back(
        Delivery{from_wire(entry.status), entry.offset, std::move(entry.reason)});
  }
  return event;
}

}  // namespace

std::optional<SinkEvent> BrokerSink::poll(std::chrono::milliseconds timeout) {
  auto& impl = *impl_;
  if (!impl.resumed_events.empty()) {
    auto event = std::move(impl.resumed_events.front());
    impl.resumed_events.pop_front();
    return event;
  }
  // A reply that is already there goes first; the spare's socket is made
  // while waiting for one.
  auto received = impl_->client->receive(std::chrono::milliseconds(0));
  if (!received && impl_->spare_wanted) impl_->prepare_spare();
  if (!received) received = impl_->client->receive(timeout);
  if (!received) return std::nullopt;
  SinkEvent event;
  if (!received->ok()) {
    // Batch id 0: the connection broke (everything in flight on it is in
    // doubt) or a reply could not be read (it cannot say which batch).
    event.kind = SinkEvent::Kind::failed;
    event.error = received->error().code == wire::ErrorCode::disconnected
                      ? received->error().message
                      : "unreadable reply from the broker: " + received->error().message;
    return event;
  }
  auto& message = received->value();
  if (auto* ack = std::get_if<wire::Ack>(&message)) return acked_event(*ack);
  if (auto* resumed = std::get_if<wire::Resumed>(&message); resumed && impl.awaiting_resumed) {
    impl.awaiting_resumed = false;
    for (auto& ack : resumed->acks) impl.resumed_events.push_back(acked_event(ack));
    impl.resumed_events.push_back(SinkEvent{SinkEvent::Kind::resumed, 0, {}, {}});
    auto first = std::move(impl.resumed_events.front());
    impl.resumed_events.pop_front();
    return first;
  }
  auto* error = std::get_if<wire::ErrorReply>(&message);
  if (error != nullptr && impl.awaiting_resumed && error->request_id == 0) {
    // Nothing but RESUME is outstanding: a broker that does not know it (or
    // has forgotten this session) refused it. Nothing is resumed.
    impl.awaiting_resumed = false;
    return SinkEvent{SinkEvent::Kind::resumed, 0, {}, {}};
  }
  if (error != nullptr) {
    return failed_event(error->request_id, refused_batch_text(*error, error->request_id));
  }
  return std::nullopt;  // a stray answer (PONG, ...) is not about our batches
}

SinkLimits BrokerSink::limits() const {
  return impl_->limits;
}

std::string BrokerSink::describe() const {
  return "broker " + impl_->options.endpoint;
}

}  // namespace relay

namespace relay {

// ---- SharedBrokerConnection ---------------------------------------------------

namespace {
constexpr unsigned kSlotShift = 32;
constexpr std::uint64_t kLocalBatchMask = (std::uint64_t{1} << kSlotShift) - 1;
// HELLO ids (and the PING nonces that fence them) have the top bit set: an
// ERROR's request_id names either a HELLO or a batch (slot << 32 | id, slots
// below 2^31), never both.
constexpr std::uint64_t kFirstHelloToken = (std::uint64_t{1} << 63) | 1;
}  // namespace

struct SharedBrokerConnection::Impl {
  // What one database's Sink keeps; owned by the channel, registered here.
  struct Channel {
    std::uint32_t slot = 0;
    SinkLease lease;
    std::uint64_t session_id = 0;  // 0: none open
    SinkLimits limits = limits_from(wire::Welcome{});
    std::deque<SinkEvent> events;
    // The answer to this channel's HELLO in flight (hello_token), once it came.
    std::uint64_t hello_token = 0;
    std::chrono::steady_clock::time_point hello_sent_at{};
    std::optional<wire::Result<wire::Welcome>> hello_answer;
  };

  explicit Impl(BrokerSinkOptions options_in)
      : options(std::move(options_in)),
        client(std::make_unique<broker::Client>(options.endpoint, client_options(options))) {}

  BrokerSinkOptions options;
  std::unique_ptr<broker::Client> client;
  std::unordered_map<std::uint32_t, Channel*> channels;
  // HELLOs in flight in sending order, by (slot, token). Each HELLO carries
  // its token as hello_id, and the broker's answer names it (WELCOME's
  // hello_id, ERROR's request_id). A broker older than hello ids refuses
  // them (ERROR invalid_value naming no request); the connection then sends
  // HELLOs without, and takes their answers in order (the broker answers a
  // connection's requests in order). Each HELLO is followed by a PING whose
  // nonce is its token: its PONG comes after the HELLO's answer, so a PONG
  // drops every HELLO up to its token that got no answer (one the broker
  // dropped).
  std::deque<std::pair<std::uint32_t, std::uint64_t>> hellos;
  std::uint64_t next_hello_token = kFirstHelloToken;
  bool hello_ids = true;
  std::uint64_t unmatched_answers = 0;  // answers naming no HELLO in flight
  // After a HELLO went unanswered, others fail at once until then, instead of
  // each waiting the full timeout while the broker is away.
  std::chrono::steady_clock::time_point unanswered_until{};
  std::string unanswered_error;
  std::string body;
  std::vector<wire::Header> headers;

  // Everything on the connection is in doubt: every channel with a session
  // or a HELLO in flight gets a failure, and the next sessions go on a fresh
  // connection, so nothing of the old ones is queued behind their HELLOs.
  void connection_broke(const std::string& why) {
    for (auto& [slot, channel] : channels) {
      if (channel->session_id != 0) channel->events.push_back(failed_event(0, why));
      channel->session_id = 0;
      if (channel->hello_token != 0 && !channel->hello_answer) {
        channel->hello_answer = wire::Error{wire::ErrorCode::disconnected, why};
      }
    }
    hellos.clear();
    hello_ids = true;  // the broker behind the new connection may know them
    client->reconnect();
  }

  void route(wire::Result<wire::AnyMessage> received) {
    if (!received.ok()) {
      connection_broke(received.error().code == wire::ErrorCode::disconnected
                           ? received.error().message
                           : "unreadable reply from the broker: " + received.error().message);
      return;
    }
    auto& message = received.value();
    if (auto* pong = std::get_if<wire::Pong>(&message)) {
      while (!hellos.empty() && hellos.front().second <= pong->nonce) {
        auto [slot, token] = hellos.front();
        hellos.pop_front();
        auto channel = channels.find(slot);
        if (channel != channels.end() && channel->second->hello_token == token &&
            !channel->second->hello_answer) {
          channel->second->hello_answer =
              wire::Error{wire::ErrorCode::timeout, "the broker did not answer the HELLO"};
        }
      }
      return;
    }
    auto* welcome = std::get_if<wire::Welcome>(&message);
    auto* error = std::get_if<wire::ErrorReply>(&message);
    const std::uint64_t named = welcome != nullptr ? welcome->hello_id
                                : error != nullptr ? error->request_id
                                                   : 0;
    if (named >= kFirstHelloToken || (welcome != nullptr && named != 0)) {
      // It names the HELLO it answers: that one, or none (a duplicated reply).
      auto hello = std::find_if(hellos.begin(), hellos.end(),
                                [&](const auto& entry) { return entry.second == named; });
      if (hello == hellos.end()) {
        ++unmatched_answers;
        return;
      }
      auto [slot, token] = *hello;
      hellos.erase(hello);
      answer_hello(slot, token, welcome, error);
      return;
    }
    if (welcome != nullptr || (error != nullptr && error->request_id == 0)) {
      if (hellos.empty()) {  // not ours to place
        if (welcome != nullptr) ++unmatched_answers;
        return;
      }
      if (hello_ids && error != nullptr && error->code == wire::ErrorCode::invalid_value) {
        hello_ids = false;  // a broker older than hello ids: this HELLO is tried again without
      }
      auto [slot, token] = hellos.front();
      hellos.pop_front();
      answer_hello(slot, token, welcome, error);
      return;
    }
    std::uint64_t wire_id = 0;
    if (auto* ack = std::get_if<wire::Ack>(&message)) {
      wire_id = ack->batch_id;
    } else if (error != nullptr) {
      wire_id = error->request_id;
    } else {
      return;  // PONG and other answers are not about batches
    }
    auto channel = channels.find(static_cast<std::uint32_t>(wire_id >> kSlotShift));
    if (channel == channels.end()) return;  // a database closed meanwhile
    const auto local_id = wire_id & kLocalBatchMask;
    if (auto* ack = std::get_if<wire::Ack>(&message)) {
      SinkEvent event;
      event.batch_id = local_id;
      event.deliveries.reserve(ack->entries.size());
      for (auto& entry : ack->entries) {
        event.deliveries.push_back(
            Delivery{from_wire(entry.status), entry.offset, std::move(entry.reason)});
      }
      channel->second->events.push_back(std::move(event));
    } else {
      channel->second->events.push_back(
          failed_event(local_id, refused_batch_text(*error, local_id)));
    }
  }

  void answer_hello(std::uint32_t slot, std::uint64_t token, wire::Welcome* welcome,
                    const wire::ErrorReply* error) {
    auto channel = channels.find(slot);
    if (channel == channels.end() || channel->second->hello_token != token) return;
    if (welcome != nullptr) {
      channel->second->hello_answer = std::move(*welcome);
    } else {
      channel->second->hello_answer = wire::Error{error->code, error->message};
    }
  }

  std::size_t pump(std::chrono::milliseconds timeout) {
    std::size_t routed = 0;
    auto received = client->receive(timeout);
    while (received) {
      route(std::move(*received));
      ++routed;
      received = client->receive(std::chrono::milliseconds(0));
    }
    return routed;
  }
};

namespace {

class SharedChannel final : public Sink {
 public:
  SharedChannel(std::shared_ptr<SharedBrokerConnection::Impl> connection, std::uint32_t slot)
      : connection_(std::move(connection)) {
    state_.slot = slot;
    if (!connection_->channels.emplace(slot, &state_).second) {
      throw std::invalid_argument("slot " + std::to_string(slot) + " is in use on " + describe());
    }
  }
  ~SharedChannel() noexcept override { connection_->channels.erase(state_.slot); }
  SharedChannel(const SharedChannel&) = delete;
  SharedChannel& operator=(const SharedChannel&) = delete;

  void set_lease(SinkLease lease) override {
    state_.lease = std::move(lease);
    state_.hello_token = 0;  // a HELLO sent ahead carried the old epoch
  }

  bool prepare_session() override {
    auto& connection = *connection_;
    if (std::chrono::steady_clock::now() < connection.unanswered_until) return false;
    return send_hello();
  }

  bool session_answered() const override {
    return state_.hello_token == 0 || state_.hello_answer.has_value();
  }

  SessionResult open_session(std::chrono::milliseconds timeout) override {
    auto& connection = *connection_;
    state_.session_id = 0;
    state_.events.clear();  // answers about the old session are of no use any more
    auto now = std::chrono::steady_clock::now();
    if (state_.hello_token == 0) {
      if (now < connection.unanswered_until) {
        return SessionResult::failed(connection.unanswered_error);
      }
      if (!send_hello()) return SessionResult::failed("the HELLO could not be queued");
    }
    auto deadline = state_.hello_sent_at + timeout;
    while (!state_.hello_answer && std::chrono::steady_clock::now() < deadline) {
      connection.pump(detail::until(deadline));
    }
    if (!state_.hello_answer) {
      // The broker is away or busy with what was queued before the HELLO:
      // spare the other databases the same wait for a while. The connection
      // stays (its other sessions may be fine); a late answer to this HELLO
      // finds its token outdated and is dropped.
      auto error = welcome_error(wire::Error{wire::ErrorCode::timeout, ""}, timeout);
      state_.hello_token = 0;
      connection.unanswered_until = std::chrono::steady_clock::now() + timeout;
      connection.unanswered_error = error;
      return SessionResult::failed(std::move(error));
    }
    auto answer = std::move(*state_.hello_answer);
    state_.hello_answer.reset();
    state_.hello_token = 0;
    if (!answer.ok()) return SessionResult::failed(welcome_error(answer.error(), timeout));
    state_.session_id = answer->session_id;
    state_.limits = limits_from(*answer);
    return SessionResult::opened();
  }

  bool send(std::uint64_t batch_id, std::span<const outbox::PendingMessage> messages) override {
    if (state_.session_id == 0 || batch_id > kLocalBatchMask) return false;
    auto& connection = *connection_;
    encode_publish(connection.body, connection.headers, state_.session_id,
                   std::uint64_t{state_.slot} << kSlotShift | batch_id, messages);
    return connection.client->send_publish_body(connection.body);
  }

  std::optional<SinkEvent> poll(std::chrono::milliseconds timeout) override {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (state_.events.empty()) {
      auto left = detail::until(deadline);
      connection_->pump(left);
      if (left == std::chrono::milliseconds(0)) break;
    }
    if (state_.events.empty()) return std::nullopt;
    auto event = std::move(state_.events.front());
    state_.events.pop_front();
    return event;
  }

  std::string describe() const override { return "broker " + connection_->options.endpoint; }
  SinkLimits limits() const override { return state_.limits; }

 private:
  // Queues a HELLO for this channel's lease, and the PING that fences its answer.
  bool send_hello() {
    auto& connection = *connection_;
    const auto token = connection.next_hello_token;
    wire::Hello hello{connection.options.producer,
                      wire::kHelloOneOfSeveral | (connection.hello_ids ? wire::kHelloWithId : 0U),
                      state_.lease.origin,
                      static_cast<std::uint64_t>(std::max<std::int64_t>(state_.lease.epoch, 0)),
                      connection.hello_ids ? token : 0};
    if (!connection.client->send_hello(hello)) return false;
    ++connection.next_hello_token;
    state_.hello_token = token;
    state_.hello_sent_at = std::chrono::steady_clock::now();
    state_.hello_answer.reset();
    connection.hellos.emplace_back(state_.slot, state_.hello_token);
    (void)connection.client->send_request(wire::Ping{state_.hello_token});
    return true;
  }

  std::shared_ptr<SharedBrokerConnection::Impl> connection_;
  SharedBrokerConnection::Impl::Channel state_;
};

}  // namespace

SharedBrokerConnection::SharedBrokerConnection(BrokerSinkOptions options) {
  try {
    impl_ = std::make_shared<Impl>(std::move(options));
  } catch (const zmq::error_t& error) {
    throw outbox::Error(outbox::ErrorKind::io,
                        "cannot use broker endpoint: " + std::string(error.what()));
  }
}

SharedBrokerConnection::~SharedBrokerConnection() noexcept = default;

std::unique_ptr<Sink> SharedBrokerConnection::channel(std::uint32_t slot) {
  return std::make_unique<SharedChannel>(impl_, slot);
}

std::size_t SharedBrokerConnection::pump(std::chrono::milliseconds timeout) {
  return impl_->pump(timeout);
}

bool SharedBrokerConnection::has_events(std::uint32_t slot) const {
  auto channel = impl_->channels.find(slot);
  return channel != impl_->channels.end() &&
         (!channel->second->events.empty() || channel->second->hello_answer.has_value());
}

std::uint64_t SharedBrokerConnection::unmatched_answers() const noexcept {
  return impl_->unmatched_answers;
}

void* SharedBrokerConnection::socket_handle() {
  return impl_->client->poll_handle();
}

std::string SharedBrokerConnection::describe() const {
  return "broker " + impl_->options.endpoint;
}

}  // namespace relay
