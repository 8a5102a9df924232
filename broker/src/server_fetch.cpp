// FETCH (answered at once, or parked until a commit stores to its topic or
// its wait ends) and COMMIT_OFFSET: what consumers ask of the broker.

#include <algorithm>
#include <stdexcept>

#include "server_impl.hpp"

namespace broker {

void Server::Impl::on_message(const std::string& routing_id, wire::Fetch& fetch) {
  ++counters_.fetches;
  if (fetch.topic.empty()) {
    return reply_error(routing_id, fetch.request_id, wire::ErrorCode::invalid_value,
                       "FETCH needs a topic");
  }
  if (fetch.use_group_offset) {
    if (fetch.group.empty()) {
      return reply_error(routing_id, fetch.request_id, wire::ErrorCode::invalid_value,
                         "FETCH from the group offset needs a group");
    }
    try {
      // A group that never committed (or committed 0) starts at from_offset.
      auto committed = store_.committed_offset(fetch.group, fetch.topic);
      if (committed > 0) fetch.from_offset = committed + 1;
    } catch (const std::exception& error) {
      return reply_error(routing_id, fetch.request_id, wire::ErrorCode::storage_failure,
                         error.what());
    }
  }
  fetch.from_offset = std::max<std::uint64_t>(fetch.from_offset, 1);
  fetch.max_messages = fetch.max_messages == 0
                           ? options_.default_fetch_messages
                           : std::min(fetch.max_messages, options_.max_fetch_messages);
  fetch.max_bytes = static_cast<std::uint32_t>(
      fetch.max_bytes == 0 ? options_.max_fetch_bytes
                           : std::min<std::size_t>(fetch.max_bytes, options_.max_fetch_bytes));
  fetch.wait_ms = std::min(fetch.wait_ms, options_.max_fetch_wait_ms);
  // At either maximum the FETCH is answered at once, as if its wait had
  // passed: one connection cannot take every place and turn the others'
  // long-polls into busy polling.
  if (fetch.wait_ms == 0 || store_.last_offset(fetch.topic) >= fetch.from_offset ||
      waiting_.size() >= options_.max_waiting_fetches ||
      waiting_.waiting_of(routing_id) >= options_.max_waiting_fetches_per_connection) {
    return answer_fetch(routing_id, fetch);
  }
  waiting_.park(detail::WaitingFetch{
      routing_id, fetch, detail::SteadyClock::now() + std::chrono::milliseconds(fetch.wait_ms)});
}

void Server::Impl::answer_fetch(const std::string& routing_id, const wire::Fetch& fetch) {
  wire::Messages reply_message;
  reply_message.request_id = fetch.request_id;
  reply_message.topic = fetch.topic;
  try {
    // Sized to what the peer can still take: with no room left the reply
    // carries no messages (next_offset = from_offset), and the first message
    // of a reply may exceed the room by at most one message.
    auto room = peers_.room(routing_id);
    auto max_bytes = std::min<std::size_t>(fetch.max_bytes, room);
    auto max_messages = room == 0 ? 0 : fetch.max_messages;
    auto result = store_.fetch(fetch.topic, fetch.from_offset, max_messages, max_bytes);
    reply_message.next_offset = result.next_offset;
    reply_message.last_offset = result.last_offset;
    reply_message.messages.reserve(result.messages.size());
    // Trimmed after by what the reply holds, not what the FETCH allowed: by
    // default a FETCH may take 8 MiB, and trimming after every long-poll answer
    // of one message (malloc_trim walks the heap and madvises each free page)
    // cost the loop an madvise per message at 10,000 msg/s.
    std::size_t reply_bytes = 0;
    for (auto& stored : result.messages) {
      reply_bytes += stored.payload.size() + stored.msg_id.size() + stored.partition_key.size() +
                     stored.headers.size();
      wire::StoredMessage message;
      message.offset = stored.offset;
      message.timestamp_ms = stored.stored_at_ms;
      message.msg_id = std::move(stored.msg_id);
      message.key = std::move(stored.partition_key);
      auto headers = wire::decode_header_block(stored.headers, options_.limits);
      if (headers) message.headers = std::move(headers.value());
      message.payload = std::move(stored.payload);
      reply_message.messages.push_back(std::move(message));
    }
    if (reply_bytes >= kTrimAfterBytes) trim_due_ = true;
  } catch (const std::exception& error) {
    return reply_error(routing_id, fetch.request_id, wire::ErrorCode::storage_failure,
                       error.what());
  }
  answer(routing_id, reply_message);
}

// After a group commit: the waiting fetches of the topics it stored to.
void Server::Impl::wake_fetches() {
  const auto& topics = round_.touched_topics;
  answer_waiting_if([&](const detail::WaitingFetch& entry) {
    if (std::find(topics.begin(), topics.end(), entry.request.topic) == topics.end()) {
      return false;
    }
    return store_.last_offset(entry.request.topic) >= entry.request.from_offset;
  });
}

void Server::Impl::on_message(const std::string& routing_id, wire::CommitOffset& commit) {
  if (commit.topic.empty() || commit.group.empty()) {
    return reply_error(routing_id, commit.request_id, wire::ErrorCode::invalid_value,
                       "COMMIT_OFFSET needs a topic and a group");
  }
  try {
    store_.commit_offset(commit.group, commit.topic, commit.offset);
  } catch (const std::invalid_argument& error) {
    return reply_error(routing_id, commit.request_id, wire::ErrorCode::invalid_value, error.what());
  } catch (const std::exception& error) {
    return reply_error(routing_id, commit.request_id, wire::ErrorCode::storage_failure,
                       error.what());
  }
  answer(routing_id,
         wire::OffsetCommitted{commit.request_id, commit.topic, commit.group, commit.offset});
}

}  // namespace broker
