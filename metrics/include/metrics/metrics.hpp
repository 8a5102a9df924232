// A small metrics registry shared by the toolkit's daemons: counters, gauges and
// histograms updated with relaxed atomics (no lock and no allocation when a value
// changes) and rendered in the Prometheus text exposition format 0.0.4.
//
//   metrics::Registry registry;
//   auto& sent = registry.counter("outbox_relay_sent_messages_total", "Messages sent.");
//   sent.add(batch.size());                       // on the hot path: one atomic add
//   std::string text = registry.render();         // what GET /metrics answers
//
// Names follow Prometheus conventions: base units (seconds, bytes) and `_total`
// on counters. Every series is registered by code with a fixed label set, so the
// number of series is what the code registers; values that are only known when
// someone scrapes (rows in a database, per-topic offsets) come from collectors,
// callbacks that write their samples during render() and must cap how many
// series they write.
//
// Ownership: the Registry owns every metric; the references it returns stay
// valid for its lifetime.
// Thread safety: add/set/observe from any thread without locks; registration,
// add_collector() and render() take one mutex and may run while values change.
// Errors: an invalid metric or label name, or a name registered again with
// another type, throws std::invalid_argument.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace metrics {

using Labels = std::vector<std::pair<std::string, std::string>>;

enum class Type { counter, gauge, histogram };

// A monotonic count.
class Counter {
 public:
  void add(std::uint64_t amount = 1) noexcept {
    value_.fetch_add(amount, std::memory_order_relaxed);
  }
  // For a count kept elsewhere (a total the daemon copies in periodically):
  // replaces the value. The source must not decrease, or scrapers see a reset.
  void set(std::uint64_t total) noexcept { value_.store(total, std::memory_order_relaxed); }
  std::uint64_t value() const noexcept { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::uint64_t> value_{0};
};

// A value that goes up and down (a backlog, a state 0/1, a timestamp).
class Gauge {
 public:
  void set(double value) noexcept { value_.store(value, std::memory_order_relaxed); }
  void add(double delta) noexcept { value_.fetch_add(delta, std::memory_order_relaxed); }
  double value() const noexcept { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

// Observations counted into fixed buckets (upper bounds, ascending; +Inf is
// implied). observe() is a linear scan over the bounds and two atomic adds.
class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void observe(double value) noexcept;

  struct Snapshot {
    std::vector<double> upper_bounds;
    std::vector<std::uint64_t> cumulative;  // one per bound, then +Inf (= count)
    double sum = 0;
  };
  Snapshot snapshot() const;

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<std::uint64_t>[]> buckets_;  // bounds_.size() + 1
  std::atomic<double> sum_{0};
};

// Bucket bounds in seconds from 100 µs to 60 s, for latencies.
std::vector<double> latency_buckets();
// 1, 2, 4, ... up to `max` (inclusive when a power of two), for sizes and counts.
std::vector<double> power_of_two_buckets(double max);

// What a collector writes into during render().
class Exposition {
 public:
  // Starts a metric family (HELP and TYPE lines); samples follow.
  void family(std::string_view name, std::string_view help, Type type);
  void sample(std::string_view name, const Labels& labels, double value);

  std::string& text() noexcept { return text_; }

 private:
  std::string text_;
};

class Registry {
 public:
  Registry();
  ~Registry() noexcept;
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // The series `name` with `labels`, created on first use; the same name and
  // labels return the same object.
  Counter& counter(const std::string& name, const std::string& help, const Labels& labels = {});
  Gauge& gauge(const std::string& name, const std::string& help, const Labels& labels = {});
  Histogram& histogram(const std::string& name, const std::string& help,
                       std::vector<double> upper_bounds, const Labels& labels = {});

  // Called on every render(), after the registered series, under the
  // registry's mutex (a collector must not register metrics).
  void add_collector(std::function<void(Exposition&)> collector);

  // Every family in registration order, then what the collectors write.
  std::string render() const;

 private:
  struct Family;
  struct Series;
  Series& series(const std::string& name, const std::string& help, Type type, const Labels& labels);

  mutable std::mutex mutex_;
  std::vector<std::unique_ptr<Family>> families_;
  std::vector<std::function<void(Exposition&)>> collectors_;
};

// True for [a-zA-Z_:][a-zA-Z0-9_:]*.
bool valid_metric_name(std::string_view name);

}  // namespace metrics
