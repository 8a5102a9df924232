#include "redis_server.hpp"

#include <arpa/inet.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <stdexcept>

namespace inbox_test {
namespace {

redisContext* connect_to(const std::filesystem::path& socket, int port) {
  const timeval timeout{1, 0};
  return port == 0 ? redisConnectUnixWithTimeout(socket.c_str(), timeout)
                   : redisConnectWithTimeout("127.0.0.1", port, timeout);
}

}  // namespace

RedisServer::RedisServer(RedisServerOptions options) : options_(options) {
  for (int attempt = 0; attempt < 5; ++attempt) {
    if (!options_.unix_socket) port_ = test_support::free_loopback_port();
    if (start_once()) return;
  }
  FAIL("redis-server did not start; see its log in " << dir_.path());
}

std::string RedisServer::endpoint() const {
  if (options_.unix_socket) return "unix://" + (dir_ / "redis.sock").string();
  return "redis://127.0.0.1:" + std::to_string(port_);
}

bool RedisServer::start_once() {
  std::vector<std::string> args{"--bind",        "127.0.0.1",
                                "--port",        std::to_string(port_),
                                "--dir",         dir_.path().string(),
                                "--save",        "",
                                "--appendonly",  options_.append_only ? "yes" : "no",
                                "--appendfsync", "always",
                                "--daemonize",   "no",
                                "--logfile",     ""};
  if (options_.unix_socket) {
    args.insert(args.end(),
                {"--unixsocket", (dir_ / "redis.sock").string(), "--unixsocketperm", "700"});
  }
  auto log_dir = dir_ / ("log-" + std::to_string(starts_++));
  std::filesystem::create_directories(log_dir);
  process_ = std::make_unique<test_support::ChildProcess>(OUTBOX_REDIS_SERVER, args, log_dir);
  // Ready when PING answers PONG (not LOADING); gone when the process exited
  // (on a bind race: the port was taken meanwhile).
  bool up = test_support::wait_until([&] { return !process_->running() || ready(); },
                                     std::chrono::seconds(30));
  return up && process_->running();
}

bool RedisServer::ready() const {
  return command({"PING"}) == "PONG";
}

std::string RedisServer::command(const std::vector<std::string>& args) const {
  redisContext* context = connect_to(dir_ / "redis.sock", options_.unix_socket ? 0 : port_);
  if (context == nullptr) return "ERR:no context";
  std::string text = "ERR:" + std::string(context->errstr);
  if (context->err == 0) {
    std::vector<const char*> argv;
    std::vector<std::size_t> lengths;
    for (const auto& arg : args) {
      argv.push_back(arg.c_str());
      lengths.push_back(arg.size());
    }
    auto* reply = static_cast<redisReply*>(
        redisCommandArgv(context, static_cast<int>(argv.size()), argv.data(), lengths.data()));
    if (reply == nullptr) {
      text = "ERR:" + std::string(context->errstr);
    } else {
      switch (reply->type) {
        case REDIS_REPLY_INTEGER:
          text = std::to_string(reply->integer);
          break;
        case REDIS_REPLY_NIL:
          text = "(nil)";
          break;
        case REDIS_REPLY_ERROR:
          text = "ERR:" + std::string(reply->str, reply->len);
          break;
        case REDIS_REPLY_ARRAY:
          text = "(array)";
          break;
        default:
          text = std::string(reply->str, reply->len);
          break;
      }
      freeReplyObject(reply);
    }
  }
  redisFree(context);
  return text;
}

void RedisServer::kill() {
  if (!process_) return;
  process_->signal(SIGKILL);
  REQUIRE(process_->wait_for(std::chrono::seconds(30)));
}

void RedisServer::restart() {
  kill();
  REQUIRE(start_once());
}

void RedisServer::pause() {
  REQUIRE(process_->pause());
}

void RedisServer::resume() {
  process_->signal(SIGCONT);
}

}  // namespace inbox_test
