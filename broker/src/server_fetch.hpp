// FETCH requests waiting for messages (long-poll, docs/protocol.md, FETCH):
// answered when a group commit stores to their topic or at their deadline.
//
// Ownership: owns the waiting requests. Thread safety: the loop's thread only.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "wire/protocol.hpp"

namespace broker::detail {

struct WaitingFetch {
  std::string routing_id;
  wire::Fetch request;  // from_offset resolved, limits clamped
  std::chrono::steady_clock::time_point deadline;
};

class LongPoll {
 public:
  void park(WaitingFetch fetch) {
    ++per_connection_[fetch.routing_id];
    waiting_.push_back(std::move(fetch));
  }

  // Takes out the waiting fetches `due` says are, keeping the others in order.
  template <typename Due>
  std::vector<WaitingFetch> take_if(Due due) {
    std::vector<WaitingFetch> still;
    still.reserve(waiting_.size());
    std::vector<WaitingFetch> taken;
    for (auto& entry : waiting_) (due(entry) ? taken : still).push_back(std::move(entry));
    waiting_ = std::move(still);
    for (const auto& entry : taken) {
      auto found = per_connection_.find(entry.routing_id);
      if (found != per_connection_.end() && --found->second == 0) per_connection_.erase(found);
    }
    return taken;
  }

  // Fetches waiting for the connection `routing_id`.
  std::size_t waiting_of(const std::string& routing_id) const {
    auto found = per_connection_.find(routing_id);
    return found == per_connection_.end() ? 0 : found->second;
  }

  // The earlier of `deadline` and every waiting fetch's.
  std::chrono::steady_clock::time_point earliest(
      std::chrono::steady_clock::time_point deadline) const {
    for (const auto& entry : waiting_) deadline = std::min(deadline, entry.deadline);
    return deadline;
  }

  bool empty() const noexcept { return waiting_.empty(); }
  std::size_t size() const noexcept { return waiting_.size(); }

 private:
  std::vector<WaitingFetch> waiting_;
  std::unordered_map<std::string, std::size_t> per_connection_;
};

}  // namespace broker::detail
