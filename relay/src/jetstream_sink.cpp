#include "relay/jetstream_sink.hpp"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <stdexcept>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <nats/nats.h>
#include <spdlog/logger.h>

#include "outbox/null_logger.hpp"

namespace relay {
namespace {

constexpr char kNoKeyToken[] = "_";
constexpr char kMsgIdHeader[] = "Nats-Msg-Id";

bool plain_token_byte(unsigned char byte) {
  return (byte >= 'a' && byte <= 'z') || (byte >= 'A' && byte <= 'Z') ||
         (byte >= '0' && byte <= '9') || byte == '-' || byte == '_';
}

std::string encode_token(std::string_view text) {
  if (text.empty()) return "%";
  if (text == kNoKeyToken) return "%5F";
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string token;
  token.reserve(text.size());
  for (char c : text) {
    auto byte = static_cast<unsigned char>(c);
    if (plain_token_byte(byte)) {
      token.push_back(c);
    } else {
      token.push_back('%');
      token.push_back(kHex[byte >> 4]);
      token.push_back(kHex[byte & 0x0F]);
    }
  }
  return token;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::vector<std::string_view> split_tokens(std::string_view subject) {
  std::vector<std::string_view> tokens;
  std::size_t start = 0;
  while (true) {
    auto dot = subject.find('.', start);
    tokens.push_back(subject.substr(start, dot == std::string_view::npos ? dot : dot - start));
    if (dot == std::string_view::npos) return tokens;
    start = dot + 1;
  }
}

// "nats: No server available for connection (details)".
std::string nats_error_text(natsStatus status) {
  std::string text = natsStatus_GetText(status);
  natsStatus last = NATS_OK;
  const char* detail = nats_GetLastError(&last);
  if (detail != nullptr && *detail != '\0' && text.find(detail) == std::string::npos) {
    text += std::string(" (") + detail + ")";
  }
  return text;
}

std::string describe_duration(std::chrono::nanoseconds duration) {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(duration).count();
  if (ms % 1000 == 0) return std::to_string(ms / 1000) + "s";
  return std::to_string(ms) + "ms";
}

// NATS headers go on the wire (and into the stream) as an HTTP-like block:
// "NATS/1.0\r\n", then "Name: value\r\n" per header, then "\r\n".
constexpr std::size_t kHeaderLineBytes = sizeof("NATS/1.0\r\n") - 1;
constexpr std::size_t kHeaderEntryFramingBytes = sizeof(": \r\n") - 1;
constexpr std::size_t kHeaderEndBytes = sizeof("\r\n") - 1;

struct NatsOptionsDeleter {
  void operator()(natsOptions* options) const noexcept { natsOptions_Destroy(options); }
};
struct StreamInfoDeleter {
  void operator()(jsStreamInfo* info) const noexcept { jsStreamInfo_Destroy(info); }
};

}  // namespace

std::chrono::milliseconds retry_horizon(const RelayConfig& config) {
  return config.ack_timeout + config.connect_timeout + config.backoff.max + config.lease_ttl;
}

std::string subject_for(std::string_view prefix, std::string_view topic,
                        const std::optional<std::string>& key) {
  std::string subject;
  if (!prefix.empty()) {
    subject.append(prefix);
    subject.push_back('.');
  }
  subject += encode_token(topic);
  subject.push_back('.');
  subject += key ? encode_token(*key) : std::string(kNoKeyToken);
  return subject;
}

std::optional<std::string> decode_subject_token(std::string_view token) {
  if (token == kNoKeyToken || token.empty()) return std::nullopt;
  if (token == "%") return std::string();
  std::string text;
  for (std::size_t i = 0; i < token.size(); ++i) {
    if (token[i] != '%') {
      text.push_back(token[i]);
      continue;
    }
    if (i + 2 >= token.size()) return std::nullopt;
    int high = hex_value(token[i + 1]), low = hex_value(token[i + 2]);
    if (high < 0 || low < 0) return std::nullopt;
    text.push_back(static_cast<char>(high * 16 + low));
    i += 2;
  }
  return text;
}

bool subject_matches(std::string_view pattern, std::string_view subject) {
  auto want = split_tokens(pattern);
  auto have = split_tokens(subject);
  for (std::size_t i = 0; i < want.size(); ++i) {
    if (want[i] == ">") return have.size() > i;
    if (i >= have.size()) return false;
    if (want[i] != "*" && want[i] != have[i]) return false;
  }
  return want.size() == have.size();
}

std::size_t nats_message_size(const outbox::PendingMessage& message) {
  // Exactly the headers send() sets: the outbox headers but a Nats-Msg-Id,
  // then Nats-Msg-Id with the msg_id.
  std::size_t headers = kHeaderLineBytes + kHeaderEndBytes;
  for (const auto& header : message.headers) {
    if (header.name == kMsgIdHeader) continue;
    headers += header.name.size() + kHeaderEntryFramingBytes + header.value.size();
  }
  headers += sizeof(kMsgIdHeader) - 1 + kHeaderEntryFramingBytes + message.msg_id.size();
  return headers + message.payload.size();
}

struct JetStreamSink::Impl {
  // A published message waiting for its PubAck: where its outcome goes.
  struct Slot {
    std::uint64_t batch_id = 0;
    std::size_t index = 0;
  };
  struct Batch {
    std::uint64_t batch_id = 0;
    std::vector<Delivery> deliveries;
    std::size_t outstanding = 0;
  };

