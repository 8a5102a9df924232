// STATS replies, the metrics the loop copies once per second, and the
// connection count from the socket monitor.

#include "server_stats.hpp"

#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <string>

#include "broker/metrics.hpp"
#include "outbox/error.hpp"
#include "server_impl.hpp"

namespace broker {
namespace detail {

void ConnectionWatcher::start(zmq::context_t& context, zmq::socket_t& socket,
                              metrics::Gauge& connections) {
  static std::atomic<unsigned> next_id{0};
  std::string address = "inproc://outbox-broker-monitor-" + std::to_string(next_id++);
  if (zmq_socket_monitor(socket.handle(), address.c_str(),
                         ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_DISCONNECTED) != 0) {
    throw outbox::Error(outbox::ErrorKind::io, std::string("cannot monitor the broker socket: ") +
                                                   zmq_strerror(zmq_errno()));
  }
  zmq::socket_t pair(context, zmq::socket_type::pair);
  pair.set(zmq::sockopt::linger, 0);
  pair.connect(address);
  thread_ = std::thread([this, pair = std::move(pair), &connections]() mutable {
    std::int64_t open = 0;
    while (!stop_.load(std::memory_order_relaxed)) {
      zmq::pollitem_t item{pair.handle(), 0, ZMQ_POLLIN, 0};
      if (zmq::poll(&item, 1, std::chrono::milliseconds(100)) == 0) continue;
      zmq::message_t event, address_frame;
      if (!pair.recv(event, zmq::recv_flags::dontwait)) continue;
      if (event.more()) (void)pair.recv(address_frame, zmq::recv_flags::dontwait);
      if (event.size() < 2) continue;
      std::uint16_t id = 0;
      std::memcpy(&id, event.data(), sizeof id);
      if (id == ZMQ_EVENT_ACCEPTED) ++open;
      if (id == ZMQ_EVENT_DISCONNECTED && open > 0) --open;
      connections.set(static_cast<double>(open));
    }
  });
}

void ConnectionWatcher::stop() noexcept {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
}

}  // namespace detail

void Server::Impl::on_message(const std::string& routing_id, wire::StatsRequest& request) {
  wire::StatsReply stats;
  stats.request_id = request.request_id;
  try {
    auto store_stats = store_.stats();
    stats.counters = {
        {"stored", store_stats.stored},
        {"duplicates", store_stats.duplicates},
        {"conflicts", store_stats.conflicts},
        {"rejected", store_stats.rejected + counters_.rejected_on_decode},
        {"dedup_entries", store_stats.dedup_entries},
        {"malformed", counters_.malformed},
        {"refused_batches", counters_.refused_batches},
        {"stale_epochs", counters_.stale_epochs},
        {"blocked", counters_.blocked},
        {"storage_failures", counters_.storage_failures},
        {"group_commits", counters_.group_commits},
        {"batches", counters_.batches},
        {"fetches", counters_.fetches},
        {"sessions_opened", counters_.sessions_opened},
        {"epoch_commits", counters_.epoch_commits},
        {"sessions_active", sessions_.size()},
        {"waiting_fetches", waiting_.size()},
        {"replies_dropped", counters_.replies_dropped},
        {"curve_refused", counters_.curve_refused},
        {"resumes", counters_.resumes},
        {"resumed_batches", counters_.resumed_batches},
        // 0: forever. Clients compare it with how late they may resend.
        {"dedup_window_ms", static_cast<std::uint64_t>(store_.options().dedup_window.count())},
        {"requests_dropped", counters_.requests_dropped},
        {"peers_held_back", peers_.held_back_count()},
        {"outgoing_bytes", peers_.outgoing_bytes()},
        {"retained_ack_bytes", sessions_.retained_ack_bytes()},
        {"requests_waiting", peers_.requests_waiting()},
    };
    for (auto& topic : store_stats.topics) {
      stats.topics.push_back({std::move(topic.topic), topic.message_count, topic.last_offset});
    }
  } catch (const std::exception& error) {
    return reply_error(routing_id, request.request_id, wire::ErrorCode::storage_failure,
                       error.what());
  }
  answer(routing_id, stats);
}

// Copies the loop's counters and the store's figures into the metrics, once
// per second: nothing per message.
void Server::Impl::refresh_metrics(detail::SteadyClock::time_point now) {
  if (!options_.metrics || now < next_metrics_refresh_) return;
  next_metrics_refresh_ = now + std::chrono::seconds(1);
  auto& m = *options_.metrics;
  m.malformed_frames.set(counters_.malformed);
  m.refused_batches.set(counters_.refused_batches);
  m.stale_epochs.set(counters_.stale_epochs);
  m.curve_refused.set(counters_.curve_refused);
  m.storage_failures.set(counters_.storage_failures);
  m.sessions_opened.set(counters_.sessions_opened);
  m.fetches.set(counters_.fetches);
  m.messages_blocked.set(counters_.blocked);
  m.sessions.set(static_cast<double>(sessions_.size()));
  m.outgoing_bytes.set(static_cast<double>(peers_.outgoing_bytes()));
  std::error_code ignored;
  auto bytes = std::filesystem::file_size(store_.path(), ignored);
  auto wal_bytes = std::filesystem::file_size(store_.path().string() + "-wal", ignored);
  m.database_bytes.set(static_cast<double>((bytes == std::uintmax_t(-1) ? 0 : bytes) +
                                           (wal_bytes == std::uintmax_t(-1) ? 0 : wal_bytes)));
  try {
    auto stats = store_.stats();
    m.messages_stored.set(stats.stored);
    m.messages_duplicate.set(stats.duplicates);
    m.messages_conflict.set(stats.conflicts);
    m.messages_rejected.set(stats.rejected + counters_.rejected_on_decode);
    m.dedup_entries.set(static_cast<double>(stats.dedup_entries));
    std::vector<ServerMetrics::TopicOffset> topics;
    for (std::size_t i = 0; i < stats.topics.size() && i < m.max_topic_series; ++i) {
      topics.push_back({stats.topics[i].topic, stats.topics[i].last_offset});
    }
    auto left_out = stats.topics.size() - topics.size();
    auto offsets = store_.group_offsets(m.max_group_series + 1);
    bool groups_left_out = offsets.size() > m.max_group_series;
    if (groups_left_out) offsets.pop_back();
    std::vector<ServerMetrics::GroupLag> groups;
    for (auto& offset : offsets) {
      auto last = store_.last_offset(offset.topic);
      groups.push_back({std::move(offset.group), std::move(offset.topic), offset.committed_offset,
                        last > offset.committed_offset ? last - offset.committed_offset : 0});
    }
    m.publish(std::move(topics), left_out, std::move(groups), groups_left_out);
  } catch (const std::exception& error) {
    logger_->debug("could not read the store's figures for the metrics: {}", error.what());
  }
}

}  // namespace broker
