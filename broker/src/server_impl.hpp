// Server::Impl, the broker's single-threaded ROUTER loop, split by concern:
//   server.cpp           the loop: polling, reading, dispatch, maintenance, shutdown
//   server_auth.cpp      CURVE and the ZAP handler (CurveAuth)
//   server_peers.cpp     replies and held-back requests per connection (Peers)
//   server_sessions.cpp  HELLO, RESUME and the session table (Sessions)
//   server_publish.cpp   PUBLISH and the group commit that acknowledges it
//   server_fetch.cpp     FETCH, long-poll (LongPoll) and COMMIT_OFFSET
//   server_stats.cpp     STATS, the metrics and the connection count
// Each concern's state is its own class; what stays here is what ties them:
// a reply waits for the group commit of its connection's earlier batches.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <spdlog/logger.h>
#include <zmq.hpp>

#include "broker/server.hpp"
#include "broker/store.hpp"
#include "server_auth.hpp"
#include "server_fetch.hpp"
#include "server_peers.hpp"
#include "server_sessions.hpp"
#include "server_stats.hpp"
#include "wire/protocol.hpp"
#include "wire/zmq_io.hpp"

namespace broker {

class Server::Impl {
 public:
  Impl(Store& store, ServerOptions options);

  const std::string& endpoint() const noexcept { return endpoint_; }
  void run();
  void request_stop() noexcept { stop_.store(true, std::memory_order_relaxed); }
  ServerCounters counters() const { return counters_; }
  void serve(std::string_view routing_id, std::span<const std::string_view> frames);

 private:
  // The batches read since the last group commit, and the messages they
  // hand to Store::append (views into their frames).
  struct PendingBatch {
    std::string routing_id;
    std::uint64_t session_id = 0;
    std::uint64_t batch_id = 0;
    // Per message of the batch: its index in `incoming`, or kBlocked.
    std::vector<std::uint32_t> slots;
    std::unique_ptr<wire::Received> frames;  // the views in `incoming` point into these
  };
  struct DeferredHello {
    std::string routing_id;
    wire::Hello hello;
  };
  struct Round {
    std::vector<PendingBatch> pending;
    std::vector<IncomingMessage> incoming;
    std::vector<AppendOutcome> outcomes;
    std::vector<std::string_view> violations;  // REJECTED reasons of the batches in `pending`
    std::size_t bytes = 0;                     // PUBLISH bodies read
    std::vector<std::string> touched_topics;   // stored to by the last commit
    // HELLOs that raise their origin's lease epoch: the epochs are written
    // in one transaction before the batches, and answered after it.
    std::vector<DeferredHello> hellos;
    std::map<std::string, std::uint64_t, std::less<>> hello_epochs;  // highest per origin
  };

  // ---- server.cpp: input and the loop ----
  bool read_round();
  void handle(std::unique_ptr<wire::Received> received);
  void dispatch(const std::string& routing_id, std::unique_ptr<wire::Received> received);
  void hold_back(const std::string& routing_id, detail::Peer& peer,
                 std::unique_ptr<wire::Received> received);
  void serve_held_back();
  bool has_room(detail::Peer& peer);
  void answer(const std::string& routing_id, const wire::AnyMessage& message);
  void reply(const std::string& routing_id, const wire::AnyMessage& message);
  void reply_error(const std::string& routing_id, std::uint64_t request_id, wire::ErrorCode code,
                   std::string message);
  void malformed(const std::string& routing_id, std::uint64_t request_id, const wire::Error& error);
  void refuse_first_version(const std::string& routing_id);
  void commit_before_reply(const std::string& routing_id);
  std::chrono::milliseconds next_timeout(detail::SteadyClock::time_point now) const;
  bool maintenance_enabled() const;
  void maintain(detail::SteadyClock::time_point now);
  void return_memory();
  void shutdown();
  void write_endpoint_file();
  void on_message(const std::string& routing_id, wire::Ping& ping);
  void on_message(const std::string& routing_id, wire::ErrorReply& error);
  template <typename Other>
  void on_message(const std::string& routing_id, Other& message);

  // ---- server_sessions.cpp ----
  void on_message(const std::string& routing_id, wire::Hello& hello);
  void on_message(const std::string& routing_id, wire::Resume& resume);
  static std::string stale_epoch_text(const std::string& origin, std::uint64_t epoch,
                                      std::uint64_t highest);
  // The ERROR for a HELLO under a stale epoch (logged and counted).
  wire::ErrorReply refuse_stale_hello(const wire::Hello& hello, std::uint64_t highest);
  // Opens the session a HELLO asks for and returns its WELCOME.
  wire::Welcome open_session(const std::string& routing_id, const wire::Hello& hello);
  void settle_hellos();

  // ---- server_publish.cpp ----
  void handle_publish(const std::string& routing_id, std::unique_ptr<wire::Received> received);
  // Whether the session may publish now (not failed, not stale); else answered.
  bool admit(const std::string& routing_id, detail::Session& session, std::uint64_t batch_id);
  void commit_pending();
  wire::Ack acknowledge(const PendingBatch& batch, detail::Session* session);
  void note_topic(std::string_view topic);

  // ---- server_fetch.cpp ----
  void on_message(const std::string& routing_id, wire::Fetch& fetch);
  void on_message(const std::string& routing_id, wire::CommitOffset& commit);
  void answer_fetch(const std::string& routing_id, const wire::Fetch& fetch);
  void wake_fetches();
  template <typename Due>
  void answer_waiting_if(Due due) {
    for (const auto& entry : waiting_.take_if(due)) answer_fetch(entry.routing_id, entry.request);
  }

  // ---- server_stats.cpp ----
  void on_message(const std::string& routing_id, wire::StatsRequest& request);
  void refresh_metrics(detail::SteadyClock::time_point now);

  // HELLOs waiting for their epoch write end a round of reads at this many.
  static constexpr std::size_t kMaxDeferredHellos = 128;
  static constexpr std::uint32_t kBlocked = 0xffffffffu;
  // Slots from here on index Round::violations (messages refused while decoding).
  static constexpr std::uint32_t kRejectedSlotBase = 0x80000000u;
  // What an ACK may take per message (a BLOCKED reason is ~70 bytes).
  static constexpr std::size_t kAckEntryEstimateBytes = wire::kAckEntryFixedBytes + 80;
  // A group commit or a peer's queue this large leaves freed memory worth
  // returning to the system once the loop is idle.
  static constexpr std::size_t kTrimAfterBytes = std::size_t{8} << 20;

  Store& store_;
  ServerOptions options_;
  std::shared_ptr<spdlog::logger> logger_;
  detail::WakeFd wake_;  // before the context: outlives its I/O threads
  zmq::context_t context_;
  zmq::socket_t router_;
  std::optional<detail::CurveAuth> auth_;
  detail::ConnectionWatcher connection_watcher_;  // after the context: stopped before it ends
  std::string endpoint_;
  std::atomic<bool> stop_{false};
  ServerCounters counters_;
  detail::Sessions sessions_;
  detail::Peers peers_;
  detail::LongPoll waiting_;
  Round round_;
  bool trim_due_ = false;
  detail::SteadyClock::time_point next_peer_sweep_{};
  detail::SteadyClock::time_point next_maintenance_{};
  detail::SteadyClock::time_point next_metrics_refresh_{};
};

}  // namespace broker
