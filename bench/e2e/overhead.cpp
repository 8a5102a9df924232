#include "overhead.hpp"

#include <httplib.h>

#include <atomic>
#include <fstream>
#include <thread>

#include "bench_support.hpp"
#include "outbox_processes.hpp"
#include "progress.hpp"

namespace bench {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// GET /metrics every `interval` until destroyed; counts the answers and adds
// up how long each took, from the request to the whole answer read: what
// the relay's endpoint spent on it (reading the backlog, rendering, the HTTP
// exchange) plus the time its threads waited for a CPU.
class Scraper {
 public:
  Scraper(const fs::path& address_file, std::chrono::milliseconds interval)
      : thread_([this, address_file, interval] {
          std::string address;
          while (!stop_.load()) {
            if (address.empty()) {
              address = read_address(address_file);
              if (address.empty()) {
                std::this_thread::sleep_for(5ms);
                continue;
              }
            }
            auto colon = address.rfind(':');
            httplib::Client client(address.substr(0, colon), std::stoi(address.substr(colon + 1)));
            auto asked = std::chrono::steady_clock::now();
            if (auto reply = client.Get("/metrics"); reply && reply->status == 200) {
              ++scrapes_;
              scrape_ns_ += std::chrono::duration_cast<std::chrono::nanoseconds>(
                                std::chrono::steady_clock::now() - asked)
                                .count();
            }
            auto next = std::chrono::steady_clock::now() + interval;
            while (!stop_.load() && std::chrono::steady_clock::now() < next) {
              std::this_thread::sleep_for(5ms);
            }
          }
        }) {}
  ~Scraper() {
    stop_.store(true);
    thread_.join();
  }
  std::uint64_t scrapes() const { return scrapes_.load(); }
  double scrape_seconds() const { return static_cast<double>(scrape_ns_.load()) / 1e9; }

 private:
  static std::string read_address(const fs::path& file) {
    std::ifstream in(file);
    std::string line;
    std::getline(in, line);
    return line;
  }

  std::atomic<bool> stop_{false};
  std::atomic<std::uint64_t> scrapes_{0};
  std::atomic<std::int64_t> scrape_ns_{0};
  std::thread thread_;
};

struct MetricsDrain {
  double seconds = 0;
  double cpu_seconds = 0;       // outbox-relay's threads on a CPU until the last message was stored
  double loop_cpu_seconds = 0;  // of which its main thread, the relay loop
  std::uint64_t scrapes = 0;
  double scrape_seconds = 0;  // all scrapes' round trips together
};

MetricsDrain drain(const OverheadSettings& settings, const fs::path& dir, BrokerProcess& broker,
                   BrokerCounters& counters, const Dataset& data, const std::string& topic,
                   bool with_metrics) {
  const std::string name = with_metrics ? "metrics-on" : "metrics-off";
  auto db = dir / (name + ".db");
  fill_outbox(db, topic, data, settings.outbox.setup_batch);
  auto address_file = dir / (name + ".address");
  std::vector<std::string> extra;
  if (with_metrics) {
    extra = {"--metrics-bind", "127.0.0.1:0", "--metrics-address-file", address_file.string()};
  }
  auto base = counters.read().stored;
  auto started = steady_ns();
  RelayProcess relay(settings.outbox, dir, db, broker.endpoint(), "relay-" + name, extra);
  std::unique_ptr<Scraper> scraper;
  if (with_metrics) scraper = std::make_unique<Scraper>(address_file, settings.scrape_interval);
  auto done = wait_for_counter(counters, &BrokerCounters::Values::stored, base + data.size(),
                               pass_timeout(data.size()), {&relay.process(), &broker.process()},
                               with_metrics ? "drain with metrics" : "drain without metrics");
  MetricsDrain result;
  result.loop_cpu_seconds =
      static_cast<double>(main_thread_cpu_run_ns(relay.process().pid())) / 1e9;
  result.cpu_seconds = static_cast<double>(cpu_run_ns(relay.process().pid())) / 1e9;
  result.seconds = seconds_between(started, done);
  result.scrapes = scraper ? scraper->scrapes() : 0;
  result.scrape_seconds = scraper ? scraper->scrape_seconds() : 0;
  scraper.reset();
  relay.stop();
  return result;
}

}  // namespace

OverheadResult run_overhead(const OverheadSettings& settings, const Dataset& off, const Dataset& on,
                            bool on_first) {
  OverheadResult result;
  result.messages = off.size();
  auto pair = run_drain_pair(
      settings.outbox, "metrics", off, on, on_first,
      [&](const fs::path& dir, BrokerProcess& broker, BrokerCounters& counters, const Dataset& data,
          const std::string& topic, bool with_metrics) {
        auto measured = drain(settings, dir, broker, counters, data, topic, with_metrics);
        auto rate = static_cast<double>(data.size()) / measured.seconds;
        auto cpu_us = measured.cpu_seconds * 1e6 / static_cast<double>(data.size());
        (with_metrics ? result.on_cpu_us_per_message : result.off_cpu_us_per_message) = cpu_us;
        const auto other_us = (measured.cpu_seconds - measured.loop_cpu_seconds) * 1e6 /
                              static_cast<double>(data.size());
        (with_metrics ? result.on_other_threads_us_per_message
                      : result.off_other_threads_us_per_message) = other_us;
        if (with_metrics) {
          result.scrapes = measured.scrapes;
          result.scrape_us_per_message =
              measured.scrape_seconds * 1e6 / static_cast<double>(data.size());
          progress("metrics: with metrics " + format_rate(rate) + " msg/s (" +
                   std::to_string(measured.seconds) + " s, " + std::to_string(measured.scrapes) +
                   " scrapes, " + std::to_string(cpu_us) + " us CPU per message)");
        } else {
          progress("metrics: without metrics " + format_rate(rate) + " msg/s (" +
                   std::to_string(measured.seconds) + " s, " + std::to_string(cpu_us) +
                   " us CPU per message)");
        }
        return measured.seconds;
      },
      result.problems);
  result.off_seconds = pair.baseline_seconds;
  result.off_msgs_per_sec = static_cast<double>(result.messages) / pair.baseline_seconds;
  result.on_seconds = pair.variant_seconds;
  result.on_msgs_per_sec = static_cast<double>(result.messages) / pair.variant_seconds;
  result.ratio = result.on_msgs_per_sec / result.off_msgs_per_sec;
  result.other_threads_added_us_per_message =
      result.on_other_threads_us_per_message - result.off_other_threads_us_per_message;
  if (result.off_cpu_us_per_message > 0) {
    result.cpu_ratio = result.on_cpu_us_per_message / result.off_cpu_us_per_message;
  } else {
    result.problems.push_back("the kernel reports no CPU time for outbox-relay (schedstat)");
  }
  if (result.scrapes == 0) result.problems.push_back("no scrape of /metrics succeeded");
  return result;
}

}  // namespace bench
