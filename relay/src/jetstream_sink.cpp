#include "relay/jetstream_sink.hpp"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <stdexcept>
#include <unordered_map>
#include <unordered_set>
#include <utility>
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
// A message being built is ours until js_PublishMsgAsync takes it.
struct MsgDeleter {
  void operator()(natsMsg* msg) const noexcept { natsMsg_Destroy(msg); }
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

// A published message waiting for its PubAck: where its outcome goes.
struct PendingPublish {
  std::uint32_t channel = 0;
  std::uint64_t batch_id = 0;
  std::size_t index = 0;
  std::size_t bytes = 0;  // nats_message_size()
};

struct Batch {
  std::uint64_t batch_id = 0;
  std::vector<Delivery> deliveries;
  std::size_t outstanding = 0;
};

// One database's session on the shared connection.
struct ChannelState {
  std::uint64_t generation = 0;  // of the connection its session is on; 0: none
  std::deque<Batch> batches;
  std::optional<std::string> failure;  // the session failed; poll() reports it
  bool failure_reported = false;       // by poll() once: has_events() is then false
  // Subjects (so (topic, key)) with a refused message in this session.
  std::unordered_set<std::string> refused_subjects;
  std::size_t pending = 0;  // published, PubAck not yet in
  std::size_t pending_bytes = 0;
  SinkLease lease;  // the relay's thread only
};

struct SharedJetStreamConnection::Impl {
  explicit Impl(SharedJetStreamOptions options_in)
      : options(std::move(options_in)),
        log(outbox::logger_or_null(options.sink.logger, "jetstream")) {
    if (options.sink.url.empty()) throw std::invalid_argument("the NATS URL is empty");
    if (options.sink.stream.empty()) {
      throw std::invalid_argument("the JetStream stream name is empty");
    }
    options.sink.max_pending = std::max<std::size_t>(options.sink.max_pending, 1);
    options.max_total_pending = std::max(options.max_total_pending, options.sink.max_pending);
    event_fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (event_fd < 0) throw std::runtime_error("cannot make an eventfd for NATS acknowledgements");
  }

  ~Impl() {
    retire("the relay is closing the connection");
    ::close(event_fd);
  }

  SharedJetStreamOptions options;
  std::shared_ptr<spdlog::logger> log;
  int event_fd = -1;

  // Written by the relay's thread only (read by it without the mutex).
  natsConnection* connection = nullptr;
  jsCtx* js = nullptr;
  std::int64_t max_payload = 0;
  std::int64_t max_message_size = -1;  // the stream's limit; -1: none
  std::vector<std::string> stream_subjects;
  std::chrono::nanoseconds window{0};
  bool short_window_logged = false;
  // A failed connect: other channels asking before retry_at get its error
  // at once instead of each waiting for the connect timeout in turn.
  std::optional<std::string> connect_error;
  std::uint32_t connect_failed_for = 0;
  std::chrono::steady_clock::time_point retry_at{};

  // Shared with the libnats threads (PubAcks, connection callbacks).
  mutable std::mutex mutex;
  std::condition_variable changed;
  std::uint64_t generation = 0;  // of `connection`; grows with every connection
  bool broken = true;            // `connection` is gone or going (none yet: true)
  bool stream_checked = false;   // the stream's configuration read on `connection`
  // Connections whose closed callback has run. libnats calls it on its own
  // thread after natsConnection_Close() returns, so a connection is destroyed
  // (and this object with it) only once its callback is done with `mutex`.
  std::unordered_set<natsConnection*> closed;
  std::unordered_map<std::uint32_t, ChannelState> channels;
  std::unordered_map<natsMsg*, PendingPublish> publishes;
  std::size_t total_pending = 0;
  std::size_t total_pending_bytes = 0;

  // --- under `mutex` ---

  void notify() {
    changed.notify_all();
    std::uint64_t one = 1;
    [[maybe_unused]] auto written = ::write(event_fd, &one, sizeof one);
  }

  // Whether poll() has an outcome to return.
  static bool ready(const ChannelState& channel) {
    return channel.failure.has_value() ||
           (!channel.batches.empty() && channel.batches.front().outstanding == 0);
  }
  // Whether that outcome is news: a failure poll() reported is not (a
  // database waiting to open its next session is not stepped for it).
  static bool has_news(const ChannelState& channel) {
    return ready(channel) && !(channel.failure && channel.failure_reported);
  }