  // Shared with the libnats threads that call on_ack() and on_closed().
  struct Shared {
    std::mutex mutex;
    std::condition_variable changed;
    natsConnection* connection = nullptr;  // the current session's
    std::unordered_map<natsMsg*, Slot> slots;
    std::deque<Batch> batches;
    std::optional<std::string> failure;  // the session failed; poll() reports it
    // Connections whose closed callback has run. libnats calls it on its own
    // thread after natsConnection_Close() returns, so a connection is destroyed
    // (and this object with it) only once its callback is done with `mutex`.
    std::unordered_set<natsConnection*> closed;
    std::unordered_set<std::string> refused_subjects;

    Batch* find_batch(std::uint64_t batch_id) {
      for (auto& batch : batches) {
        if (batch.batch_id == batch_id) return &batch;
      }
      return nullptr;
    }

    void settle(std::uint64_t batch_id, std::size_t index, Delivery delivery) {
      if (auto* batch = find_batch(batch_id)) {
        batch->deliveries[index] = std::move(delivery);
        --batch->outstanding;
      }
    }

    void fail(std::string error) {
      if (!failure) failure = std::move(error);
    }
  };

  explicit Impl(JetStreamSinkOptions options_in)
      : options(std::move(options_in)), log(outbox::logger_or_null(options.logger, "jetstream")) {
    if (options.url.empty()) throw std::invalid_argument("the NATS URL is empty");
    if (options.stream.empty()) throw std::invalid_argument("the JetStream stream name is empty");
    options.max_pending = std::max<std::size_t>(options.max_pending, 1);
  }

  ~Impl() { close_session(); }

  JetStreamSinkOptions options;
  std::shared_ptr<spdlog::logger> log;
  SinkLease lease;
  Shared shared;
  natsConnection* connection = nullptr;
  jsCtx* js = nullptr;
  std::int64_t max_payload = 0;
  std::int64_t max_message_size = -1;  // the stream's limit; -1: none
  std::vector<std::string> stream_subjects;
  std::chrono::nanoseconds window{0};
  bool short_window_logged = false;

