// A connection to one destination that carries the sessions of many outbox
// databases, each through a Sink of its own (MultiRelay's connections):
// SharedBrokerConnection for outbox-broker, SharedJetStreamConnection for
// NATS JetStream.
//
// Contract: channel(slot) gives a database its Sink, which keeps the Sink
// contract (sink.hpp) for that database as if it had the connection alone:
// its own sessions, batch order, failures and lease. A caller that forwards
// many databases on one thread waits until readable() is readable, calls
// pump(), and steps the databases whose has_events() is true.
//
// Ownership: channels share the connection's state; each channel must be
// destroyed before the next one with its slot is made. Thread safety: the
// connection and all its channels on one thread.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "relay/sink.hpp"

namespace relay {

class SharedConnection {
 public:
  virtual ~SharedConnection() = default;

  // A Sink for one database. Throws std::invalid_argument if `slot` is in use.
  virtual std::unique_ptr<Sink> channel(std::uint32_t slot) = 0;
  // Takes in what arrived within `timeout` for the channels; how many replies.
  virtual std::size_t pump(std::chrono::milliseconds timeout) = 0;
  // Whether the channel `slot` has outcomes waiting for its poll().
  virtual bool has_events(std::uint32_t slot) const = 0;

  // What to wait on (for reading) before pump(): a libzmq socket (for
  // zmq_poll) or, when `socket` is null, a file descriptor. Valid until the
  // next call on the connection or a channel.
  struct Readable {
    void* socket = nullptr;
    int descriptor = -1;
  };
  virtual Readable readable() = 0;

  virtual std::string describe() const = 0;
  // Answers the connection could not give to any channel (a reply the
  // network duplicated), dropped since it was made.
  virtual std::uint64_t unmatched_answers() const noexcept { return 0; }
};

}  // namespace relay
