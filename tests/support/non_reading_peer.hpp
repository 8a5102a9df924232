// A DEALER that really stops reading: ZeroMQ keeps one message on its side
// and the kernel a small buffer, so replies pile up at the broker instead of
// being pulled into this process by ZeroMQ's I/O thread. Used by the broker
// tests and bench/broker/broker-stress to play a peer that never reads.
#pragma once

#include <string>

#include <zmq.hpp>

namespace test_support {

inline zmq::socket_t non_reading_dealer(zmq::context_t& context, const std::string& endpoint) {
  zmq::socket_t socket(context, zmq::socket_type::dealer);
  socket.set(zmq::sockopt::rcvhwm, 1);
  socket.set(zmq::sockopt::rcvbuf, 64 * 1024);
  socket.set(zmq::sockopt::sndhwm, 0);
  socket.set(zmq::sockopt::linger, 0);
  socket.connect(endpoint);
  return socket;
}

}  // namespace test_support