  static void on_ack(jsCtx*, natsMsg* msg, jsPubAck* ack, jsPubAckErr* error, void* closure) {
    auto& state = *static_cast<Shared*>(closure);
    {
      std::lock_guard lock(state.mutex);
      auto found = state.slots.find(msg);
      if (found != state.slots.end()) {
        auto slot = found->second;
        state.slots.erase(found);
        if (ack != nullptr) {
          auto status = ack->Duplicate ? DeliveryStatus::duplicate : DeliveryStatus::stored;
          state.settle(slot.batch_id, slot.index, Delivery{status, ack->Sequence, {}});
        } else {
          const char* subject = natsMsg_GetSubject(msg);
          std::string on = subject != nullptr ? std::string(" on subject '") + subject + "'" : "";
          natsStatus status = error != nullptr ? error->Err : NATS_ERR;
          int code = error != nullptr ? static_cast<int>(error->ErrCode) : 0;
          std::string text = error != nullptr && error->ErrText != nullptr
                                 ? std::string(error->ErrText)
                                 : std::string(natsStatus_GetText(status));
          if (code == JSStreamMessageExceedsMaximumErr) {
            // Permanent for this message; later ones of its key may already be on their way.
            if (subject != nullptr) state.refused_subjects.insert(subject);
            state.settle(slot.batch_id, slot.index,
                         Delivery{DeliveryStatus::rejected, 0, "JetStream: " + text});
          } else if (status == NATS_NO_RESPONDERS) {
            state.fail("no stream answered" + on +
                       " (no responders): is the stream there and "
                       "does it still cover the subject?");
          } else if (status == NATS_TIMEOUT) {
            state.fail("no PubAck in time" + on);
          } else {
            state.fail("publish failed" + on + ": " + text +
                       (code != 0 ? " (JetStream error " + std::to_string(code) + ")" : ""));
          }
        }
        state.changed.notify_all();
      }
    }
    natsMsg_Destroy(msg);
  }

  static void on_closed(natsConnection* closed, void* closure) {
    auto& state = *static_cast<Shared*>(closure);
    std::lock_guard lock(state.mutex);
    state.closed.insert(closed);
    state.changed.notify_all();
    if (closed != state.connection) return;  // a session we already left
    state.fail("the connection to the NATS server was closed");
  }

  void forget_in_flight() {
    std::lock_guard lock(shared.mutex);
    shared.connection = nullptr;
    shared.slots.clear();
    shared.batches.clear();
    shared.failure.reset();
    shared.refused_subjects.clear();
  }

  void close_session() noexcept {
    forget_in_flight();
    if (connection != nullptr) {
      // Close, then wait (bounded) for the closed callback, which libnats
      // runs on its own thread: destroying `shared` before it ran made the
      // callback lock a destroyed mutex as the relay exited (std::system_error,
      // abort) about once in ten stops.
      natsConnection_Close(connection);
      std::unique_lock lock(shared.mutex);
      shared.changed.wait_for(lock, std::chrono::seconds(5),
                              [&] { return shared.closed.count(connection) != 0; });
      shared.closed.erase(connection);
    }
    if (js != nullptr) {
      jsCtx_Destroy(js);
      js = nullptr;
    }
    if (connection != nullptr) {
      natsConnection_Destroy(connection);
      connection = nullptr;
    }
  }