  void release(ChannelState& channel, const PendingPublish& publish) {
    --channel.pending;
    channel.pending_bytes -= publish.bytes;
    --total_pending;
    total_pending_bytes -= publish.bytes;
  }

  void settle(ChannelState& channel, const PendingPublish& publish, Delivery delivery) {
    for (auto& batch : channel.batches) {
      if (batch.batch_id != publish.batch_id) continue;
      batch.deliveries[publish.index] = std::move(delivery);
      --batch.outstanding;
      return;
    }
  }

  // Forgets the channel's publishes still waiting for a PubAck: a late one
  // finds nothing and is dropped.
  void drop_publishes(std::uint32_t slot, ChannelState& channel) {
    for (auto at = publishes.begin(); at != publishes.end();) {
      if (at->second.channel == slot) {
        release(channel, at->second);
        at = publishes.erase(at);
      } else {
        ++at;
      }
    }
  }

  void fail(std::uint32_t slot, ChannelState& channel, std::string error) {
    set_failure(channel, std::move(error));
    drop_publishes(slot, channel);
  }

  // A session with nothing in flight learns of its failure at its next
  // send or poll; it is news (has_events()) only to one that awaits outcomes.
  static void set_failure(ChannelState& channel, std::string error) {
    if (channel.failure) return;
    channel.failure = std::move(error);
    channel.failure_reported = channel.batches.empty();
  }

  // The connection of `generation` is gone: every session on it fails.
  void lose_connection(const std::string& reason) {
    if (broken) return;
    broken = true;
    for (auto& [slot, channel] : channels) {
      if (channel.generation == generation) set_failure(channel, reason);
      channel.pending = 0;
      channel.pending_bytes = 0;
    }
    publishes.clear();
    total_pending = 0;
    total_pending_bytes = 0;
    notify();
  }

  // --- libnats threads ---

  static void on_ack(jsCtx*, natsMsg* msg, jsPubAck* ack, jsPubAckErr* error, void* closure) {
    auto& self = *static_cast<Impl*>(closure);
    {
      std::lock_guard lock(self.mutex);
      auto found = self.publishes.find(msg);
      if (found != self.publishes.end()) {
        auto publish = found->second;
        self.publishes.erase(found);
        auto& channel = self.channels.at(publish.channel);
        self.release(channel, publish);
        self.take_ack(publish, channel, msg, ack, error);
        self.notify();
      }
    }
    natsMsg_Destroy(msg);
  }

  void take_ack(const PendingPublish& publish, ChannelState& channel, natsMsg* msg, jsPubAck* ack,
                jsPubAckErr* error) {
    if (ack != nullptr) {
      auto status = ack->Duplicate ? DeliveryStatus::duplicate : DeliveryStatus::stored;
      settle(channel, publish, Delivery{status, ack->Sequence, {}});
      return;
    }
    const char* subject = natsMsg_GetSubject(msg);
    std::string on = subject != nullptr ? std::string(" on subject '") + subject + "'" : "";
    natsStatus status = error != nullptr ? error->Err : NATS_ERR;
    int code = error != nullptr ? static_cast<int>(error->ErrCode) : 0;
    std::string text = error != nullptr && error->ErrText != nullptr
                           ? std::string(error->ErrText)
                           : std::string(natsStatus_GetText(status));
    if (code == JSStreamMessageExceedsMaximumErr) {
      // Permanent for this message; later ones of its key may already be on their way.
      if (subject != nullptr) channel.refused_subjects.insert(subject);
      settle(channel, publish, Delivery{DeliveryStatus::rejected, 0, "JetStream: " + text});
    } else if (status == NATS_NO_RESPONDERS) {
      stream_checked = false;  // the next session reads the stream again
      fail(publish.channel, channel,
           "no stream answered" + on +
               " (no responders): is the stream there and does it still cover the subject?");
    } else if (status == NATS_TIMEOUT) {
      fail(publish.channel, channel, "no PubAck in time" + on);
    } else {
      fail(publish.channel, channel,
           "publish failed" + on + ": " + text +
               (code != 0 ? " (JetStream error " + std::to_string(code) + ")" : ""));
    }
  }

