// The broker daemon's metrics: what a running Server reports into a
// metrics::Registry (pass it in ServerOptions::metrics). docs/operations.md
// explains every series.
//
//   metrics::Registry registry;
//   auto server_metrics = std::make_shared<broker::ServerMetrics>(registry);
//   broker::Server server(store, {.metrics = server_metrics});
//
// Cost: the loop observes two histogram values per group commit and copies its
// counters and the store's figures in once per refresh interval (1 s), so
// nothing is added per message. Per-topic and per-group series are capped:
// the first max_topic_series topics and max_group_series (group, topic) pairs
// in name order get their own series, the number left out is reported.
//
// Ownership: the references point into the registry, which must outlive this.
// Thread safety: the Server writes from its loop; the registry renders from
// any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "metrics/metrics.hpp"

namespace broker {

struct ServerMetrics {
  explicit ServerMetrics(metrics::Registry& registry, std::size_t max_topic_series = 100,
                         std::size_t max_group_series = 100);

  // outbox_broker_messages_total{outcome=...}
  metrics::Counter& messages_stored;
  metrics::Counter& messages_duplicate;
  metrics::Counter& messages_conflict;
  metrics::Counter& messages_rejected;
  metrics::Counter& messages_blocked;
  metrics::Counter& malformed_frames;
  metrics::Counter& refused_batches;
  metrics::Counter& stale_epochs;
  metrics::Counter& curve_refused;
  metrics::Counter& storage_failures;
  metrics::Counter& sessions_opened;
  metrics::Counter& fetches;
  metrics::Gauge& sessions;
  metrics::Gauge& connections;
  metrics::Gauge& outgoing_bytes;
  metrics::Gauge& database_bytes;
  metrics::Gauge& dedup_entries;
  metrics::Gauge& store_writable;  // 0 after a failed group commit until one succeeds
  metrics::Gauge& serving;         // 1 while the loop runs
  metrics::Histogram& group_commit_messages;
  metrics::Histogram& group_commit_seconds;

  const std::size_t max_topic_series;
  const std::size_t max_group_series;

  struct TopicOffset {
    std::string topic;
    std::uint64_t last_offset = 0;
  };
  struct GroupLag {
    std::string group;
    std::string topic;
    std::uint64_t committed_offset = 0;
    std::uint64_t lag = 0;  // the topic's last offset minus the committed one
  };
  // Replaces the per-topic and per-group figures (already capped by the
  // caller to max_topic_series / max_group_series), with how many were left out.
  void publish(std::vector<TopicOffset> topics, std::size_t topics_left_out,
               std::vector<GroupLag> groups, bool groups_left_out);

 private:
  void collect(metrics::Exposition& out) const;

  mutable std::mutex mutex_;
  std::vector<TopicOffset> topics_;
  std::size_t topics_left_out_ = 0;
  std::vector<GroupLag> groups_;
  bool groups_left_out_ = false;
};

}  // namespace broker
