#include "relay/broker_sink.hpp"

#include <algorithm>
#include <deque>
#include <stdexcept>
#include <variant>

#include <zmq.h>

#include "broker/client.hpp"

namespace relay {
namespace {

broker::ClientOptions client_options(const BrokerSinkOptions& options) {
  broker::ClientOptions client;
  client.send_high_water_mark = options.send_high_water_mark;
  if (options.curve) {
    char public_key[41] = {};
    if (options.curve->server_public_key.size() != 40) {
      throw std::runtime_error("the broker's CURVE public key must be 40 Z85 characters");
    }
    if (options.curve->client_secret_key.size() != 40 ||
        zmq_curve_public(public_key, options.curve->client_secret_key.c_str()) != 0) {
      throw std::runtime_error("the relay's CURVE secret key is not a valid 40-character Z85 key");
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
    throw std::runtime_error("cannot use broker endpoint: " + std::string(error.what()));
  }
}

BrokerSink::~BrokerSink() noexcept = default;

void BrokerSink::set_lease(SinkLease lease) {
  impl_->lease = std::move(lease);
  impl_->spare_hello.reset();  // its HELLO carried the old epoch
}

std::optional<std::string> BrokerSink::open_session(std::chrono::milliseconds timeout) {
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
    if (!impl.client->send_hello(request)) return "the HELLO could not be queued";
  }
  impl.used = true;
  auto welcome = impl.client->await_welcome(timeout);
  if (!welcome) {
    if (welcome.error().code == wire::ErrorCode::timeout) {
      return "no answer from the broker within " + std::to_string(timeout.count()) + " ms";
    }
    if (welcome.error().code == wire::ErrorCode::disconnected) return welcome.error().message;
    if (welcome.error().code == wire::ErrorCode::stale_epoch) {
      // Normally the relay then finds its lease lost and goes standby.
      return "broker refused the session (stale_epoch): " + welcome.error().message +
             "; should this relay still hold the lease, the database is an older copy "
             "(restored from a backup): see docs/operations.md, Backups";
    }
    return "broker refused the session: " + welcome.error().message;
  }
  impl_->limits = limits_from(*welcome);
  impl_->spare_wanted = true;
  return std::nullopt;
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
  auto& body = impl_->body;
  body.clear();
  wire::begin_publish_body(body, impl_->client->session_id(), batch_id);
  for (const auto& message : messages) {
    impl_->headers.clear();
    for (const auto& header : message.headers)
      impl_->headers.push_back({header.name, header.value});
    wire::append_publish_message(body, message.msg_id, message.topic,
                                 message.partition_key.value_or(std::string()), impl_->headers,
                                 message.payload);
  }
  wire::finish_publish_body(body, static_cast<std::uint32_t>(messages.size()));
  return impl_->client->send_publish_body(body);
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
    event.kind = SinkEvent::Kind::failed;
    event.batch_id = error->request_id;
    event.error = "broker refused batch " + std::to_string(error->request_id) + " (" +
                  std::string(wire::error_code_name(error->code)) + "): " + error->message;
    return event;
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
