#include "relay/broker_sink.hpp"

#include <algorithm>
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
    case wire::AckStatus::stored: return DeliveryStatus::stored;
    case wire::AckStatus::duplicate: return DeliveryStatus::duplicate;
    case wire::AckStatus::conflict: return DeliveryStatus::conflict;
    case wire::AckStatus::rejected: return DeliveryStatus::rejected;
    case wire::AckStatus::blocked: return DeliveryStatus::blocked;
  }
  return DeliveryStatus::blocked;
}

}  // namespace

struct BrokerSink::Impl {
  explicit Impl(BrokerSinkOptions options_in)
      : options(std::move(options_in)), client(options.endpoint, client_options(options)) {}

  BrokerSinkOptions options;
  broker::Client client;
  bool used = false;
  SinkLease lease;
  std::string body;
  std::vector<wire::Header> headers;
};

BrokerSink::BrokerSink(BrokerSinkOptions options) {
  try {
    impl_ = std::make_unique<Impl>(std::move(options));
  } catch (const zmq::error_t& error) {
    throw std::runtime_error("cannot use broker endpoint: " + std::string(error.what()));
  }
}

BrokerSink::~BrokerSink() noexcept = default;

void BrokerSink::set_lease(SinkLease lease) { impl_->lease = std::move(lease); }

std::optional<std::string> BrokerSink::open_session(std::chrono::milliseconds timeout) {
  // After any trouble the old connection's state is unknown: start afresh.
  if (impl_->used) impl_->client.reconnect();
  impl_->used = true;
  // The broker fences by origin and epoch: no local lease check is needed.
  const auto& lease = impl_->lease;
  auto welcome = impl_->client.hello(
      wire::Hello{impl_->options.producer, 0, lease.origin,
                  static_cast<std::uint64_t>(std::max<std::int64_t>(lease.epoch, 0))},
      timeout);
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
  return std::nullopt;
}

bool BrokerSink::send(std::uint64_t batch_id, std::span<const outbox::PendingMessage> messages) {
  auto& body = impl_->body;
  body.clear();
  wire::begin_publish_body(body, impl_->client.session_id(), batch_id);
  for (const auto& message : messages) {
    impl_->headers.clear();
    for (const auto& header : message.headers) impl_->headers.push_back({header.name, header.value});
    wire::append_publish_message(body, message.msg_id, message.topic,
                                 message.partition_key.value_or(std::string()), impl_->headers,
                                 message.payload);
  }
  wire::finish_publish_body(body, static_cast<std::uint32_t>(messages.size()));
  return impl_->client.send_publish_body(body);
}

std::optional<SinkEvent> BrokerSink::poll(std::chrono::milliseconds timeout) {
  auto received = impl_->client.receive(timeout);
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
  if (auto* ack = std::get_if<wire::Ack>(&message)) {
    event.batch_id = ack->batch_id;
    event.deliveries.reserve(ack->entries.size());
    for (auto& entry : ack->entries) {
      event.deliveries.push_back(Delivery{from_wire(entry.status), entry.offset, std::move(entry.reason)});
    }
    return event;
  }
  if (auto* error = std::get_if<wire::ErrorReply>(&message)) {
    event.kind = SinkEvent::Kind::failed;
    event.batch_id = error->request_id;
    event.error = "broker refused batch " + std::to_string(error->request_id) + " (" +
                  std::string(wire::error_code_name(error->code)) + "): " + error->message;
    return event;
  }
  return std::nullopt;  // a stray answer (PONG, ...) is not about our batches
}

std::string BrokerSink::describe() const { return "broker " + impl_->options.endpoint; }

}  // namespace relay
