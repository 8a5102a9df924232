// Starts tests/faults' fault_proxy in its cutting mode between clients and
// outbox-broker: a plain TCP proxy that cuts every connection after a random
// number of bytes (or, with --freeze, silently stops forwarding). Binds
// tcp://127.0.0.1:* and reads the endpoint back; killed by pid on destruction.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "broker_process.hpp"
#include "test_support.hpp"

namespace broker_test {

class CuttingProxy {
 public:
  // `faults` picks the mode, e.g. {"--cut-every", "2K-400K"}. The seed is
  // random and shown with the test's output, so a failure can be replayed.
  CuttingProxy(const std::filesystem::path& dir, const std::string& broker_endpoint,
               std::vector<std::string> faults)
      : seed_(std::random_device{}()) {
    auto name = "cutting-proxy-" + std::to_string(counter()++);
    auto endpoint_file = dir / (name + ".endpoint");
    stats_file_ = dir / (name + ".stats");
    std::vector<std::string> args = {
        "--broker",        broker_endpoint,        "--bind",       "tcp://127.0.0.1:*",
        "--endpoint-file", endpoint_file.string(), "--stats-file", stats_file_.string(),
        "--seed",          std::to_string(seed_)};
    args.insert(args.end(), faults.begin(), faults.end());
    process_ = std::make_unique<test_support::ChildProcess>(OUTBOX_BIN_FAULT_PROXY, args, dir);
    endpoint_ = wait_for_endpoint(*process_, endpoint_file);
  }

  const std::string& endpoint() const { return endpoint_; }
  std::uint64_t seed() const { return seed_; }

  // The proxy's counters ("cut", "freeze", "forwarded_up", ...), as last
  // written (every 100 ms).
  std::map<std::string, long> counts() const {
    std::map<std::string, long> counts;
    std::istringstream in(test_support::read_file(stats_file_));
    std::string line;
    while (std::getline(in, line)) {
      auto equals = line.find('=');
      if (equals != std::string::npos)
        counts[line.substr(0, equals)] = std::stol(line.substr(equals + 1));
    }
    return counts;
  }

  // The counters as written after this call began: waits (up to 5 s) for the
  // proxy to replace its stats file once, so that a count read as a baseline
  // is not one from up to 100 ms before.
  std::map<std::string, long> fresh_counts() const {
    const auto before = std::filesystem::last_write_time(stats_file_);
    test_support::wait_until(
        [&] { return std::filesystem::last_write_time(stats_file_) != before; },
        std::chrono::seconds(5));
    return counts();
  }

 private:
  static int& counter() {
    static int value = 0;
    return value;
  }
  std::uint64_t seed_;
  std::filesystem::path stats_file_;
  std::string endpoint_;
  std::unique_ptr<test_support::ChildProcess> process_;
};

}  // namespace broker_test
