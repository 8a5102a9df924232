#include "cuts.hpp"

#include <httplib.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <unordered_map>

#include "bench_support.hpp"
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
    process_ =
        std::make_unique<ChildProcess>(settings.proxy_binary.string(), args, KeptLog{name, dir});
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

// The relay's outbox_relay_sent_messages_total, read from its /metrics
// endpoint (its address in `address_file`); nullopt when it cannot be read.
std::optional<std::uint64_t> relay_sent_messages(const fs::path& address_file) {
  std::ifstream in(address_file);
  std::string address;
  std::getline(in, address);
  auto colon = address.rfind(':');
  if (colon == std::string::npos) return std::nullopt;
  httplib::Client client(address.substr(0, colon), std::stoi(address.substr(colon + 1)));
  auto reply = client.Get("/metrics");
  if (!reply || reply->status != 200) return std::nullopt;
  std::istringstream lines(reply->body);
  const std::string name = "outbox_relay_sent_messages_total ";
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind(name, 0) == 0) {
      return static_cast<std::uint64_t>(std::stod(line.substr(name.size())));
    }
  }
  return std::nullopt;
}

// The relay's waits before a new session, from its log: the lines of failed
// sessions ("...; retrying in N ms (attempt ...") with N above 0.
struct Backoffs {
  std::uint64_t count = 0;
  std::uint64_t milliseconds = 0;
};

Backoffs relay_backoffs(const fs::path& log_file) {
  Backoffs backoffs;
  std::ifstream in(log_file);
  const std::string marker = "; retrying in ";
  for (std::string line; std::getline(in, line);) {
    auto at = line.find(marker);
    if (at == std::string::npos) continue;
    auto delay = std::strtoull(line.c_str() + at + marker.size(), nullptr, 10);
    if (delay == 0) continue;
    ++backoffs.count;
    backoffs.milliseconds += delay;
  }
  return backoffs;
}

struct ProxyDrain {
  double seconds = 0;
  std::uint64_t cuts = 0;
  std::optional<std::uint64_t> sent;  // messages the relay sent, resends included
  Backoffs backoffs;
  CutsResult::Cpu cpu;
};

double cpu_ms_since(pid_t pid, std::int64_t before_ns) {
  return static_cast<double>(cpu_run_ns(pid) - before_ns) / 1e6;
}

ProxyDrain drain_through_proxy(const CutsSettings& settings, const fs::path& dir,
                               BrokerProcess& broker, BrokerCounters& counters, const Dataset& data,
                               const std::string& topic, bool cutting) {
  const std::string name = cutting ? "cut" : "plain";
  auto db = dir / (name + ".db");
  fill_outbox(db, topic, data, settings.outbox.setup_batch);
  CuttingProxy proxy(settings, dir, "proxy-" + name, broker.endpoint(), cutting);
  auto base = counters.read().stored;
  const auto broker_cpu_before = cpu_run_ns(broker.process().pid());
  const auto proxy_cpu_before = cpu_run_ns(proxy.process().pid());
  auto started = steady_ns();
  // Both drains serve metrics (read once, after the drain), so that they
  // differ only in the cuts.
  auto address_file = dir / (name + ".metrics-address");
  RelayProcess relay(
      settings.outbox, dir, db, proxy.endpoint(), "relay-" + name,
      {"--metrics-bind", "127.0.0.1:0", "--metrics-address-file", address_file.string()});
  auto done = wait_for_counter(counters, &BrokerCounters::Values::stored, base + data.size(),
                               pass_timeout(data.size()),
                               {&relay.process(), &broker.process(), &proxy.process()},
                               cutting ? "drain under cuts" : "drain without cuts");
  ProxyDrain drain;
  drain.cpu.relay_ms = cpu_ms_since(relay.process().pid(), 0);
  drain.cpu.broker_ms = cpu_ms_since(broker.process().pid(), broker_cpu_before);
  drain.cpu.proxy_ms = cpu_ms_since(proxy.process().pid(), proxy_cpu_before);
  drain.seconds = seconds_between(started, done);
  drain.sent = relay_sent_messages(address_file);
  relay.stop();
  drain.backoffs = relay_backoffs(dir / ("relay-" + name + ".log"));
  drain.cuts = proxy.stop();
  return drain;
}

// "tcp://HOST:PORT" or "nats://HOST:PORT" with the other scheme.
std::string with_scheme(const std::string& url, const std::string& scheme) {
  auto colon = url.find("://");
  return scheme + "://" + (colon == std::string::npos ? url : url.substr(colon + 3));
}

struct JetStreamDrain {
  double seconds = 0;
  std::uint64_t cuts = 0;
  std::uint64_t published = 0;
  std::uint64_t reordered = 0;
  CutsResult::Cpu cpu;
};

