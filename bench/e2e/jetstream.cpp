#include "jetstream.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include <time.h>

#include "bench_support.hpp"
#include "find_program.hpp"
#include "progress.hpp"

#if OUTBOX_BENCH_HAVE_NATS
#include <nats/nats.h>
#endif

namespace bench {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;

namespace {

// `program` itself when it names a path, else where PATH (or a system
// directory not on every PATH) has it; unchanged when nowhere.
std::string resolve_in_path(const std::string& program) {
  if (program.find('/') != std::string::npos) return program;
  auto found = test_support::find_program(program);
  return found.empty() ? program : found;
}

}  // namespace

std::string nats_server_version(const std::string& server_binary) {
  auto binary = resolve_in_path(server_binary);
  std::string command = "'" + binary + "' --version 2>&1";
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(::popen(command.c_str(), "r"), ::pclose);
  if (!pipe) return {};
  char buffer[256] = {};
  if (!std::fgets(buffer, sizeof buffer, pipe.get())) return {};
  std::string text = buffer;
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  auto at = text.find(": ");  // "nats-server: v2.9.10"
  return at == std::string::npos ? text : text.substr(at + 2);
}

#if !OUTBOX_BENCH_HAVE_NATS

bool jetstream_available() {
  return false;
}
void jetstream_shutdown() {}
JetStreamResult run_jetstream(const JetStreamSettings&, const Dataset&) {
  throw std::runtime_error("outbox-bench was built without libnats (install libnats-dev)");
}
struct JetStreamTarget::Impl {};
JetStreamTarget::JetStreamTarget(const JetStreamSettings&, const fs::path&, const std::string&) {
  throw std::runtime_error("outbox-bench was built without libnats (install libnats-dev)");
}
JetStreamTarget::~JetStreamTarget() = default;
std::string JetStreamTarget::url() const {
  return {};
}
std::uint64_t JetStreamTarget::stream_messages() {
  return 0;
}
test_support::ChildProcess& JetStreamTarget::process() {
  throw std::logic_error("no nats-server");
}
JetStreamViaResult publish_via(const JetStreamSettings&, JetStreamTarget&, const std::string&,
                               const Dataset&, std::chrono::milliseconds) {
  throw std::runtime_error("outbox-bench was built without libnats (install libnats-dev)");
}

#else

bool jetstream_available() {
  return true;
}
void jetstream_shutdown() {
  nats_Close();
}

namespace {

constexpr const char* stream_name = "BENCH";
constexpr const char* publish_subject = "bench.drain";
constexpr const char* latency_subject = "bench.latency";

void check(natsStatus status, const std::string& what) {
  if (status == NATS_OK) return;
  natsStatus last = NATS_OK;
  const char* detail = nats_GetLastError(&last);
  throw std::runtime_error(what + ": " + natsStatus_GetText(status) +
                           (detail && *detail ? std::string(" (") + detail + ")" : ""));
}

// Shared with the library's acknowledgement thread.
struct AckState {
  std::atomic<std::uint64_t> acks{0};
  std::atomic<std::uint64_t> duplicates{0};
  std::atomic<std::uint64_t> errors{0};
  // Latency pass only: msg_id -> index, and where to write ack times.
  const std::unordered_map<std::string, std::size_t>* index_of = nullptr;
  std::vector<std::int64_t>* ack_ns = nullptr;
  std::mutex mutex;
  std::string first_error;

