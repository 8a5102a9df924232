#include "metrics/metrics.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <stdexcept>

namespace metrics {
namespace {

bool valid_label_name(std::string_view name) {
  if (name.empty() || name.substr(0, 2) == "__") return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    if (!letter && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

const char* type_name(Type type) {
  switch (type) {
    case Type::counter:
      return "counter";
    case Type::gauge:
      return "gauge";
    case Type::histogram:
      return "histogram";
  }
  return "untyped";
}

void append_number(std::string& out, double value) {
  if (std::isnan(value)) {
    out += "NaN";
  } else if (std::isinf(value)) {
    out += value > 0 ? "+Inf" : "-Inf";
  } else {
    char buffer[32];
    auto result = std::to_chars(buffer, buffer + sizeof buffer, value);
    out.append(buffer, result.ptr);
  }
}

// HELP text escapes backslash and newline; label values also the double quote.
void append_escaped(std::string& out, std::string_view text, bool quote) {
  for (char c : text) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (quote && c == '"') {
      out += "\\\"";
    } else {
      out += c;
    }
  }
}

void append_labels(std::string& out, const Labels& labels, std::string_view extra_name = {},
                   std::string_view extra_value = {}) {
  if (labels.empty() && extra_name.empty()) return;
  out += '{';
  bool first = true;
  auto one = [&](std::string_view name, std::string_view value) {
    if (!first) out += ',';
    first = false;
    out += name;
    out += "=\"";
    append_escaped(out, value, true);
    out += '"';
  };
  for (const auto& [name, value] : labels) one(name, value);
  if (!extra_name.empty()) one(extra_name, extra_value);
  out += '}';
}

}  // namespace

bool valid_metric_name(std::string_view name) {
  if (name.empty()) return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
    if (!letter && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

Histogram::Histogram(std::vector<double> upper_bounds) : bounds_(std::move(upper_bounds)) {
  if (!std::is_sorted(bounds_.begin(), bounds_.end()) ||
      std::adjacent_find(bounds_.begin(), bounds_.end()) != bounds_.end()) {
    throw std::invalid_argument("histogram bucket bounds must be strictly ascending");
  }
  buckets_ = std::make_unique<std::atomic<std::uint64_t>[]>(bounds_.size() + 1);
  for (std::size_t i = 0; i <= bounds_.size(); ++i) buckets_[i].store(0);
}

void Histogram::observe(double value) noexcept {
  std::size_t bucket = 0;
  while (bucket < bounds_.size() && value > bounds_[bucket]) ++bucket;
  buckets_[bucket].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(value, std::memory_order_relaxed);
}

Histogram::Snapshot Histogram::snapshot() const {
  Snapshot result;
  result.upper_bounds = bounds_;
  std::uint64_t running = 0;
  for (std::size_t i = 0; i <= bounds_.size(); ++i) {
    running += buckets_[i].load(std::memory_order_relaxed);
    result.cumulative.push_back(running);
  }
  result.sum = sum_.load(std::memory_order_relaxed);
  return result;
}

std::vector<double> latency_buckets() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
          0.1,    0.25,    0.5,    1,     2.5,    5,     10,   30,    60};
}

std::vector<double> power_of_two_buckets(double max) {
  std::vector<double> bounds;
  // An integer exponent: a floating-point loop variable is not exact (cert-flp30-c).
  for (int exponent = 0; exponent < 64 && std::ldexp(1.0, exponent) <= max; ++exponent) {
    bounds.push_back(std::ldexp(1.0, exponent));
  }
  return bounds;
}

void Exposition::family(std::string_view name, std::string_view help, Type type) {
  text_ += "# HELP ";
  text_ += name;
  text_ += ' ';
  append_escaped(text_, help, false);
  text_ += "\n# TYPE ";
  text_ += name;
  text_ += ' ';
  text_ += type_name(type);
  text_ += '\n';
}

void Exposition::sample(std::string_view name, const Labels& labels, double value) {
  text_ += name;
  append_labels(text_, labels);
  text_ += ' ';
  append_number(text_, value);
  text_ += '\n';
}

struct Registry::Series {
  Labels labels;
  std::unique_ptr<Counter> counter;
  std::unique_ptr<Gauge> gauge;
  std::unique_ptr<Histogram> histogram;
};

struct Registry::Family {
  std::string name;
  std::string help;
  Type type;
  std::vector<std::unique_ptr<Series>> series;
};

Registry::Registry() = default;
Registry::~Registry() noexcept = default;

Registry::Series& Registry::series(const std::string& name, const std::string& help, Type type,
                                   const Labels& labels) {
  if (!valid_metric_name(name)) throw std::invalid_argument("invalid metric name '" + name + "'");
  for (const auto& [label, value] : labels) {
    if (!valid_label_name(label) || label == "le") {
      throw std::invalid_argument("metric " + name + ": invalid label name '" + label + "'");
    }
  }
  auto family = std::find_if(families_.begin(), families_.end(),
                             [&](const auto& f) { return f->name == name; });
  if (family == families_.end()) {
    families_.push_back(std::make_unique<Family>(Family{name, help, type, {}}));
    family = std::prev(families_.end());
  } else if ((*family)->type != type) {
    throw std::invalid_argument("metric " + name + " registered again as a " + type_name(type) +
                                " (it is a " + type_name((*family)->type) + ")");
  }
  auto& all = (*family)->series;
  auto existing =
      std::find_if(all.begin(), all.end(), [&](const auto& s) { return s->labels == labels; });
  if (existing != all.end()) return **existing;
  all.push_back(std::make_unique<Series>(Series{labels, nullptr, nullptr, nullptr}));
  return *all.back();
}

Counter& Registry::counter(const std::string& name, const std::string& help, const Labels& labels) {
  std::lock_guard lock(mutex_);
  auto& s = series(name, help, Type::counter, labels);
  if (!s.counter) s.counter = std::make_unique<Counter>();
  return *s.counter;
}

Gauge& Registry::gauge(const std::string& name, const std::string& help, const Labels& labels) {
  std::lock_guard lock(mutex_);
  auto& s = series(name, help, Type::gauge, labels);
  if (!s.gauge) s.gauge = std::make_unique<Gauge>();
  return *s.gauge;
}

Histogram& Registry::histogram(const std::string& name, const std::string& help,
                               std::vector<double> upper_bounds, const Labels& labels) {
  std::lock_guard lock(mutex_);
  auto& s = series(name, help, Type::histogram, labels);
  if (!s.histogram) s.histogram = std::make_unique<Histogram>(std::move(upper_bounds));
  return *s.histogram;
}

void Registry::add_collector(std::function<void(Exposition&)> collector) {
  std::lock_guard lock(mutex_);
  collectors_.push_back(std::move(collector));
}

std::string Registry::render() const {
  std::lock_guard lock(mutex_);
  Exposition out;
  for (const auto& family : families_) {
    out.family(family->name, family->help, family->type);
    for (const auto& s : family->series) {
      if (s->counter) {
        out.sample(family->name, s->labels, static_cast<double>(s->counter->value()));
      } else if (s->gauge) {
        out.sample(family->name, s->labels, s->gauge->value());
      } else if (s->histogram) {
        auto snapshot = s->histogram->snapshot();
        std::string bucket_name = family->name + "_bucket";
        for (std::size_t i = 0; i < snapshot.cumulative.size(); ++i) {
          std::string bound;
          append_number(bound, i < snapshot.upper_bounds.size()
                                   ? snapshot.upper_bounds[i]
                                   : std::numeric_limits<double>::infinity());
          auto& text = out.text();
          text += bucket_name;
          append_labels(text, s->labels, "le", bound);
          text += ' ';
          append_number(text, static_cast<double>(snapshot.cumulative[i]));
          text += '\n';
        }
        out.sample(family->name + "_sum", s->labels, snapshot.sum);
        out.sample(family->name + "_count", s->labels,
                   static_cast<double>(snapshot.cumulative.back()));
      }
    }
  }
  for (const auto& collector : collectors_) collector(out);
  return std::move(out.text());
}

}  // namespace metrics