  // Noticed by libnats: the connection dropped (it does not reconnect, see
  // connect()), or it is closed.
  static void on_disconnected(natsConnection* lost, void* closure) {
    auto& self = *static_cast<Impl*>(closure);
    std::lock_guard lock(self.mutex);
    if (lost == self.connection) self.lose_connection("the connection to the NATS server was lost");
  }

  static void on_closed(natsConnection* closed_connection, void* closure) {
    auto& self = *static_cast<Impl*>(closure);
    std::lock_guard lock(self.mutex);
    self.closed.insert(closed_connection);
    self.changed.notify_all();
    if (closed_connection == self.connection) {
      self.lose_connection("the connection to the NATS server was closed");
    }
  }

  // --- the relay's thread ---

  // Ends the current connection: every session on it fails with `reason`.
  void retire(const std::string& reason) noexcept {
    {
      std::lock_guard lock(mutex);
      lose_connection(reason);
    }
    if (connection != nullptr) {
      // Close, then wait (bounded) for the closed callback, which libnats
      // runs on its own thread: destroying this object before it ran made the
      // callback lock a destroyed mutex.
      natsConnection_Close(connection);
      std::unique_lock lock(mutex);
      changed.wait_for(lock, std::chrono::seconds(5),
                       [&] { return closed.count(connection) != 0; });
      closed.erase(connection);
    }
    if (js != nullptr) {
      jsCtx_Destroy(js);
      js = nullptr;
    }
    if (connection != nullptr) {
      natsConnection_Destroy(connection);
      std::lock_guard lock(mutex);
      connection = nullptr;
    }
  }

  // A live connection whose stream configuration was read; an error text
  // when there is none; SinkRefusal when the stream can never work.
  std::optional<std::string> ensure_connection(std::chrono::milliseconds timeout,
                                               std::uint32_t slot) {
    bool usable = false, checked = false;
    {
      std::lock_guard lock(mutex);
      usable = connection != nullptr && !broken;
      checked = stream_checked;
    }
    if (!usable) {
      if (connection != nullptr) retire("the connection to the NATS server was lost");
      auto now = std::chrono::steady_clock::now();
      if (connect_error && slot != connect_failed_for && now < retry_at) return connect_error;
      connect_error = connect(timeout);
      if (connect_error) {
        connect_failed_for = slot;
        retry_at = now + timeout;
        retire("no connection");
        return connect_error;
      }
      checked = false;
    }
    if (checked) return std::nullopt;
    std::optional<std::string> error;
    try {
      error = check_stream();
    } catch (...) {
      retire("the stream cannot be used");
      throw;
    }
    if (error) {
      retire(*error);
      return error;
    }
    std::lock_guard lock(mutex);
    stream_checked = true;
    return std::nullopt;
  }

