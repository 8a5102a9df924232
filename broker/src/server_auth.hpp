// The broker's CURVE authentication: the ROUTER as a CURVE server and the ZAP
// handler that admits client keys (docs/operations.md, CURVE).
//
// Ownership: owns the ZAP socket; the ROUTER and the context stay the
// caller's. Thread safety: the loop's thread only.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <spdlog/logger.h>
#include <zmq.hpp>

#include "broker/server.hpp"

namespace broker::detail {

class CurveAuth {
 public:
  // Makes `router` a CURVE server with the configured secret key and binds the
  // ZAP handler in `context`; call before the router binds. Throws
  // outbox::Error of kind io for a key that is not valid Z85 or a libzmq without CURVE.
  CurveAuth(zmq::context_t& context, zmq::socket_t& router, const CurveServerConfig& config,
            spdlog::logger& logger);

  // To wait on with zmq_poll (ZMQ_POLLIN): a handshake waits for an answer.
  void* poll_handle() noexcept { return zap_.handle(); }
  // Answers every waiting ZAP request; returns how many keys were refused.
  std::uint64_t serve();
  void close() noexcept { zap_.close(); }

 private:
  zmq::socket_t zap_;
  std::vector<std::string> allowed_clients_;  // binary 32-byte keys; empty: any
  spdlog::logger& logger_;
};

}  // namespace broker::detail
