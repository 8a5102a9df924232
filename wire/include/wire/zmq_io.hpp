// Thin cppzmq helpers: send one protocol message as three frames, and receive
// one multipart message without trusting its shape. No sockets are created
// here; callers own theirs.
//
// Would-block is a value (false / empty optional), never an exception.
// zmq::error_t from the socket itself (ETERM, EINTR) is left to the caller.
#pragma once

#include <cstddef>
#include <optional>
#include <string_view>
#include <vector>

#include <zmq.hpp>

#include "wire/protocol.hpp"

namespace wire {

// Sends tag, command and body; on a ROUTER, `routing_id` (non-empty) is sent
// first. Returns false when the message could not be queued without blocking
// (with zmq::send_flags::dontwait) or the peer is gone.
bool send_frames(zmq::socket_t& socket, const Frames& frames,
                 zmq::send_flags flags = zmq::send_flags::none, std::string_view routing_id = {});
// The same from views: ZeroMQ copies each frame once, and a body built in a
// buffer the caller keeps (a PUBLISH of a thousand messages) is not copied
// into a Frames first.
bool send_frames(zmq::socket_t& socket, std::string_view tag, std::string_view command,
                 std::string_view body, zmq::send_flags flags = zmq::send_flags::none,
                 std::string_view routing_id = {});
bool send_message(zmq::socket_t& socket, const AnyMessage& message,
                  zmq::send_flags flags = zmq::send_flags::none, std::string_view routing_id = {});

// One received multipart message. Frames past `max_frames` are read and
// dropped (ZeroMQ delivers a message whole), and `too_many_frames` is set.
struct Received {
  std::vector<zmq::message_t> frames;
  bool too_many_frames = false;

  // Views of the frames from `first` on (1 on a ROUTER, skipping the routing id).
  std::vector<std::string_view> views(std::size_t first = 0) const;
};

// Receives one whole multipart message; empty when nothing is waiting (with
// zmq::recv_flags::dontwait).
std::optional<Received> receive_frames(zmq::socket_t& socket,
                                       zmq::recv_flags flags = zmq::recv_flags::none,
                                       std::size_t max_frames = 8);

// Receives and decodes one message sent by a peer without a routing id (DEALER side).
// Empty when nothing is waiting.
std::optional<Result<AnyMessage>> receive_message(zmq::socket_t& socket,
                                                  zmq::recv_flags flags = zmq::recv_flags::none,
                                                  const Limits& limits = {});

}  // namespace wire
