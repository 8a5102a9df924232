#include "outbox_processes.hpp"

#include <cstdio>
#include <fstream>
#include <map>
#include <span>
#include <stdexcept>
#include <unordered_map>

#include "broker_topic.hpp"

namespace bench {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;

}  // namespace

double seconds_between(std::int64_t from_ns, std::int64_t to_ns) {
  return static_cast<double>(to_ns - from_ns) / 1e9;
}

std::string format_rate(double value) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.0f", value);
  return buffer;
}

// How long a pass may take before the benchmark gives up: generous, bounded.
std::chrono::milliseconds pass_timeout(std::size_t messages) {
  return 60s + std::chrono::milliseconds(messages / 2);
}

BrokerProcess::BrokerProcess(const OutboxSettings& settings, const fs::path& dir) {
  auto endpoint_file = dir / "broker.endpoint";
  process_ = std::make_unique<ChildProcess>(
      settings.broker_binary.string(),
      std::vector<std::string>{"serve", "--db", (dir / "broker.db").string(), "--bind",
                               "tcp://127.0.0.1:*", "--endpoint-file", endpoint_file.string(),
                               "--sync", settings.sync, "--log-level", "info"},
      KeptLog{"outbox-broker", dir});
  endpoint_ = wait_for_endpoint_file(*process_, endpoint_file);
}

std::string wait_for_endpoint_file(ChildProcess& process, const fs::path& file) {
  std::string endpoint;
  bool up = wait_until(
      [&] {
        if (!process.running()) return true;
        std::ifstream in(file);
        std::string line;
        if (std::getline(in, line) && line.rfind("tcp://", 0) == 0) {
          endpoint = line;
          return true;
        }
        return false;
      },
      20s, 2ms);
  if (!up || endpoint.empty()) {
    throw std::runtime_error(process.name() + " did not start (" +
                             std::string(up ? "it exited" : "no endpoint within 20 s") +
                             "): " + process.log_tail());
  }
  return endpoint;
}

BrokerCounters::Values BrokerCounters::read() {
  auto reply = client_.stats(10s);
  if (!reply.ok()) {
    throw std::runtime_error("broker STATS failed: " + reply.error().message);
  }
  Values values;
  for (const auto& [name, value] : reply->counters) {
    if (name == "stored") values.stored = value;
    if (name == "duplicates") values.duplicates = value;
    if (name == "conflicts") values.conflicts = value;
    if (name == "rejected") values.rejected = value;
  }
  return values;
}

RelayProcess::RelayProcess(const OutboxSettings& settings, const fs::path& dir,
                           const RelaySource& source, const std::string& endpoint,
                           const std::string& name, const std::vector<std::string>& extra_args) {
  std::vector<std::string> args = {
      "run",      source.flag, source.path.string(), "--broker", endpoint, "--sync", settings.sync,
      "--holder", name,        "--log-level",        "info"};
  if (settings.relay_batch > 0) {
    args.insert(args.end(), {"--batch-size", std::to_string(settings.relay_batch)});
  }
  if (!settings.relay_batch_bytes.empty()) {
    args.insert(args.end(), {"--batch-bytes", settings.relay_batch_bytes});
  }
  if (settings.relay_in_flight > 0) {
    args.insert(args.end(), {"--in-flight", std::to_string(settings.relay_in_flight)});
  }
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  process_ =
      std::make_unique<ChildProcess>(settings.relay_binary.string(), args, KeptLog{name, dir});
}

void RelayProcess::stop() {
  auto status = process_->stop(15s);
  if (!status.exited || status.code != 0) {
    throw std::runtime_error("outbox-relay ended with " + status.describe() + ": " +
                             process_->log_tail());
  }
}

std::int64_t wait_for_counter(BrokerCounters& counters,
                              std::uint64_t BrokerCounters::Values::*field, std::uint64_t target,
                              std::chrono::milliseconds timeout, std::vector<ChildProcess*> daemons,
                              const char* what) {
  std::int64_t seen_at = 0;
  std::uint64_t last = 0;
  auto next_check = SteadyClock::now();
  bool reached = wait_until(
      [&] {
        last = counters.read().*field;
        if (last >= target) {
          seen_at = steady_ns();
          return true;
        }
        if (SteadyClock::now() >= next_check) {
          for (auto* daemon : daemons) {
            if (!daemon->running()) {
              throw std::runtime_error(daemon->name() + " exited during the " + what +
                                       " pass: " + daemon->log_tail());
            }
          }
          next_check = SteadyClock::now() + 100ms;
        }
        return false;
      },
      timeout, 1ms);
  if (!reached) {
    throw std::runtime_error(std::string(what) + " pass: the broker counted " +
                             std::to_string(last) + " of " + std::to_string(target) + " within " +
                             std::to_string(timeout.count() / 1000) + " s");
  }
  return seen_at;
}

outbox::Options producer_options() {
  outbox::Options options;
  options.durability = outbox::Durability::normal;
  return options;
}

