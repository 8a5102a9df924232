#include "run.hpp"

#include <algorithm>
#include <csignal>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace faults {

std::vector<std::pair<std::string, fs::path>> Run::proxy_stats() const {
  return {{"proxy_", proxy_stats_},
          {"consumer_proxy_", consumer_proxy_stats_},
          {"relay_cutter_", relay_cutter_stats_},
          {"consumer_cutter_", consumer_cutter_stats_}};
}

std::unique_ptr<Managed> Run::start_proxy(const std::string& name, const fs::path& stats,
                                          std::uint64_t seed, const std::string& upstream,
                                          const std::vector<std::string>& faults,
                                          std::string& endpoint) {
  auto endpoint_file = dir_ / (name + "-endpoint");
  std::vector<std::string> args = {"--broker",          upstream,          "--bind",
                                   "tcp://127.0.0.1:*", "--endpoint-file", endpoint_file.string(),
                                   "--stats-file",      stats.string(),    "--seed",
                                   std::to_string(seed)};
  args.insert(args.end(), faults.begin(), faults.end());
  auto proxy = std::make_unique<Managed>(name, dir_ / "logs" / (name + ".log"), [this, args] {
    return std::make_unique<test_support::ChildProcess>(settings_.proxy_binary, args, dir_);
  });
  proxy->start();
  if (!test_support::wait_until([&] { return fs::exists(endpoint_file); }, 20s)) {
    throw HarnessError(name + " did not start listening");
  }
  endpoint = read_endpoint(endpoint_file);
  return proxy;
}

long Run::proxy_faults() {
  long total = 0;
  for (const auto& [prefix, stats] : proxy_stats()) {
    if (fs::exists(stats)) total += read_counts(stats)["total"];
  }
  return total;
}

}  // namespace faults
