#include "wire/zmq_io.hpp"

#include <cerrno>

namespace wire {
namespace {

// A signal (SIGTERM to a daemon on its way out) makes a blocked ZeroMQ call
// fail with EINTR. The frame it was about was neither queued nor consumed, so
// trying the same call again is safe; callers see only would-block or success.
template <typename Call>
auto retry_interrupted(Call call) {
  while (true) {
    try {
      return call();
    } catch (const zmq::error_t& error) {
      if (error.num() != EINTR) throw;
    }
  }
}

}  // namespace

bool send_frames(zmq::socket_t& socket, const Frames& frames, zmq::send_flags flags,
                 std::string_view routing_id) {
  return send_frames(socket, frames.tag, frames.command, frames.body, flags, routing_id);
}

bool send_frames(zmq::socket_t& socket, std::string_view tag, std::string_view command,
                 std::string_view body, zmq::send_flags flags, std::string_view routing_id) {
  auto more = flags | zmq::send_flags::sndmore;
  // Only the first frame can fail to queue; once it is in, ZeroMQ takes the rest.
  auto send = [&socket](std::string_view frame, zmq::send_flags frame_flags) {
    return retry_interrupted(
        [&] { return socket.send(zmq::buffer(frame.data(), frame.size()), frame_flags); });
  };
  if (!routing_id.empty()) {
    if (!send(routing_id, more)) return false;
  }
  if (!send(tag, more)) return false;
  send(command, more);
  send(body, flags);
  return true;
}

bool send_message(zmq::socket_t& socket, const AnyMessage& message, zmq::send_flags flags,
                  std::string_view routing_id) {
  return send_frames(socket, encode(message), flags, routing_id);
}

std::vector<std::string_view> Received::views(std::size_t first) const {
  std::vector<std::string_view> result;
  for (std::size_t i = first; i < frames.size(); ++i) {
    result.emplace_back(static_cast<const char*>(frames[i].data()), frames[i].size());
  }
  return result;
}

std::optional<Received> receive_frames(zmq::socket_t& socket, zmq::recv_flags flags,
                                       std::size_t max_frames) {
  Received received;
  zmq::message_t frame;
  if (!retry_interrupted([&] { return socket.recv(frame, flags); })) return std::nullopt;
  while (true) {
    bool more = frame.more();
    if (received.frames.size() < max_frames) {
      received.frames.push_back(std::move(frame));
      frame = zmq::message_t();
    } else {
      received.too_many_frames = true;
    }
    if (!more) break;
    // The rest of a multipart message is already here: this never blocks.
    (void)retry_interrupted([&] { return socket.recv(frame, zmq::recv_flags::none); });
  }
  return received;
}

std::optional<Result<AnyMessage>> receive_message(zmq::socket_t& socket, zmq::recv_flags flags,
                                                  const Limits& limits) {
  auto received = receive_frames(socket, flags, 4);
  if (!received) return std::nullopt;
  if (received->too_many_frames) {
    return Result<AnyMessage>(Error{ErrorCode::bad_frame_count, "too many frames"});
  }
  auto views = received->views();
  return decode(views, limits);
}

}  // namespace wire