  void reset() {
    acks = 0;
    duplicates = 0;
    errors = 0;
    index_of = nullptr;
    ack_ns = nullptr;
  }
};

void on_ack(jsCtx*, natsMsg* msg, jsPubAck* ack, jsPubAckErr* failure, void* closure) {
  auto& state = *static_cast<AckState*>(closure);
  if (ack != nullptr) {
    if (state.index_of != nullptr) {
      auto now = steady_ns();
      const char* id = nullptr;
      if (natsMsgHeader_Get(msg, "Nats-Msg-Id", &id) == NATS_OK && id != nullptr) {
        auto found = state.index_of->find(id);
        if (found != state.index_of->end()) (*state.ack_ns)[found->second] = now;
      }
    }
    if (ack->Duplicate) state.duplicates.fetch_add(1, std::memory_order_relaxed);
    state.acks.fetch_add(1, std::memory_order_release);
  } else {
    state.errors.fetch_add(1, std::memory_order_relaxed);
    std::lock_guard lock(state.mutex);
    if (state.first_error.empty() && failure != nullptr) {
      state.first_error = std::string(natsStatus_GetText(failure->Err)) +
                          (failure->ErrText ? std::string(": ") + failure->ErrText : "");
    }
  }
  natsMsg_Destroy(msg);
}

// Options of an asynchronous publisher: at most settings.max_pending in
// flight, PubAcks to `handler`, a publish stalled at that maximum waiting up
// to `stall_wait_ms`.
jsOptions async_publish_options(const JetStreamSettings& settings, jsPubAckHandler handler,
                                void* closure, std::int64_t stall_wait_ms) {
  jsOptions options;
  jsOptions_Init(&options);
  options.Wait = 10'000;
  options.PublishAsync.MaxPending = static_cast<std::int64_t>(settings.max_pending);
  options.PublishAsync.AckHandler = handler;
  options.PublishAsync.AckHandlerClosure = closure;
  options.PublishAsync.StallWait = stall_wait_ms;
  return options;
}

class NatsServer {
 public:
  NatsServer(const JetStreamSettings& settings, const fs::path& dir) {
    auto binary = resolve_in_path(settings.server_binary);
    // A port the system just handed out; if another program takes it before
    // nats-server binds, the start fails and is tried again on a new port.
    for (int attempt = 0; attempt < 5; ++attempt) {
      port_ = free_loopback_port();
      process_ = std::make_unique<ChildProcess>(
          binary,
          std::vector<std::string>{"-js", "-a", "127.0.0.1", "-p", std::to_string(port_), "-sd",
                                   (dir / "jetstream").string()},
          KeptLog{"nats-server", dir});
      url_ = "nats://127.0.0.1:" + std::to_string(port_);
      if (connect_when_ready()) return;
      process_.reset();
    }
    throw std::runtime_error("nats-server did not start");
  }
  ~NatsServer() {
    if (connection_ != nullptr) natsConnection_Destroy(connection_);
  }
  natsConnection* connection() const { return connection_; }
  ChildProcess& process() { return *process_; }
  void stop() {
    if (connection_ != nullptr) {
      natsConnection_Destroy(connection_);
      connection_ = nullptr;
    }
    process_->stop(15s);
  }

 private:
  bool connect_when_ready() {
    natsOptions* options = nullptr;
    check(natsOptions_Create(&options), "natsOptions_Create");
    std::unique_ptr<natsOptions, void (*)(natsOptions*)> guard(options, natsOptions_Destroy);
    check(natsOptions_SetURL(options, url_.c_str()), "natsOptions_SetURL");
    check(natsOptions_SetTimeout(options, 2000), "natsOptions_SetTimeout");
    check(natsOptions_SetMaxReconnect(options, 0), "natsOptions_SetMaxReconnect");
    bool connected = wait_until(
        [&] {
          if (!process_->running()) return true;
          return natsConnection_Connect(&connection_, options) == NATS_OK;
        },
        20s, 5ms);
    if (!connected || connection_ == nullptr) {
      progress("jetstream: nats-server on port " + std::to_string(port_) +
               " did not come up: " + process_->log_tail(500));
      connection_ = nullptr;
      return false;
    }
    return true;
  }

  int port_ = 0;
  std::string url_;

 public:
  const std::string& url() const { return url_; }

