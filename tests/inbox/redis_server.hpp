// A real redis-server for tests: its own temp directory, a free loopback port
// (or a unix socket in that directory), readiness awaited with PING under a
// deadline, killed by pid at the end.
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "test_support.hpp"

namespace inbox_test {

struct RedisServerOptions {
  bool append_only = true;   // appendonly yes, appendfsync always
  bool unix_socket = false;  // listen on <dir>/redis.sock instead of TCP
};

class RedisServer {
 public:
  explicit RedisServer(RedisServerOptions options = {});
  ~RedisServer() noexcept = default;
  RedisServer(const RedisServer&) = delete;
  RedisServer& operator=(const RedisServer&) = delete;

  // redis://127.0.0.1:<port> or unix://<dir>/redis.sock
  std::string endpoint() const;
  const std::filesystem::path& dir() const { return dir_.path(); }

  // SIGKILL by pid and reap: no shutdown save, the worst case for durability.
  void kill();
  // Starts again on the same address and data directory.
  void restart();
  // SIGSTOP / SIGCONT: a server that accepts nothing and answers nothing.
  void pause();
  void resume();

  // Runs one command on a fresh connection; the reply as text (integers in
  // decimal, errors prefixed "ERR:").
  std::string command(const std::vector<std::string>& args) const;

 private:
  bool start_once();
  bool ready() const;

  RedisServerOptions options_;
  test_support::TempDir dir_{"outbox-redis"};
  int port_ = 0;
  int starts_ = 0;
  std::unique_ptr<test_support::ChildProcess> process_;
};

}  // namespace inbox_test
