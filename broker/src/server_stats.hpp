// What the broker reports about itself besides STATS replies: the number of
// open connections, counted from ZeroMQ's socket monitor events.
//
// Ownership: owns its monitor thread and PAIR socket. Thread safety: start()
// on the ROUTER's thread; the gauge is written from the watcher's thread.
#pragma once

#include <atomic>
#include <thread>

#include <zmq.hpp>

#include "metrics/metrics.hpp"

namespace broker::detail {

// Counts the ROUTER's open connections from ZeroMQ's socket monitor events
// (accepted / disconnected), on its own thread so that the loop is untouched.
// Only started when metrics are wanted.
class ConnectionWatcher {
 public:
  ConnectionWatcher() = default;
  ConnectionWatcher(const ConnectionWatcher&) = delete;
  ConnectionWatcher& operator=(const ConnectionWatcher&) = delete;
  ~ConnectionWatcher() noexcept { stop(); }

  // Called on the socket's own thread (zmq_socket_monitor requires it).
  // Throws outbox::Error of kind io when the socket cannot be monitored.
  void start(zmq::context_t& context, zmq::socket_t& socket, metrics::Gauge& connections);
  void stop() noexcept;

 private:
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace broker::detail