 private:
  std::unique_ptr<ChildProcess> process_;
  natsConnection* connection_ = nullptr;
};

std::uint64_t stream_messages(jsCtx* js) {
  jsStreamInfo* info = nullptr;
  jsErrCode code = static_cast<jsErrCode>(0);
  check(js_GetStreamInfo(&info, js, stream_name, nullptr, &code), "js_GetStreamInfo");
  auto count = info->State.Msgs;
  jsStreamInfo_Destroy(info);
  return count;
}

// The file-backed stream `stream_name` covering `subjects`.
void add_stream(jsCtx* js, const JetStreamSettings& settings, const char* subjects) {
  jsStreamConfig config;
  jsStreamConfig_Init(&config);
  config.Name = stream_name;
  const char* list[] = {subjects};
  config.Subjects = list;
  config.SubjectsLen = 1;
  config.Storage = js_FileStorage;
  config.Duplicates = settings.duplicate_window_seconds * 1'000'000'000LL;
  jsStreamInfo* info = nullptr;
  jsErrCode code = static_cast<jsErrCode>(0);
  check(js_AddStream(&info, js, &config, nullptr, &code), "js_AddStream");
  jsStreamInfo_Destroy(info);
}

void open_nats() {
  static const bool opened = [] {
    check(nats_Open(-1), "nats_Open");
    return true;
  }();
  (void)opened;
}

void publish_one(jsCtx* js, const char* subject, const std::string& msg_id,
                 const std::string& payload) {
  natsMsg* msg = nullptr;
  check(natsMsg_Create(&msg, subject, nullptr, payload.data(), static_cast<int>(payload.size())),
        "natsMsg_Create");
  auto status = natsMsgHeader_Set(msg, "Nats-Msg-Id", msg_id.c_str());
  if (status == NATS_OK) status = js_PublishMsgAsync(js, &msg, nullptr);
  if (msg != nullptr) natsMsg_Destroy(msg);  // still ours only when the publish failed
  check(status, "js_PublishMsgAsync");
}

void wait_complete(jsCtx* js, std::size_t count) {
  jsPubOptions options;
  jsPubOptions_Init(&options);
  options.MaxWait = 60'000 + static_cast<std::int64_t>(count / 10);
  check(js_PublishAsyncComplete(js, &options), "js_PublishAsyncComplete");
}

// Publishes data[0..n) asynchronously; returns seconds from the first publish
// to the last acknowledgement.
double publish_all(jsCtx* js, const Dataset& data) {
  auto started = steady_ns();
  for (std::size_t i = 0; i < data.size(); ++i) {
    if ((i & 4095) == 0) check_interrupted();
    publish_one(js, publish_subject, data.msg_ids[i], data.payloads[i]);
  }
  wait_complete(js, data.size());
  return static_cast<double>(steady_ns() - started) / 1e9;
}

}  // namespace

JetStreamResult run_jetstream(const JetStreamSettings& settings, const Dataset& data) {
  JetStreamResult result;
  result.server_version = nats_server_version(settings.server_binary);
  open_nats();
  TempDir dir("outbox-bench-nats");
  NatsServer server(settings, dir.path());
  progress("jetstream: nats-server " + result.server_version + " up, file storage in " +
           dir.path().string());

  AckState state;
  auto js_options = async_publish_options(settings, on_ack, &state, 10'000);
  jsCtx* js = nullptr;
  check(natsConnection_JetStream(&js, server.connection(), &js_options), "JetStream context");
  std::unique_ptr<jsCtx, void (*)(jsCtx*)> js_guard(js, jsCtx_Destroy);

  add_stream(js, settings, "bench.>");

  // ---- publish -----------------------------------------------------------
  progress("jetstream: async publish of " + std::to_string(data.size()) + " messages (" +
           std::to_string(settings.max_pending) + " in flight)");
  state.reset();
  result.messages = data.size();
  result.publish_seconds = publish_all(js, data);
  result.publish_msgs_per_sec = static_cast<double>(data.size()) / result.publish_seconds;
  if (state.acks.load(std::memory_order_acquire) != data.size() || state.errors.load() != 0) {
    result.problems.push_back("jetstream publish: " + std::to_string(state.acks.load()) +
                              " acks and " + std::to_string(state.errors.load()) + " errors for " +
                              std::to_string(data.size()) + " messages" +
                              (state.first_error.empty() ? "" : " (" + state.first_error + ")"));
  }
  if (state.duplicates.load() != 0) {
    result.problems.push_back("jetstream publish: " + std::to_string(state.duplicates.load()) +
                              " new messages were reported as duplicates");
  }
  {
    char line[160];
    std::snprintf(line, sizeof line, "jetstream: publish %.0f msg/s (%zu in %.3f s)",
                  result.publish_msgs_per_sec, data.size(), result.publish_seconds);
    progress(line);
  }

  // ---- latency -----------------------------------------------------------
  std::size_t latency_count = 0;
  if (settings.rate > 0 && settings.latency_seconds > 0) {
    latency_count =
        static_cast<std::size_t>(std::llround(settings.rate * settings.latency_seconds));
    auto messages = make_dataset(latency_count, settings.payload_bytes, 1, 100, settings.seed + 3);
    std::unordered_map<std::string, std::size_t> index_of;
    index_of.reserve(latency_count);
    for (std::size_t i = 0; i < latency_count; ++i) index_of.emplace(messages.msg_ids[i], i);
    std::vector<std::int64_t> publish_ns(latency_count, 0), ack_ns(latency_count, 0);
    state.reset();
    state.index_of = &index_of;
    state.ack_ns = &ack_ns;
    progress("jetstream: latency, " + std::to_string(static_cast<long>(settings.rate)) +
             " msg/s for " + std::to_string(settings.latency_seconds) + " s, publish to PubAck");
    const double period_ns = 1e9 / settings.rate;
    auto start_point = SteadyClock::now();
    auto started = steady_ns();
    for (std::size_t i = 0; i < latency_count; ++i) {
      if ((i & 1023) == 0) check_interrupted();
      std::this_thread::sleep_until(
          start_point +
          std::chrono::nanoseconds(static_cast<std::int64_t>(period_ns * static_cast<double>(i))));
      publish_ns[i] = steady_ns();
      publish_one(js, latency_subject, messages.msg_ids[i], messages.payloads[i]);
    }
    auto finished = steady_ns();
    wait_complete(js, latency_count);
    auto acked = state.acks.load(std::memory_order_acquire);
    state.index_of = nullptr;
    state.ack_ns = nullptr;
    result.latency_offered_rate = settings.rate;
    result.latency_achieved_rate =
        static_cast<double>(latency_count) / (static_cast<double>(finished - started) / 1e9);
    for (std::size_t i = 0; i < latency_count; ++i) {
      if (ack_ns[i] > 0) result.latency_ns.push_back(ack_ns[i] - publish_ns[i]);
    }
    if (acked != latency_count || result.latency_ns.size() != latency_count) {
      result.problems.push_back("jetstream latency: " + std::to_string(result.latency_ns.size()) +
                                " of " + std::to_string(latency_count) + " acknowledged");
    }
    result.latency = percentiles(result.latency_ns);
    char line[200];
    std::snprintf(line, sizeof line,
                  "jetstream: latency p50 %.3f ms, p99 %.3f ms, p99.9 %.3f ms, max %.3f ms",
                  result.latency.p50_ms, result.latency.p99_ms, result.latency.p999_ms,
                  result.latency.max_ms);
    progress(line);
  }

  // ---- resend ------------------------------------------------------------
  progress("jetstream: resend of all " + std::to_string(data.size()) + " msg_ids");
  state.reset();
  result.resend_seconds = publish_all(js, data);
  result.resend_msgs_per_sec = static_cast<double>(data.size()) / result.resend_seconds;
  result.resend_duplicates = state.duplicates.load();
  result.resend_all_duplicate = state.acks.load(std::memory_order_acquire) == data.size() &&
                                result.resend_duplicates == data.size() && state.errors.load() == 0;
  if (!result.resend_all_duplicate) {
    result.problems.push_back("jetstream resend: " + std::to_string(result.resend_duplicates) +
                              " of " + std::to_string(data.size()) + " answered duplicate (acks " +
                              std::to_string(state.acks.load()) + ", errors " +
                              std::to_string(state.errors.load()) + ")");
  }
  {
    char line[160];
    std::snprintf(line, sizeof line, "jetstream: resend %.0f duplicates/s, %llu of %zu duplicate",
                  result.resend_msgs_per_sec,
                  static_cast<unsigned long long>(result.resend_duplicates), data.size());
    progress(line);
  }

  result.stream_messages = stream_messages(js);
  if (result.stream_messages != data.size() + latency_count) {
    result.problems.push_back("jetstream: the stream holds " +
                              std::to_string(result.stream_messages) + " messages for " +
                              std::to_string(data.size() + latency_count) + " published");
  }
  js_guard.reset();
  server.stop();
  return result;
}

namespace {

// publish_via's state, shared with libnats's threads (the PubAck handler and
// the connection's closed callback).
struct ViaState {
  const std::unordered_map<std::string, std::size_t>* index_of = nullptr;
  std::mutex mutex;
  std::condition_variable changed;
  std::vector<std::uint64_t> sequence;  // stream sequence of each message; 0: no PubAck yet
  std::size_t acknowledged = 0;         // messages with a PubAck
  std::size_t failed = 0;               // publishes answered with an error
  std::string first_error;
};

void via_on_ack(jsCtx*, natsMsg* msg, jsPubAck* ack, jsPubAckErr* failure, void* closure) {
  auto& state = *static_cast<ViaState*>(closure);
  std::size_t index = SIZE_MAX;
  const char* id = nullptr;
  if (natsMsgHeader_Get(msg, "Nats-Msg-Id", &id) == NATS_OK && id != nullptr) {
    auto found = state.index_of->find(id);
    if (found != state.index_of->end()) index = found->second;
  }
  {
    std::lock_guard lock(state.mutex);
    if (index != SIZE_MAX && ack != nullptr) {
      // A duplicate's PubAck carries the sequence of the copy stored first.
      if (state.sequence[index] == 0) {
        state.sequence[index] = ack->Sequence;
        ++state.acknowledged;
      }
    } else if (ack == nullptr) {
      ++state.failed;
      if (state.first_error.empty() && failure != nullptr) {
        state.first_error = std::string(natsStatus_GetText(failure->Err)) +
                            (failure->ErrText ? std::string(": ") + failure->ErrText : "");
      }
    }
  }
  state.changed.notify_all();
  natsMsg_Destroy(msg);
}

void via_on_closed(natsConnection*, void* closure) {
  auto& state = *static_cast<ViaState*>(closure);
  { std::lock_guard lock(state.mutex); }
  state.changed.notify_all();
}

double process_cpu_ms() {
  timespec now{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now);
  return static_cast<double>(now.tv_sec) * 1e3 + static_cast<double>(now.tv_nsec) / 1e6;
}

// One NATS connection without automatic reconnection, and its JetStream
// context: a lost connection closes it, and publish_via opens the next.
class ViaLink {
 public:
  ViaLink(const std::string& url, const JetStreamSettings& settings, ViaState& state) {
    natsOptions* options = nullptr;
    check(natsOptions_Create(&options), "natsOptions_Create");
    std::unique_ptr<natsOptions, void (*)(natsOptions*)> guard(options, natsOptions_Destroy);
    check(natsOptions_SetURL(options, url.c_str()), "natsOptions_SetURL");
    check(natsOptions_SetTimeout(options, 2000), "natsOptions_SetTimeout");
    check(natsOptions_SetAllowReconnect(options, false), "natsOptions_SetAllowReconnect");
    check(natsOptions_SetClosedCB(options, via_on_closed, &state), "natsOptions_SetClosedCB");
    status_ = natsConnection_Connect(&connection_, options);
    if (status_ != NATS_OK) return;
    // A short stall: a publish stalled behind PubAcks that a cut lost must
    // give the loop back, so that it can see the connection closed.
    auto js_options = async_publish_options(settings, via_on_ack, &state, 5);
    status_ = natsConnection_JetStream(&js_, connection_, &js_options);
  }
  ~ViaLink() {
    if (js_ != nullptr) jsCtx_Destroy(js_);
    if (connection_ != nullptr) natsConnection_Destroy(connection_);
  }
  ViaLink(const ViaLink&) = delete;
  ViaLink& operator=(const ViaLink&) = delete;

  bool open() const { return status_ == NATS_OK && !natsConnection_IsClosed(connection_); }
  void close() {
    if (connection_ != nullptr) natsConnection_Close(connection_);
  }
  natsStatus status() const { return status_; }
  jsCtx* js() const { return js_; }

 private:
  natsConnection* connection_ = nullptr;
  jsCtx* js_ = nullptr;
  natsStatus status_ = NATS_OK;
};

}  // namespace

JetStreamViaResult publish_via(const JetStreamSettings& settings, JetStreamTarget& target,
                               const std::string& url, const Dataset& data,
                               std::chrono::milliseconds timeout) {
  JetStreamViaResult result;
  const std::size_t count = data.size();
  std::unordered_map<std::string, std::size_t> index_of;
  index_of.reserve(count);
  for (std::size_t i = 0; i < count; ++i) index_of.emplace(data.msg_ids[i], i);
  ViaState state;
  state.index_of = &index_of;
  state.sequence.assign(count, 0);
  const auto stream_before = target.stream_messages();

  const auto cpu_before = process_cpu_ms();
  const auto started = steady_ns();
  const auto deadline = SteadyClock::now() + timeout;
  auto link = std::make_unique<ViaLink>(url, settings, state);
  std::size_t next = 0;           // the first message never published
  std::size_t first_unacked = 0;  // no message before it lacks a PubAck
  bool timed_out = false;
  std::size_t failed_seen = 0;
  for (std::size_t loops = 0;; ++loops) {
    if ((loops & 255) == 0) check_interrupted();
    if (SteadyClock::now() >= deadline) {
      timed_out = true;
      break;
    }
    {
      // A publish answered with an error: as after a cut, so that its resend
      // cannot land behind later messages.
      std::lock_guard lock(state.mutex);
      if (state.failed != failed_seen) {
        failed_seen = state.failed;
        link->close();
      }
    }
    if (!link->open()) {
      // A new connection, then everything without a PubAck again, oldest
      // first, before anything new: nothing of the old connection is left to
      // overtake it.
      link.reset();
      link = std::make_unique<ViaLink>(url, settings, state);
      ++result.reconnects;
      if (!link->open()) continue;  // cut in its handshake: at once again
      std::lock_guard lock(state.mutex);
      while (first_unacked < next && state.sequence[first_unacked] != 0) ++first_unacked;
      next = first_unacked;
    }
    {
      std::lock_guard lock(state.mutex);
      if (state.acknowledged == count) break;
    }
    bool refused = false;
    for (int burst = 0; next < count && burst < 64; ++burst) {
      std::uint64_t sequence = 0;
      {
        std::lock_guard lock(state.mutex);
        sequence = state.sequence[next];
      }
      if (sequence != 0) {  // acknowledged before the cut: not again
        ++next;
        continue;
      }
      natsMsg* msg = nullptr;
      check(natsMsg_Create(&msg, publish_subject, nullptr, data.payloads[next].data(),
                           static_cast<int>(data.payloads[next].size())),
            "natsMsg_Create");
      auto status = natsMsgHeader_Set(msg, "Nats-Msg-Id", data.msg_ids[next].c_str());
      if (status == NATS_OK) status = js_PublishMsgAsync(link->js(), &msg, nullptr);
      natsMsg_Destroy(msg);  // still ours only when the publish failed
      if (status != NATS_OK) {
        refused = true;  // stalled behind MaxPending, or the connection is gone
        break;
      }
      ++result.published;
      ++next;
    }
    if (refused || next == count) {
      // Stalled, disconnected or everything published: wait for a PubAck or
      // the connection's end (or look again shortly).
      std::unique_lock lock(state.mutex);
      if (state.acknowledged != count) state.changed.wait_for(lock, refused ? 1ms : 5ms);
    }
  }
  result.seconds = static_cast<double>(steady_ns() - started) / 1e9;
  result.client_cpu_ms = process_cpu_ms() - cpu_before;
  link.reset();
  std::lock_guard lock(state.mutex);
  if (timed_out) {
    result.problems.push_back("jetstream via " + url + ": " + std::to_string(state.acknowledged) +
                              " of " + std::to_string(count) + " acknowledged within " +
                              std::to_string(timeout.count()) + " ms");
  }
  // Per-key order, from the stream sequences the PubAcks reported.
  std::unordered_map<std::string_view, std::uint64_t> last_of_key;
  for (std::size_t i = 0; i < count; ++i) {
    auto& last = last_of_key[data.keys[i]];
    if (state.sequence[i] != 0 && state.sequence[i] < last) {
      ++result.reordered;
    } else {
      last = std::max(last, state.sequence[i]);
    }
  }
  if (result.reordered != 0) {
    result.problems.push_back("jetstream via " + url + ": " + std::to_string(result.reordered) +
                              " messages stored after a later message of their key");
  }
  const auto stored = target.stream_messages() - stream_before;
  if (!timed_out && stored != count) {
    result.problems.push_back("jetstream via " + url + ": the stream gained " +
                              std::to_string(stored) + " messages for " + std::to_string(count) +
                              " published");
  }
  if (state.failed != 0) {
    progress("jetstream via " + url + ": " + std::to_string(state.failed) +
             " publishes answered with an error (made again on a new connection); first: " +
             state.first_error);
  }
  return result;
}

struct JetStreamTarget::Impl {
  Impl(const JetStreamSettings& settings, const fs::path& dir) : server(settings, dir) {}
  NatsServer server;
  jsCtx* js = nullptr;
};

JetStreamTarget::JetStreamTarget(const JetStreamSettings& settings, const fs::path& dir,
                                 const std::string& subjects) {
  static_assert(std::string_view(kStream) == std::string_view("BENCH"));
  open_nats();
  impl_ = std::make_unique<Impl>(settings, dir);
  jsOptions options;
  jsOptions_Init(&options);
  options.Wait = 10'000;
  check(natsConnection_JetStream(&impl_->js, impl_->server.connection(), &options),
        "JetStream context");
  add_stream(impl_->js, settings, subjects.c_str());
}

JetStreamTarget::~JetStreamTarget() {
  if (impl_ && impl_->js != nullptr) jsCtx_Destroy(impl_->js);
}

std::string JetStreamTarget::url() const {
  return impl_->server.url();
}

std::uint64_t JetStreamTarget::stream_messages() {
  return bench::stream_messages(impl_->js);
}

test_support::ChildProcess& JetStreamTarget::process() {
  return impl_->server.process();
}

#endif

}  // namespace bench
