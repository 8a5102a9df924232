// Best-effort local wake-ups from producers to the relay of the same database:
// a Linux abstract-namespace datagram socket whose name is derived from the
// database's full path. Sending never blocks and never fails the caller; the
// relay falls back to polling PRAGMA data_version when a wake-up is lost.
#pragma once

#include <sys/socket.h>
#include <sys/un.h>

#include <chrono>
#include <string>

namespace outbox::detail {

// The abstract socket name for a database file ("" for in-memory databases).
std::string wake_name_for(const std::string& database_filename);

class WakeSender {
 public:
  explicit WakeSender(const std::string& database_filename);
  ~WakeSender() noexcept;
  WakeSender(const WakeSender&) = delete;
  WakeSender& operator=(const WakeSender&) = delete;

  void notify() noexcept;

 private:
  int fd_ = -1;
  // After "nobody listens" (no relay running), stay quiet for a few
  // milliseconds instead of paying a system call on every commit.
  std::chrono::steady_clock::time_point quiet_until_{};
  sockaddr_un address_{};
  socklen_t address_length_ = 0;
};

class WakeReceiver {
 public:
  explicit WakeReceiver(const std::string& database_filename);
  ~WakeReceiver() noexcept;
  WakeReceiver(const WakeReceiver&) = delete;
  WakeReceiver& operator=(const WakeReceiver&) = delete;

  // False when another process already listens for this database (a standby
  // relay, say); such a receiver never wakes and the caller polls instead.
  bool listening() const { return fd_ >= 0; }
  // Waits up to `timeout` for a wake-up; true if one (or more) arrived.
  bool wait(std::chrono::milliseconds timeout) noexcept;

 private:
  int fd_ = -1;
};

}  // namespace outbox::detail