  std::optional<std::string> connect(std::chrono::milliseconds timeout) {
    const auto& url = options.sink.url;
    natsOptions* raw = nullptr;
    if (auto status = natsOptions_Create(&raw); status != NATS_OK) {
      return "cannot set up a NATS connection: " + nats_error_text(status);
    }
    std::unique_ptr<natsOptions, NatsOptionsDeleter> nats_options(raw);
    // One URL, or the nodes of a cluster comma-separated: a fresh connection
    // tries them in turn, so a session starts again while one node is down.
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
    auto status = natsOptions_SetServers(raw, servers.data(), static_cast<int>(servers.size()));
    if (status == NATS_OK) status = natsOptions_SetName(raw, options.sink.client_name.c_str());
    if (status == NATS_OK) {
      status = natsOptions_SetTimeout(raw, std::max<std::int64_t>(timeout.count(), 1));
    }
    // A lost connection ends the sessions on it: the relay resends on a fresh
    // one. Reconnecting inside libnats would replay buffered publishes after
    // the ones lost with the old socket, letting later messages overtake them.
    if (status == NATS_OK) status = natsOptions_SetAllowReconnect(raw, false);
    // Write each publish at once rather than waking libnats' flusher thread:
    // a quarter of the latency per round trip and no loss of throughput here.
    if (status == NATS_OK) status = natsOptions_SetSendAsap(raw, true);
    if (status == NATS_OK && options.sink.ping_interval.count() > 0) {
      // A server that stops answering is noticed by its missing PONGs: the
      // connection is closed and every session on it fails.
      status = natsOptions_SetPingInterval(raw, options.sink.ping_interval.count());
      if (status == NATS_OK) status = natsOptions_SetMaxPingsOut(raw, 2);
    }
    if (status == NATS_OK)
      status = natsOptions_SetDisconnectedCB(raw, &Impl::on_disconnected, this);
    if (status == NATS_OK) status = natsOptions_SetClosedCB(raw, &Impl::on_closed, this);
    if (status != NATS_OK) return "bad NATS URL '" + url + "': " + nats_error_text(status);

    natsConnection* opened = nullptr;
    status = natsConnection_Connect(&opened, raw);
    if (status != NATS_OK)
      return "cannot connect to NATS at " + url + ": " + nats_error_text(status);
    {
      std::lock_guard lock(mutex);
      connection = opened;
      ++generation;
      broken = false;
      stream_checked = false;
    }
    max_payload = natsConnection_GetMaxPayload(connection);

    jsOptions js_options;
    jsOptions_Init(&js_options);
    js_options.Wait = std::max<std::int64_t>(timeout.count(), 1);
    // Twice the relay's own bound: publishes of a session that failed still
    // count in libnats until their PubAck or its timeout.
    js_options.PublishAsync.MaxPending = static_cast<std::int64_t>(2 * options.max_total_pending);
    js_options.PublishAsync.AckHandler = &Impl::on_ack;
    js_options.PublishAsync.AckHandlerClosure = this;
    js_options.PublishAsync.StallWait = 1000;
    status = natsConnection_JetStream(&js, connection, &js_options);
    if (status != NATS_OK) return "cannot use JetStream: " + nats_error_text(status);
    return std::nullopt;
  }