  std::optional<std::string> connect(std::chrono::milliseconds timeout) {
    natsOptions* raw = nullptr;
    if (auto status = natsOptions_Create(&raw); status != NATS_OK) {
      return "cannot set up a NATS connection: " + nats_error_text(status);
    }
    std::unique_ptr<natsOptions, NatsOptionsDeleter> nats_options(raw);
    // One URL, or the nodes of a cluster comma-separated: a fresh connection
    // tries them in turn, so a session starts again while one node is down.
    std::vector<std::string> urls;
    for (std::size_t start = 0; start <= options.url.size();) {
      auto end = options.url.find(',', start);
      if (end == std::string::npos) end = options.url.size();
      urls.push_back(options.url.substr(start, end - start));
      start = end + 1;
    }
    std::vector<const char*> servers;
    servers.reserve(urls.size());
    for (const auto& url : urls) servers.push_back(url.c_str());
    auto status = natsOptions_SetServers(raw, servers.data(), static_cast<int>(servers.size()));
    if (status == NATS_OK) status = natsOptions_SetName(raw, options.client_name.c_str());
    if (status == NATS_OK) {
      status = natsOptions_SetTimeout(raw, std::max<std::int64_t>(timeout.count(), 1));
    }
    // A lost connection ends the session: the relay resends on a fresh one.
    // Reconnecting inside libnats would replay buffered publishes after the
    // ones lost with the old socket, letting later messages overtake them.
    if (status == NATS_OK) status = natsOptions_SetAllowReconnect(raw, false);
    // Write each publish at once rather than waking libnats' flusher thread:
    // a quarter of the latency per round trip and no loss of throughput here.
    if (status == NATS_OK) status = natsOptions_SetSendAsap(raw, true);
    if (status == NATS_OK) status = natsOptions_SetClosedCB(raw, &Impl::on_closed, &shared);
    if (status != NATS_OK) return "bad NATS URL '" + options.url + "': " + nats_error_text(status);

    natsConnection* opened = nullptr;
    status = natsConnection_Connect(&opened, raw);
    if (status != NATS_OK) {
      return "cannot connect to NATS at " + options.url + ": " + nats_error_text(status);
    }
    connection = opened;
    max_payload = natsConnection_GetMaxPayload(connection);

    jsOptions js_options;
    jsOptions_Init(&js_options);
    js_options.Wait = std::max<std::int64_t>(timeout.count(), 1);
    js_options.PublishAsync.MaxPending = static_cast<std::int64_t>(options.max_pending);
    js_options.PublishAsync.AckHandler = &Impl::on_ack;
    js_options.PublishAsync.AckHandlerClosure = &shared;
    js_options.PublishAsync.StallWait = 1000;
    status = natsConnection_JetStream(&js, connection, &js_options);
    if (status != NATS_OK) return "cannot use JetStream: " + nats_error_text(status);
    {
      std::lock_guard lock(shared.mutex);
      shared.connection = connection;
    }
    return std::nullopt;
  }

  // Reads the stream's configuration; throws SinkRefusal when it can never work.
  std::optional<std::string> check_stream() {
    jsStreamInfo* raw = nullptr;
    jsErrCode code = static_cast<jsErrCode>(0);
    auto status = js_GetStreamInfo(&raw, js, options.stream.c_str(), nullptr, &code);
    std::unique_ptr<jsStreamInfo, StreamInfoDeleter> info(raw);
    if (code == JSStreamNotFoundErr || (status == NATS_NOT_FOUND && code == 0)) {
      throw SinkRefusal(SinkRefusal::Reason::not_found,
                        "JetStream stream '" + options.stream + "' does not exist on " +
                            options.url + " (create it, or name another with --stream)");
    }
    if (code == JSNotEnabledForAccountErr || code == JSNotEnabledErr) {
      throw SinkRefusal(
          SinkRefusal::Reason::not_found,
          "JetStream is not enabled on " + options.url + " (start nats-server with -js)");
    }
    if (status == NATS_NO_RESPONDERS) {
      return "nothing answers the JetStream API on " + options.url +
             " (no responders: is JetStream enabled, nats-server -js?)";
    }
    if (status != NATS_OK || info == nullptr || info->Config == nullptr) {
      return "cannot read JetStream stream '" + options.stream + "': " + nats_error_text(status);
    }
    const auto& config = *info->Config;
    stream_subjects.assign(config.Subjects, config.Subjects + config.SubjectsLen);
    max_message_size = config.MaxMsgSize > 0 ? config.MaxMsgSize : -1;
    window = std::chrono::nanoseconds(config.Duplicates);

    if (window < options.retry_horizon) {
      auto text = "stream '" + options.stream + "' remembers msg_ids for " +
                  describe_duration(window) + " (its duplicate window), but the relay may resend " +
                  "a message up to " + describe_duration(options.retry_horizon) +
                  " after publishing it (ack timeout + connect timeout + backoff max + lease), "
                  "and a resend after the window is stored twice";
      if (!options.allow_short_dedup_window) {
        throw SinkRefusal(SinkRefusal::Reason::incompatible,
                          text +
                              "; raise the stream's duplicate window, lower those settings, or "
                              "accept the risk with --allow-short-dedup-window");
      }
      if (!short_window_logged) {
        log->warn("{}; running anyway (--allow-short-dedup-window)", text);
        short_window_logged = true;
      }
    }
    log->debug("jetstream: stream '{}' covers {} subject patterns, duplicate window {}",
               options.stream, stream_subjects.size(), describe_duration(window));
    return std::nullopt;
  }