double fill_outbox(const fs::path& db, const std::string& topic, const Dataset& data,
                   std::size_t batch) {
  auto options = producer_options();
  options.worker_id = 1;  // the msg_ids are given; no worker lease needed
  options.cache_kib = 64 * 1024;
  auto box = outbox::Outbox::open(db, options);
  auto started = steady_ns();
  for (std::size_t begin = 0; begin < data.size(); begin += batch) {
    check_interrupted();
    outbox::Transaction tx(box);
    auto end = std::min(data.size(), begin + batch);
    for (std::size_t i = begin; i < end; ++i) {
      auto sent = tx.enqueue({.topic = topic,
                              .key = data.keys[i],
                              .payload = data.payloads[i],
                              .msg_id = data.msg_ids[i]});
      if (!sent.inserted()) throw std::runtime_error("dataset has a repeated msg_id");
    }
    tx.commit();
  }
  return static_cast<double>(data.size()) / seconds_between(started, steady_ns());
}

std::size_t verify_topic(const std::string& endpoint, const std::string& topic,
                         const Expected& expected, std::vector<std::string>& problems,
                         std::vector<std::string>* in_offset_order) {
  std::unordered_map<std::string, int> seen;
  seen.reserve(expected.size());
  std::size_t matched = 0, unexpected = 0, wrong_payload = 0, twice = 0;
  auto check = [&](std::span<const wire::StoredMessage> page) {
    check_interrupted();
    for (const auto& message : page) {
      if (in_offset_order != nullptr) in_offset_order->push_back(message.msg_id);
      auto found = expected.find(message.msg_id);
      if (found == expected.end()) {
        ++unexpected;
        continue;
      }
      if (++seen[message.msg_id] > 1) {
        ++twice;
        continue;
      }
      if (found->second != message.payload) {
        ++wrong_payload;
        continue;
      }
      ++matched;
    }
  };
  try {
    test_support::for_each_stored(endpoint, topic, check);
  } catch (const Interrupted&) {
    throw;
  } catch (const std::runtime_error& error) {
    problems.push_back(std::string("reading back: ") + error.what());
    return matched;
  }
  std::size_t missing = expected.size() - seen.size();
  auto report = [&](std::size_t count, const std::string& what) {
    if (count > 0) problems.push_back(topic + ": " + std::to_string(count) + " " + what);
  };
  report(missing, "messages missing at the broker");
  report(twice, "messages stored twice");
  report(unexpected, "messages the benchmark never committed");
  report(wrong_payload, "messages with a different payload");
  return matched;
}

ArrivalRecorder::ArrivalRecorder(const std::string& endpoint, const std::string& topic)
    : thread_([this, endpoint, topic] {
        try {
          broker::Client client(endpoint);
          std::uint64_t from = 1;
          while (!stop_.load()) {
            wire::Fetch request;
            request.topic = topic;
            request.from_offset = from;
            request.max_messages = 10'000;
            request.wait_ms = 100;
            auto reply = client.fetch(request, 10s);
            auto arrived = steady_ns();
            if (!reply.ok()) throw std::runtime_error("FETCH failed: " + reply.error().message);
            {
              std::lock_guard lock(mutex_);
              for (auto& message : reply->messages) {
                arrivals_.push_back({std::move(message.msg_id), arrived, message.timestamp_ms});
              }
            }
            if (!reply->messages.empty()) {
              from = reply->next_offset;
              arrived_.notify_all();
            }
          }
        } catch (const std::exception& failure) {
          std::lock_guard lock(mutex_);
          error_ = failure.what();
        }
        arrived_.notify_all();
      }) {}

bool ArrivalRecorder::wait_for(std::size_t count, std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  return arrived_.wait_for(lock, timeout, [&] {
    return arrivals_.size() >= count || !error_.empty();
  }) && error_.empty();
}

ArrivalRecorder::~ArrivalRecorder() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
}

std::vector<ArrivalRecorder::Arrival> ArrivalRecorder::collect(std::size_t count,
                                                               std::chrono::milliseconds timeout) {
  wait_until(
      [&] {
        std::lock_guard lock(mutex_);
        return arrivals_.size() >= count || !error_.empty();
      },
      timeout, 1ms);
  stop_.store(true);
  thread_.join();
  if (!error_.empty()) throw std::runtime_error("consumer: " + error_);
  return std::move(arrivals_);
}

void check_topic_in_order(const std::string& endpoint, const std::string& topic,
                          const Dataset& data, std::vector<std::string>& problems) {
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

DrainPair run_drain_pair(const OutboxSettings& settings, const std::string& name,
                         const Dataset& baseline, const Dataset& variant, bool variant_first,
                         const DrainFunction& drain, std::vector<std::string>& problems) {
  DrainPair result;
  TempDir dir("outbox-bench-" + name);
  BrokerProcess broker(settings, dir.path());
  BrokerCounters counters(broker.endpoint());
  const std::string baseline_topic = "bench." + name + ".baseline";
  const std::string variant_topic = "bench." + name + ".variant";
  for (int pass = 0; pass < 2; ++pass) {
    bool is_variant = (pass == 0) == variant_first;
    auto seconds = drain(dir.path(), broker, counters, is_variant ? variant : baseline,
                         is_variant ? variant_topic : baseline_topic, is_variant);
    (is_variant ? result.variant_seconds : result.baseline_seconds) = seconds;
  }
  check_topic_in_order(broker.endpoint(), baseline_topic, baseline, problems);
  check_topic_in_order(broker.endpoint(), variant_topic, variant, problems);
  auto status = broker.process().stop(15s);
  if (!status.exited || status.code != 0) {
    problems.push_back("outbox-broker ended with " + status.describe());
  }
  return result;
}

}  // namespace bench