  // Reads the stream's configuration; throws SinkRefusal when it can never work.
  std::optional<std::string> check_stream() {
    const auto& url = options.sink.url;
    const auto& stream = options.sink.stream;
    jsStreamInfo* raw = nullptr;
    jsErrCode code = static_cast<jsErrCode>(0);
    auto status = js_GetStreamInfo(&raw, js, stream.c_str(), nullptr, &code);
    std::unique_ptr<jsStreamInfo, StreamInfoDeleter> info(raw);
    if (code == JSStreamNotFoundErr || (status == NATS_NOT_FOUND && code == 0)) {
      throw SinkRefusal(SinkRefusal::Reason::not_found,
                        "JetStream stream '" + stream + "' does not exist on " + url +
                            " (create it, or name another with --stream)");
    }
    if (code == JSNotEnabledForAccountErr || code == JSNotEnabledErr) {
      throw SinkRefusal(SinkRefusal::Reason::not_found,
                        "JetStream is not enabled on " + url + " (start nats-server with -js)");
    }
    if (status == NATS_NO_RESPONDERS) {
      return "nothing answers the JetStream API on " + url +
             " (no responders: is JetStream enabled, nats-server -js?)";
    }
    if (status != NATS_OK || info == nullptr || info->Config == nullptr) {
      return "cannot read JetStream stream '" + stream + "': " + nats_error_text(status);
    }
    const auto& config = *info->Config;
    stream_subjects.assign(config.Subjects, config.Subjects + config.SubjectsLen);
    max_message_size = config.MaxMsgSize > 0 ? config.MaxMsgSize : -1;
    window = std::chrono::nanoseconds(config.Duplicates);

    const auto horizon = options.sink.retry_horizon;
    if (window < horizon) {
      auto text = "stream '" + stream + "' remembers msg_ids for " + describe_duration(window) +
                  " (its duplicate window), but the relay may resend a message up to " +
                  describe_duration(horizon) +
                  " after publishing it (ack timeout + connect timeout + backoff max + lease), "
                  "and a resend after the window is stored twice";
      if (!options.sink.allow_short_dedup_window) {
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
    log->debug("jetstream: stream '{}' covers {} subject patterns, duplicate window {}", stream,
               stream_subjects.size(), describe_duration(window));
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

  std::string describe() const {
    return "jetstream " + options.sink.url + " stream " + options.sink.stream;
  }
};

namespace {

// One database's Sink on a SharedJetStreamConnection.
class JetStreamChannel final : public Sink {
 public:
  using Impl = SharedJetStreamConnection::Impl;

  JetStreamChannel(std::shared_ptr<Impl> impl, std::uint32_t slot)
      : impl_(std::move(impl)), slot_(slot) {
    std::lock_guard lock(impl_->mutex);
    if (!impl_->channels.try_emplace(slot).second) {
      throw std::invalid_argument("channel slot " + std::to_string(slot) + " is in use");
    }
  }

  ~JetStreamChannel() override {
    std::lock_guard lock(impl_->mutex);
    impl_->drop_publishes(slot_, state());
    impl_->channels.erase(slot_);
  }
  JetStreamChannel(const JetStreamChannel&) = delete;
  JetStreamChannel& operator=(const JetStreamChannel&) = delete;

  void set_lease(SinkLease lease) override { state_unlocked().lease = std::move(lease); }

  SessionResult open_session(std::chrono::milliseconds timeout) override {
    forget_session();
    if (auto error = impl_->ensure_connection(timeout, slot_)) {
      return SessionResult::failed(std::move(*error));
    }
    std::lock_guard lock(impl_->mutex);
    if (impl_->broken) return SessionResult::failed("the connection to the NATS server was lost");
    state().generation = impl_->generation;
    return SessionResult::opened();
  }

  bool send(std::uint64_t batch_id, std::span<const outbox::PendingMessage> messages) override;

  std::optional<SinkEvent> poll(std::chrono::milliseconds timeout) override {
    std::unique_lock lock(impl_->mutex);
    auto& channel = state();
    if (!impl_->changed.wait_for(lock, timeout, [&] { return Impl::ready(channel); })) {
      return std::nullopt;
    }
    SinkEvent event;
    if (channel.failure) {
      event.kind = SinkEvent::Kind::failed;
      event.batch_id = channel.batches.empty() ? 0 : channel.batches.front().batch_id;
      event.error = *channel.failure;
      // Keep the failure: nothing more is sent on this session, and every later
      // poll says so until the relay opens a new one.
      channel.batches.clear();
      channel.failure_reported = true;
      impl_->drop_publishes(slot_, channel);
      return event;
    }
    auto& head = channel.batches.front();
    event.batch_id = head.batch_id;
    event.deliveries = std::move(head.deliveries);
    channel.batches.pop_front();
    return event;
  }

  std::string describe() const override { return impl_->describe(); }

 private:
  // Under impl_->mutex.
  ChannelState& state() { return impl_->channels.at(slot_); }
  // Fields only the relay's thread touches (the lease).
  ChannelState& state_unlocked() {
    std::lock_guard lock(impl_->mutex);
    return state();
  }

  void forget_session() {
    std::lock_guard lock(impl_->mutex);
    auto& channel = state();
    impl_->drop_publishes(slot_, channel);
    channel.generation = 0;
    channel.batches.clear();
    channel.failure.reset();
    channel.failure_reported = false;
    channel.refused_subjects.clear();
  }

  std::shared_ptr<Impl> impl_;
  std::uint32_t slot_;
};

bool JetStreamChannel::send(std::uint64_t batch_id,
                            std::span<const outbox::PendingMessage> messages) {
  auto& impl = *impl_;
  std::vector<std::string> subjects;
  subjects.reserve(messages.size());
  std::size_t batch_bytes = 0;
  for (const auto& message : messages) {
    subjects.push_back(
        subject_for(impl.options.sink.subject_prefix, message.topic, message.partition_key));
    if (impl.js != nullptr && !impl.covered(subjects.back())) {
      throw SinkRefusal(SinkRefusal::Reason::not_found,
                        "no subject of stream '" + impl.options.sink.stream + "' covers '" +
                            subjects.back() + "' (topic '" + message.topic +
                            "'; the stream covers " + impl.covered_list() +
                            "); add it to the stream or change --subject-prefix");
    }
    batch_bytes += nats_message_size(message);
  }
  {
    std::lock_guard lock(impl.mutex);
    auto& channel = state();
    const auto& limits = impl.options;
    // Bounded per database and in all, by count and bytes; a database with
    // nothing pending may always send one batch unless the whole is full.
    if (channel.pending > 0 &&
        (channel.pending + messages.size() > limits.sink.max_pending ||
         (limits.sink.max_pending_bytes > 0 &&
          channel.pending_bytes + batch_bytes > limits.sink.max_pending_bytes))) {
      return false;
    }
    if (impl.total_pending > 0 &&
        (impl.total_pending + messages.size() > limits.max_total_pending ||
         (limits.max_total_pending_bytes > 0 &&
          impl.total_pending_bytes + batch_bytes > limits.max_total_pending_bytes))) {
      return false;
    }
    channel.batches.push_back(
        Batch{batch_id, std::vector<Delivery>(messages.size()), messages.size()});
    if (channel.generation == 0 || impl.js == nullptr) {
      impl.fail(slot_, channel, "no open session");
      impl.notify();
      return true;
    }
  }

  const auto& lease = state_unlocked().lease;
  for (std::size_t i = 0; i < messages.size(); ++i) {
    const auto& message = messages[i];
    const auto& subject = subjects[i];
    auto settle_here = [&](DeliveryStatus status, std::string reason) {
      std::lock_guard lock(impl.mutex);
      auto& channel = state();
      if (status == DeliveryStatus::rejected) channel.refused_subjects.insert(subject);
      impl.settle(channel, PendingPublish{slot_, batch_id, i, 0},
                  Delivery{status, 0, std::move(reason)});
    };
    {
      std::lock_guard lock(impl.mutex);
      auto& channel = state();
      if (channel.failure) break;  // the session is over; nothing more goes out on it
      if (channel.refused_subjects.count(subject) != 0) {
        impl.settle(channel, PendingPublish{slot_, batch_id, i, 0},
                    Delivery{DeliveryStatus::blocked, 0, {}});
        continue;
      }
    }
    if (auto why = impl.refuse_locally(message)) {
      settle_here(DeliveryStatus::rejected, *why);
      continue;
    }

    natsMsg* created = nullptr;
    auto status = natsMsg_Create(&created, subject.c_str(), nullptr, message.payload.data(),
                                 static_cast<int>(message.payload.size()));
    if (status != NATS_OK) {
      std::lock_guard lock(impl.mutex);
      impl.fail(slot_, state(), "cannot create a NATS message: " + nats_error_text(status));
      break;
    }
    // Destroyed on every way out of this iteration but the publish.
    std::unique_ptr<natsMsg, MsgDeleter> built(created);
    std::optional<std::string> bad_header;
    for (const auto& header : message.headers) {
      if (header.name == kMsgIdHeader) continue;  // always the message's own msg_id
      if (natsMsgHeader_Add(built.get(), header.name.c_str(), header.value.c_str()) != NATS_OK) {
        bad_header = "header '" + header.name + "' cannot be carried as a NATS header";
        break;
      }
    }
    if (!bad_header &&
        natsMsgHeader_Set(built.get(), kMsgIdHeader, message.msg_id.c_str()) != NATS_OK) {
      bad_header = "msg_id cannot be carried in the Nats-Msg-Id header";
    }
    if (bad_header) {
      settle_here(DeliveryStatus::rejected, *bad_header);
      continue;
    }

    // JetStream cannot fence a stale relay: look at the lease right before
    // the publish, so a relay paused past its lease sends nothing more.
    if (lease.still_valid && !lease.still_valid()) {
      std::lock_guard lock(impl.mutex);
      impl.fail(slot_, state(),
                "the relay lease (epoch " + std::to_string(lease.epoch) +
                    ") may have lapsed before msg_id " + message.msg_id +
                    " was published; not publishing");
      break;
    }
    natsMsg* const published = built.get();
    PendingPublish publish{slot_, batch_id, i, nats_message_size(message)};
    {
      std::lock_guard lock(impl.mutex);
      if (impl.broken) break;  // the connection's loss failed the session
      auto& channel = state();
      impl.publishes.emplace(published, publish);  // the PubAck may beat the return
      ++channel.pending;
      channel.pending_bytes += publish.bytes;
      ++impl.total_pending;
      impl.total_pending_bytes += publish.bytes;
    }
    // Taken by libnats when the call succeeds (it sets msg to null); left to
    // us when it fails before queueing the message.
    natsMsg* msg = built.release();
    status = js_PublishMsgAsync(impl.js, &msg, nullptr);
    if (status != NATS_OK) {
      {
        std::lock_guard lock(impl.mutex);
        auto found = impl.publishes.find(published);
        if (msg != nullptr && found != impl.publishes.end()) {
          impl.release(state(), found->second);
          impl.publishes.erase(found);
        }
      }
      natsMsg_Destroy(msg);
      if (status == NATS_MAX_PAYLOAD) {
        settle_here(DeliveryStatus::rejected, "message is above the NATS server's max_payload");
        continue;
      }
      std::lock_guard lock(impl.mutex);
      impl.fail(slot_, state(),
                "publish of msg_id " + message.msg_id + " on '" + subject +
                    "' failed: " + nats_error_text(status));
      break;
    }
  }
  std::lock_guard lock(impl.mutex);
  impl.notify();
  return true;
}

}  // namespace

SharedJetStreamConnection::SharedJetStreamConnection(SharedJetStreamOptions options)
    : impl_(std::make_shared<Impl>(std::move(options))) {}

SharedJetStreamConnection::~SharedJetStreamConnection() noexcept = default;

std::unique_ptr<Sink> SharedJetStreamConnection::channel(std::uint32_t slot) {
  return std::make_unique<JetStreamChannel>(impl_, slot);
}

std::size_t SharedJetStreamConnection::pump(std::chrono::milliseconds timeout) {
  (void)timeout;  // PubAcks are taken in on libnats' threads as they arrive
  std::uint64_t count = 0;
  [[maybe_unused]] auto read = ::read(impl_->event_fd, &count, sizeof count);
  return 0;
}

bool SharedJetStreamConnection::has_events(std::uint32_t slot) const {
  std::lock_guard lock(impl_->mutex);
  auto found = impl_->channels.find(slot);
  return found != impl_->channels.end() && Impl::has_news(found->second);
}

SharedConnection::Readable SharedJetStreamConnection::readable() {
  return {nullptr, impl_->event_fd};
}

std::string SharedJetStreamConnection::describe() const {
  return impl_->describe();
}

std::chrono::nanoseconds SharedJetStreamConnection::duplicate_window() const {
  return impl_->window;
}

void SharedJetStreamConnection::reconnect_next_session() {
  impl_->retire("the relay opens a new session on a new connection");
}

// One relay's sink: a connection of its own, made afresh for every session
// (a session that failed may have failed because of its connection).
struct JetStreamSink::Impl {
  explicit Impl(JetStreamSinkOptions options)
      : connection(SharedJetStreamOptions{std::move(options), 0, 0}),
        channel(connection.channel(0)) {}
  SharedJetStreamConnection connection;
  std::unique_ptr<Sink> channel;
};

JetStreamSink::JetStreamSink(JetStreamSinkOptions options)
    : impl_(std::make_unique<Impl>(std::move(options))) {}

JetStreamSink::~JetStreamSink() noexcept = default;

void JetStreamSink::set_lease(SinkLease lease) {
  impl_->channel->set_lease(std::move(lease));
}

SessionResult JetStreamSink::open_session(std::chrono::milliseconds timeout) {
  impl_->connection.reconnect_next_session();
  return impl_->channel->open_session(timeout);
}

bool JetStreamSink::send(std::uint64_t batch_id, std::span<const outbox::PendingMessage> messages) {
  return impl_->channel->send(batch_id, messages);
}

std::optional<SinkEvent> JetStreamSink::poll(std::chrono::milliseconds timeout) {
  return impl_->channel->poll(timeout);
}

std::string JetStreamSink::describe() const {
  return impl_->connection.describe();
}

std::chrono::nanoseconds JetStreamSink::duplicate_window() const {
  return impl_->connection.duplicate_window();
}

}  // namespace relay