  bool covered(const std::string& subject) const {
    return std::any_of(
        stream_subjects.begin(), stream_subjects.end(),
        [&](const std::string& pattern) { return subject_matches(pattern, subject); });
  }

  std::string covered_list() const {
    std::string list;
    for (const auto& pattern : stream_subjects) list += (list.empty() ? "" : ", ") + pattern;
    return list.empty() ? "none" : list;
  }

  // Why NATS can never carry this message, if so. Both limits count what
  // nats-server 2.9 counts: the header block as sent plus the payload
  // (stream.go: len(hdr)+len(msg) > MaxMsgSize; the server's max_payload is
  // checked on the HPUB's total size). The subject is not counted.
  std::optional<std::string> refuse_locally(const outbox::PendingMessage& message) const {
    auto size = static_cast<std::int64_t>(nats_message_size(message));
    auto describe = [&] {
      return "message of " + std::to_string(size) + " bytes (headers " +
             std::to_string(size - static_cast<std::int64_t>(message.payload.size())) +
             " including Nats-Msg-Id, payload " + std::to_string(message.payload.size()) + ")";
    };
    if (max_payload > 0 && size > max_payload) {
      return describe() + " is above the NATS server's max_payload (" +
             std::to_string(max_payload) + ")";
    }
    if (max_message_size > 0 && size > max_message_size) {
      return describe() + " is above the stream's max message size (" +
             std::to_string(max_message_size) + ")";
    }
    return std::nullopt;
  }
};

JetStreamSink::JetStreamSink(JetStreamSinkOptions options)
    : impl_(std::make_unique<Impl>(std::move(options))) {}

JetStreamSink::~JetStreamSink() noexcept = default;

void JetStreamSink::set_lease(SinkLease lease) {
  impl_->lease = std::move(lease);
}

SessionResult JetStreamSink::open_session(std::chrono::milliseconds timeout) {
  impl_->close_session();
  if (auto error = impl_->connect(timeout)) {
    impl_->close_session();
    return SessionResult::failed(std::move(*error));
  }
  std::optional<std::string> error;
  try {
    error = impl_->check_stream();
  } catch (...) {
    impl_->close_session();
    throw;
  }
  if (!error) return SessionResult::opened();
  impl_->close_session();
  return SessionResult::failed(std::move(*error));
}

bool JetStreamSink::send(std::uint64_t batch_id, std::span<const outbox::PendingMessage> messages) {
  auto& shared = impl_->shared;
  std::vector<std::string> subjects;
  subjects.reserve(messages.size());
  for (const auto& message : messages) {
    subjects.push_back(
        subject_for(impl_->options.subject_prefix, message.topic, message.partition_key));
    if (impl_->js != nullptr && !impl_->covered(subjects.back())) {
      throw SinkRefusal(SinkRefusal::Reason::not_found,
                        "no subject of stream '" + impl_->options.stream + "' covers '" +
                            subjects.back() + "' (topic '" + message.topic +
                            "'; the stream covers " + impl_->covered_list() +
                            "); add it to the stream or change --subject-prefix");
    }
  }
  {
    std::lock_guard lock(shared.mutex);
    if (!shared.slots.empty() &&
        shared.slots.size() + messages.size() > impl_->options.max_pending) {
      return false;
    }
    shared.batches.push_back(
        Impl::Batch{batch_id, std::vector<Delivery>(messages.size()), messages.size()});
    if (impl_->js == nullptr) {
      shared.fail("no open session");
      return true;
    }
  }

  for (std::size_t i = 0; i < messages.size(); ++i) {
    const auto& message = messages[i];
    const auto& subject = subjects[i];
    auto settle_here = [&](DeliveryStatus status, std::string reason) {
      std::lock_guard lock(shared.mutex);
      if (status == DeliveryStatus::rejected) shared.refused_subjects.insert(subject);
      shared.settle(batch_id, i, Delivery{status, 0, std::move(reason)});
    };
    {
      std::lock_guard lock(shared.mutex);
      if (shared.failure) break;  // the session is over; nothing more goes out on it
      if (shared.refused_subjects.count(subject) != 0) {
        shared.settle(batch_id, i, Delivery{DeliveryStatus::blocked, 0, {}});
        continue;
      }
    }
    if (auto why = impl_->refuse_locally(message)) {
      settle_here(DeliveryStatus::rejected, *why);
      continue;
    }

    natsMsg* msg = nullptr;
    auto status = natsMsg_Create(&msg, subject.c_str(), nullptr, message.payload.data(),
                                 static_cast<int>(message.payload.size()));
    if (status != NATS_OK) {
      std::lock_guard lock(shared.mutex);
      shared.fail("cannot create a NATS message: " + nats_error_text(status));
      break;
    }
    std::optional<std::string> bad_header;
    for (const auto& header : message.headers) {
      if (header.name == kMsgIdHeader) continue;  // always the message's own msg_id
      if (natsMsgHeader_Add(msg, header.name.c_str(), header.value.c_str()) != NATS_OK) {
        bad_header = "header '" + header.name + "' cannot be carried as a NATS header";
        break;
      }
    }
    if (!bad_header && natsMsgHeader_Set(msg, kMsgIdHeader, message.msg_id.c_str()) != NATS_OK) {
      bad_header = "msg_id cannot be carried in the Nats-Msg-Id header";
    }
    if (bad_header) {
      natsMsg_Destroy(msg);
      settle_here(DeliveryStatus::rejected, *bad_header);
      continue;
    }

    // JetStream cannot fence a stale relay: look at the lease right before
    // the publish, so a relay paused past its lease sends nothing more.
    if (impl_->lease.still_valid && !impl_->lease.still_valid()) {
      natsMsg_Destroy(msg);
      std::lock_guard lock(shared.mutex);
      shared.fail("the relay lease (epoch " + std::to_string(impl_->lease.epoch) +
                  ") may have lapsed before msg_id " + message.msg_id +
                  " was published; not publishing");
      break;
    }
    natsMsg* published = msg;
    {
      std::lock_guard lock(shared.mutex);
      shared.slots.emplace(published, Impl::Slot{batch_id, i});  // the PubAck may beat the return
    }
    status = js_PublishMsgAsync(impl_->js, &msg, nullptr);
    if (status != NATS_OK) {
      {
        std::lock_guard lock(shared.mutex);
        if (msg != nullptr) shared.slots.erase(published);
      }
      natsMsg_Destroy(msg);
      if (status == NATS_MAX_PAYLOAD) {
        settle_here(DeliveryStatus::rejected, "message is above the NATS server's max_payload");
        continue;
      }
      std::lock_guard lock(shared.mutex);
      shared.fail("publish of msg_id " + message.msg_id + " on '" + subject +
                  "' failed: " + nats_error_text(status));
      break;
    }
  }
  shared.changed.notify_all();
  return true;
}

std::optional<SinkEvent> JetStreamSink::poll(std::chrono::milliseconds timeout) {
  auto& shared = impl_->shared;
  std::unique_lock lock(shared.mutex);
  auto ready = [&] {
    return shared.failure.has_value() ||
           (!shared.batches.empty() && shared.batches.front().outstanding == 0);
  };
  if (!shared.changed.wait_for(lock, timeout, ready)) return std::nullopt;
  SinkEvent event;
  if (shared.failure) {
    event.kind = SinkEvent::Kind::failed;
    event.batch_id = shared.batches.empty() ? 0 : shared.batches.front().batch_id;
    event.error = *shared.failure;
    // Keep the failure: nothing more is sent on this session, and every later
    // poll says so until the relay opens a new one.
    shared.batches.clear();
    shared.slots.clear();
    return event;
  }
  auto& head = shared.batches.front();
  event.batch_id = head.batch_id;
  event.deliveries = std::move(head.deliveries);
  shared.batches.pop_front();
  return event;
}

std::string JetStreamSink::describe() const {
  return "jetstream " + impl_->options.url + " stream " + impl_->options.stream;
}

std::chrono::nanoseconds JetStreamSink::duplicate_window() const {
  return impl_->window;
}

}  // namespace relay