// `data` into a fresh nats-server's stream through a proxy like the relay's.
JetStreamDrain jetstream_through_proxy(const CutsSettings& settings, const Dataset& data,
                                       bool cutting, std::vector<std::string>& problems) {
  TempDir dir("outbox-bench-cuts-js");
  JetStreamTarget target(settings.js, dir.path(), "bench.>");
  const std::string name = cutting ? "js-proxy-cut" : "js-proxy-plain";
  CuttingProxy proxy(settings, dir.path(), name, with_scheme(target.url(), "tcp"), cutting);
  const auto server_cpu_before = cpu_run_ns(target.process().pid());
  const auto proxy_cpu_before = cpu_run_ns(proxy.process().pid());
  auto via = publish_via(settings.js, target, with_scheme(proxy.endpoint(), "nats"), data,
                         pass_timeout(data.size()));
  JetStreamDrain drain;
  drain.seconds = via.seconds;
  drain.published = via.published;
  drain.reordered = via.reordered;
  drain.cpu.relay_ms = via.client_cpu_ms;
  drain.cpu.broker_ms = cpu_ms_since(target.process().pid(), server_cpu_before);
  drain.cpu.proxy_ms = cpu_ms_since(proxy.process().pid(), proxy_cpu_before);
  drain.cuts = proxy.stop();
  for (const auto& problem : via.problems) {
    problems.push_back(std::string(cutting ? "jetstream under cuts: " : "jetstream: ") + problem);
  }
  progress(std::string("cuts: jetstream ") + (cutting ? "under cuts " : "without cuts ") +
           format_rate(static_cast<double>(data.size()) / drain.seconds) + " msg/s (" +
           std::to_string(drain.seconds) + " s" +
           (cutting ? ", " + std::to_string(drain.cuts) + " connections cut, " +
                          std::to_string(via.reconnects) + " new connections, " +
                          std::to_string(via.reordered) + " stored out of key order"
                    : std::string()) +
           ")");
  return drain;
}

void run_jetstream_pair(const CutsSettings& settings, const Dataset& plain, const Dataset& cut,
                        bool cut_first, CutsResult& result) {
  auto& js = result.jetstream;
  js.ran = true;
  for (int leg = 0; leg < 2; ++leg) {
    const bool cutting = (leg == 0) == cut_first;
    const Dataset& data = cutting ? cut : plain;
    auto drain = jetstream_through_proxy(settings, data, cutting, result.problems);
    if (cutting) {
      js.cut_seconds = drain.seconds;
      js.cut_cpu = drain.cpu;
      js.cuts = drain.cuts;
      js.reordered = drain.reordered;
      if (drain.cuts > 0) {
        js.resent_per_cut =
            (static_cast<double>(drain.published) - static_cast<double>(data.size())) /
            static_cast<double>(drain.cuts);
      }
    } else {
      js.plain_seconds = drain.seconds;
      js.plain_cpu = drain.cpu;
    }
  }
  js.plain_msgs_per_sec = static_cast<double>(plain.size()) / js.plain_seconds;
  js.cut_msgs_per_sec = static_cast<double>(cut.size()) / js.cut_seconds;
  js.ratio = js.cut_msgs_per_sec / js.plain_msgs_per_sec;
  if (js.cuts == 0) result.problems.push_back("jetstream: the proxy cut no connection");
}

}  // namespace

CutsResult run_cuts(const CutsSettings& settings, const Dataset& plain, const Dataset& cut,
                    bool cut_first) {
  CutsResult result;
  result.messages = plain.size();
  auto pair = run_drain_pair(
      settings.outbox, "cuts", plain, cut, cut_first,
      [&](const fs::path& dir, BrokerProcess& broker, BrokerCounters& counters, const Dataset& data,
          const std::string& topic, bool cutting) {
        auto drain = drain_through_proxy(settings, dir, broker, counters, data, topic, cutting);
        auto rate = static_cast<double>(data.size()) / drain.seconds;
        (cutting ? result.cut_cpu : result.plain_cpu) = drain.cpu;
        if (cutting) {
          result.cuts = drain.cuts;
          result.backoffs = drain.backoffs.count;
          result.backoff_ms = drain.backoffs.milliseconds;
          if (drain.sent && drain.cuts > 0) {
            result.resent_per_cut = (static_cast<double>(*drain.sent) - data.size()) / drain.cuts;
          } else {
            result.problems.push_back("the relay's sent-message counter could not be read");
          }
          progress("cuts: under cuts " + format_rate(rate) + " msg/s (" +
                   std::to_string(drain.seconds) + " s, " + std::to_string(drain.cuts) +
                   " connections cut)");
        } else {
          progress("cuts: without cuts " + format_rate(rate) + " msg/s (" +
                   std::to_string(drain.seconds) + " s)");
        }
        return drain.seconds;
      },
      result.problems);
  result.plain_seconds = pair.baseline_seconds;
  result.plain_msgs_per_sec = static_cast<double>(result.messages) / pair.baseline_seconds;
  result.cut_seconds = pair.variant_seconds;
  result.cut_msgs_per_sec = static_cast<double>(result.messages) / pair.variant_seconds;
  result.ratio = result.cut_msgs_per_sec / result.plain_msgs_per_sec;
  if (result.cuts == 0) result.problems.push_back("the proxy cut no connection");
  if (settings.jetstream) run_jetstream_pair(settings, plain, cut, cut_first, result);
  return result;
}

}  // namespace bench
