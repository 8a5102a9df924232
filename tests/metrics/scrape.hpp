// Reading the daemons' HTTP endpoint in tests: GET with cpp-httplib, and one
// sample picked out of the Prometheus text format.
#pragma once

#include <httplib.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <sstream>
#include <string>

#include <catch2/catch.hpp>

#include "test_support.hpp"
#include "written_address.hpp"

namespace metrics_test {

struct HttpReply {
  int status = 0;  // 0: no answer
  std::string body;
};

// The HOST:PORT a daemon started with `--metrics-bind 127.0.0.1:0
// --metrics-address-file <file>` wrote there; fails the test if the daemon ended
// first.
inline std::string wait_for_address(test_support::ChildProcess& process,
                                    const std::filesystem::path& file) {
  return test_support::wait_for_written_address(process, file, "127.0.0.1:");
}

// `address` is HOST:PORT as written to --metrics-address-file.
inline HttpReply http_get(const std::string& address, const std::string& path) {
  auto colon = address.rfind(':');
  httplib::Client client(address.substr(0, colon), std::stoi(address.substr(colon + 1)));
  client.set_connection_timeout(std::chrono::seconds(5));
  client.set_read_timeout(std::chrono::seconds(10));
  auto result = client.Get(path.c_str());
  if (!result) return {};
  return {result->status, result->body};
}

// The value of the sample written exactly as `series` (name and labels, e.g.
// `outbox_relay_acknowledged_total{outcome="stored"}`); empty if absent.
inline std::optional<double> sample(const std::string& exposition, const std::string& series) {
  std::istringstream lines(exposition);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.size() > series.size() && line.compare(0, series.size(), series) == 0 &&
        line[series.size()] == ' ') {
      return std::stod(line.substr(series.size() + 1));
    }
  }
  return std::nullopt;
}

// The sample's value from a fresh scrape of /metrics, or -1 when absent.
inline double scrape(const std::string& address, const std::string& series) {
  auto reply = http_get(address, "/metrics");
  if (reply.status != 200) return -1;
  return sample(reply.body, series).value_or(-1);
}

}  // namespace metrics_test
