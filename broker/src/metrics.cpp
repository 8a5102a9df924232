#include "broker/metrics.hpp"

namespace broker {
namespace {

constexpr const char* kMessages = "outbox_broker_messages_total";
constexpr const char* kMessagesHelp =
    "Messages answered to publishers, by outcome (stored, duplicate, conflict, rejected, "
    "blocked). stored, duplicate, conflict and rejected count since the store was created.";

}  // namespace

ServerMetrics::ServerMetrics(metrics::Registry& registry, std::size_t max_topics,
                             std::size_t max_groups)
    : messages_stored(registry.counter(kMessages, kMessagesHelp, {{"outcome", "stored"}})),
      messages_duplicate(registry.counter(kMessages, kMessagesHelp, {{"outcome", "duplicate"}})),
      messages_conflict(registry.counter(kMessages, kMessagesHelp, {{"outcome", "conflict"}})),
      messages_rejected(registry.counter(kMessages, kMessagesHelp, {{"outcome", "rejected"}})),
      messages_blocked(registry.counter(kMessages, kMessagesHelp, {{"outcome", "blocked"}})),
      malformed_frames(registry.counter("outbox_broker_malformed_frames_total",
                                        "Frames that failed to decode (answered with ERROR).")),
      refused_batches(registry.counter(
          "outbox_broker_refused_batches_total",
          "PUBLISH batches refused without a session or after a failure in their session.")),
      stale_epochs(registry.counter(
          "outbox_broker_stale_epochs_total",
          "HELLO or PUBLISH refused because a newer relay lease epoch was seen (fencing).")),
      curve_refused(registry.counter("outbox_broker_curve_refused_total",
                                     "CURVE handshakes refused (client key not allowed).")),
      storage_failures(registry.counter("outbox_broker_storage_failures_total",
                                        "Group commits (and HELLOs) that failed to write.")),
      sessions_opened(
          registry.counter("outbox_broker_sessions_opened_total", "Sessions opened by HELLO.")),
      fetches(registry.counter("outbox_broker_fetches_total", "FETCH requests answered.")),
      sessions(registry.gauge("outbox_broker_sessions", "Publisher sessions held.")),
      connections(registry.gauge("outbox_broker_connections",
                                 "Peer connections open (accepted and not yet disconnected).")),
      outgoing_bytes(registry.gauge("outbox_broker_outgoing_bytes",
                                    "Reply bytes queued for peers and not yet written.")),
      database_bytes(registry.gauge("outbox_broker_database_bytes",
                                    "Size of the store's database file and its WAL.")),
      dedup_entries(registry.gauge("outbox_broker_dedup_entries", "msg_ids in the dedup index.")),
      store_writable(registry.gauge(
          "outbox_broker_store_writable",
          "0 after a group commit failed to write, until one succeeds again; else 1.")),
      serving(registry.gauge("outbox_broker_serving", "1 while the broker loop serves.")),
      group_commit_messages(registry.histogram("outbox_broker_group_commit_messages",
                                               "Messages written by one group commit.",
                                               metrics::power_of_two_buckets(65536))),
      group_commit_seconds(registry.histogram("outbox_broker_group_commit_seconds",
                                              "Time one group commit took to be durable.",
                                              metrics::latency_buckets())),
      max_topic_series(max_topics),
      max_group_series(max_groups) {
  store_writable.set(1);
  registry.add_collector([this](metrics::Exposition& out) { collect(out); });
}

void ServerMetrics::publish(std::vector<TopicOffset> topics, std::size_t topics_left_out,
                            std::vector<GroupLag> groups, bool groups_left_out) {
  std::lock_guard lock(mutex_);
  topics_ = std::move(topics);
  topics_left_out_ = topics_left_out;
  groups_ = std::move(groups);
  groups_left_out_ = groups_left_out;
}

void ServerMetrics::collect(metrics::Exposition& out) const {
  std::lock_guard lock(mutex_);
  out.family("outbox_broker_topic_last_offset",
             "Last offset assigned in a topic (the first topics in name order, see "
             "outbox_broker_topics_unlisted).",
             metrics::Type::gauge);
  for (const auto& topic : topics_) {
    out.sample("outbox_broker_topic_last_offset", {{"topic", topic.topic}},
               static_cast<double>(topic.last_offset));
  }
  out.family("outbox_broker_topics_unlisted",
             "Topics without their own outbox_broker_topic_last_offset series (over the cap).",
             metrics::Type::gauge);
  out.sample("outbox_broker_topics_unlisted", {}, static_cast<double>(topics_left_out_));
  out.family("outbox_broker_group_committed_offset",
             "Last offset a consumer group committed for a topic.", metrics::Type::gauge);
  for (const auto& group : groups_) {
    out.sample("outbox_broker_group_committed_offset",
               {{"group", group.group}, {"topic", group.topic}},
               static_cast<double>(group.committed_offset));
  }
  out.family("outbox_broker_group_lag_messages",
             "Messages stored in a topic after a consumer group's committed offset.",
             metrics::Type::gauge);
  for (const auto& group : groups_) {
    out.sample("outbox_broker_group_lag_messages", {{"group", group.group}, {"topic", group.topic}},
               static_cast<double>(group.lag));
  }
  out.family("outbox_broker_groups_unlisted",
             "1 when more (group, topic) pairs exist than get their own series.",
             metrics::Type::gauge);
  out.sample("outbox_broker_groups_unlisted", {}, groups_left_out_ ? 1 : 0);
}

}  // namespace broker
