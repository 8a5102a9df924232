// Starts the real outbox-broker on tcp://127.0.0.1:* and reads the bound
// endpoint back from --endpoint-file. Stopped (SIGKILL by pid) on destruction
// unless the test stopped it first.
#pragma once

#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "broker/client.hpp"
#include "test_support.hpp"
#include "wire/protocol.hpp"
#include "written_address.hpp"

namespace broker_test {

using namespace std::chrono_literals;

inline std::string broker_binary() {
  return OUTBOX_BIN_OUTBOX_BROKER;
}

// Waits for a daemon started with --endpoint-file to write the loopback
// endpoint it bound; fails the test if it exits first or takes over 20 s.
inline std::string wait_for_endpoint(test_support::ChildProcess& process,
                                     const std::filesystem::path& file) {
  return test_support::wait_for_written_address(process, file, "tcp://127.0.0.1:");
}

class BrokerProcess {
 public:
  // `bind` defaults to a port the system picks; a restart passes the endpoint
  // the previous process had, so that clients find it again.
  BrokerProcess(const std::filesystem::path& dir, const std::filesystem::path& db,
                std::vector<std::string> extra_args = {},
                const std::string& bind = "tcp://127.0.0.1:*") {
    endpoint_file_ = dir / ("endpoint-" + std::to_string(counter()++));
    std::vector<std::string> args = {"serve",
                                     "--db",
                                     db.string(),
                                     "--bind",
                                     bind,
                                     "--endpoint-file",
                                     endpoint_file_.string(),
                                     "--sync",
                                     "normal",
                                     "--log-level",
                                     "debug"};
    args.insert(args.end(), extra_args.begin(), extra_args.end());
    process_ = std::make_unique<test_support::ChildProcess>(broker_binary(), args, dir);
    endpoint_ = wait_for_endpoint(*process_, endpoint_file_);
  }

  const std::string& endpoint() const { return endpoint_; }
  test_support::ChildProcess& process() { return *process_; }

  // SIGTERM and wait for a clean exit.
  test_support::ExitStatus stop() {
    process_->signal(SIGTERM);
    auto status = process_->wait_for(30s);
    INFO(process_->stderr_text());
    REQUIRE(status.has_value());
    return *status;
  }

  // Resident memory of the daemon in KiB (from /proc).
  long resident_kib() const {
    std::ifstream status("/proc/" + std::to_string(process_->pid()) + "/status");
    std::string line;
    while (std::getline(status, line)) {
      if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
    }
    return -1;
  }

 private:
  static int& counter() {
    static int value = 0;
    return value;
  }
  std::filesystem::path endpoint_file_;
  std::string endpoint_;
  std::unique_ptr<test_support::ChildProcess> process_;
};

inline wire::OutgoingMessage message(std::string msg_id, std::string payload,
                                     std::string topic = "orders", std::string key = "k") {
  return wire::OutgoingMessage{
      std::move(msg_id), std::move(topic), std::move(key), {}, std::move(payload)};
}

// A client with an open session.
inline std::unique_ptr<broker::Client> connect(const std::string& endpoint,
                                               const std::string& producer = "test") {
  auto client = std::make_unique<broker::Client>(endpoint);
  auto welcome = client->hello(producer, 20s);
  INFO((welcome.ok() ? std::string() : welcome.error().message));
  REQUIRE(welcome.ok());
  return client;
}

inline std::uint64_t counter(const wire::StatsReply& stats, const std::string& name) {
  for (const auto& [counter_name, value] : stats.counters) {
    if (counter_name == name) return value;
  }
  FAIL("no counter " << name);
  return 0;
}

}  // namespace broker_test
