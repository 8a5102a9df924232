#include "cuts.hpp"

#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <unordered_map>

#include "child_process.hpp"
#include "outbox_processes.hpp"
#include "progress.hpp"

namespace bench {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// fault_proxy in its cutting mode between the relay and the broker; with
// `cutting` false it forwards without faults (the same hop, for a fair
// comparison).
class CuttingProxy {
 public:
  CuttingProxy(const CutsSettings& settings, const fs::path& dir, const std::string& name,
               const std::string& broker_endpoint, bool cutting)
      : stats_file_(dir / (name + ".stats")) {
    auto endpoint_file = dir / (name + ".endpoint");
    std::vector<std::string> args = {"--broker",        broker_endpoint,
                                     "--bind",          "tcp://127.0.0.1:*",
                                     "--endpoint-file", endpoint_file.string(),
                                     "--stats-file",    stats_file_.string(),
                                     "--seed",          std::to_string(settings.seed),
                                     "--cut-every",     settings.cut_every};
    if (!cutting) args.push_back("--faults-off");
    process_ = std::make_unique<ChildProcess>(name, settings.proxy_binary.string(), args, dir);
    endpoint_ = wait_for_endpoint_file(*process_, endpoint_file);
  }

  const std::string& endpoint() const { return endpoint_; }
  ChildProcess& process() { return *process_; }

  // Stops the proxy (it writes its counters on the way out); returns its cuts.
  std::uint64_t stop() {
    process_->stop(10s);
    std::ifstream in(stats_file_);
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("cut=", 0) == 0) return std::stoull(line.substr(4));
    }
    return 0;
  }

 private:
  fs::path stats_file_;
  std::string endpoint_;
  std::unique_ptr<ChildProcess> process_;
};

struct Drain {
  double seconds = 0;
  std::uint64_t cuts = 0;
};

Drain drain_through_proxy(const CutsSettings& settings, const fs::path& dir, BrokerProcess& broker,
                          BrokerCounters& counters, const Dataset& data, const std::string& topic,
                          bool cutting) {
  const std::string name = cutting ? "cut" : "plain";
  auto db = dir / (name + ".db");
  fill_outbox(db, topic, data, settings.outbox.setup_batch);
  CuttingProxy proxy(settings, dir, "proxy-" + name, broker.endpoint(), cutting);
  auto base = counters.read().stored;
  auto started = steady_ns();
  RelayProcess relay(settings.outbox, dir, db, proxy.endpoint(), "relay-" + name);
  auto done = wait_for_counter(counters, &BrokerCounters::Values::stored, base + data.size(),
                               pass_timeout(data.size()),
                               {&relay.process(), &broker.process(), &proxy.process()},
                               cutting ? "drain under cuts" : "drain without cuts");
  relay.stop();
  Drain drain;
  drain.seconds = seconds_between(started, done);
  drain.cuts = proxy.stop();
  return drain;
}

// Exactly once with the right payloads, and within each key in dataset
// (commit) order.
void check_topic(const std::string& endpoint, const std::string& topic, const Dataset& data,
                 std::vector<std::string>& problems) {
  Expected expected;
  std::unordered_map<std::string, std::size_t> index_of;
  expected.reserve(data.size());
  index_of.reserve(data.size());
  for (std::size_t i = 0; i < data.size(); ++i) {
    expected.emplace(data.msg_ids[i], data.payloads[i]);
    index_of.emplace(data.msg_ids[i], i);
  }
  std::vector<std::string> read;
  read.reserve(data.size());
  verify_topic(endpoint, topic, expected, problems, &read);
  std::map<std::string, std::size_t> next_per_key;
  std::size_t reordered = 0;
  for (const auto& msg_id : read) {
    auto found = index_of.find(msg_id);
    if (found == index_of.end()) continue;  // reported by verify_topic
    auto& next = next_per_key[data.keys[found->second]];
    if (found->second < next) ++reordered;
    next = found->second + 1;
  }
  if (reordered > 0) {
    problems.push_back(topic + ": " + std::to_string(reordered) +
                       " messages stored before an earlier message of their key");
  }
}

}  // namespace

CutsResult run_cuts(const CutsSettings& settings, const Dataset& plain, const Dataset& cut,
                    bool cut_first) {
  CutsResult result;
  result.messages = plain.size();
  TempDir dir("outbox-bench-cuts");
  BrokerProcess broker(settings.outbox, dir.path());
  BrokerCounters counters(broker.endpoint());
  const std::string plain_topic = "bench.plain", cut_topic = "bench.cut";
  for (int pass = 0; pass < 2; ++pass) {
    bool cutting = (pass == 0) == cut_first;
    auto drain = drain_through_proxy(settings, dir.path(), broker, counters, cutting ? cut : plain,
                                     cutting ? cut_topic : plain_topic, cutting);
    auto rate = static_cast<double>(result.messages) / drain.seconds;
    if (cutting) {
      result.cut_seconds = drain.seconds;
      result.cut_msgs_per_sec = rate;
      result.cuts = drain.cuts;
      progress("cuts: under cuts " + format_rate(rate) + " msg/s (" +
               std::to_string(drain.seconds) + " s, " + std::to_string(drain.cuts) +
               " connections cut)");
    } else {
      result.plain_seconds = drain.seconds;
      result.plain_msgs_per_sec = rate;
      progress("cuts: without cuts " + format_rate(rate) + " msg/s (" +
               std::to_string(drain.seconds) + " s)");
    }
  }
  result.ratio = result.cut_msgs_per_sec / result.plain_msgs_per_sec;
  if (result.cuts == 0) result.problems.push_back("the proxy cut no connection");
  check_topic(broker.endpoint(), plain_topic, plain, result.problems);
  check_topic(broker.endpoint(), cut_topic, cut, result.problems);
  auto status = broker.process().stop(15s);
  if (!status.exited || status.code != 0) {
    result.problems.push_back("outbox-broker ended with " + status.describe());
  }
  return result;
}

}  // namespace bench
