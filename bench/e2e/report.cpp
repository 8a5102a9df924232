#include "report.hpp"

#include <sys/utsname.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>
#include <thread>
#include <utility>

#include <nlohmann/json.hpp>

#include "progress.hpp"

namespace bench {
namespace {

using SteadyClock = std::chrono::steady_clock;

std::mutex progress_mutex;
bool progress_enabled = true;
const SteadyClock::time_point program_start = SteadyClock::now();

double median(std::vector<double> values) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  auto middle = values.size() / 2;
  return values.size() % 2 == 1 ? values[middle] : (values[middle - 1] + values[middle]) / 2;
}

template <typename Result, typename Field>
double median_of(const std::vector<Result>& results, Field field) {
  std::vector<double> values;
  values.reserve(results.size());
  for (const auto& result : results) values.push_back(result.*field);
  return median(values);
}

template <typename Result>
Percentiles pooled_latency(const std::vector<Result>& results) {
  std::vector<std::int64_t> all;
  for (const auto& result : results)
    all.insert(all.end(), result.latency_ns.begin(), result.latency_ns.end());
  return percentiles(std::move(all));
}

// 1234567.8 -> "1,234,568"
std::string thousands(double value) {
  auto rounded = static_cast<long long>(std::llround(value));
  auto digits = std::to_string(rounded < 0 ? -rounded : rounded);
  std::string out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return rounded < 0 ? "-" + out : out;
}

std::string fixed(double value, int decimals) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.*f", decimals, value);
  return buffer;
}

std::string latency_cell(const Percentiles& p) {
  return fixed(p.p50_ms, 2) + " / " + fixed(p.p99_ms, 2) + " / " + fixed(p.p999_ms, 2) + " / " +
         fixed(p.max_ms, 1);
}

// The results file's JSON: members in the order they are added.
using Json = nlohmann::ordered_json;

// Six significant digits, as the figures deserve; null when not finite.
Json number(double value) {
  if (!std::isfinite(value)) return nullptr;
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.6g", value);
  return std::strtod(buffer, nullptr);
}

// A rate in whole messages per second; null when not finite.
Json rate_number(double value) {
  if (!std::isfinite(value)) return nullptr;
  return static_cast<std::int64_t>(std::llround(value));
}

// Adds members in order, each setter returning the object so calls chain.
class JsonObject {
 public:
  JsonObject& field(const std::string& name, Json value) {
    object_[name] = std::move(value);
    return *this;
  }
  JsonObject& text(const std::string& name, const std::string& value) { return field(name, value); }
  JsonObject& num(const std::string& name, double value) { return field(name, number(value)); }
  JsonObject& rate(const std::string& name, double value) {
    return field(name, rate_number(value));
  }
  JsonObject& integer(const std::string& name, std::uint64_t value) { return field(name, value); }
  JsonObject& boolean(const std::string& name, bool value) { return field(name, value); }
  const Json& json() const { return object_; }

 private:
  Json object_ = Json::object();
};

Json json_strings(const std::vector<std::string>& values) {
  return Json(values);
}

Json cost_json(const OutboxResult::CostPerMessage& c) {
  return JsonObject()
      .num("cpu_us", c.cpu_us)
      .num("voluntary_switches", c.voluntary_switches)
      .num("involuntary_switches", c.involuntary_switches)
      .num("bytes_written", c.bytes_written)
      .json();
}

Json latency_json(const Percentiles& p) {
  return JsonObject()
      .integer("samples", p.samples)
      .num("p50_ms", p.p50_ms)
      .num("p90_ms", p.p90_ms)
      .num("p99_ms", p.p99_ms)
      .num("p999_ms", p.p999_ms)
      .num("max_ms", p.max_ms)
      .num("mean_ms", p.mean_ms)
      .json();
}

Json outbox_round_json(const OutboxResult& r) {
  return JsonObject()
      .integer("drain_messages", r.drain_messages)
      .num("drain_seconds", r.drain_seconds)
      .rate("drain_msgs_per_sec", r.drain_msgs_per_sec)
      .rate("setup_msgs_per_sec", r.setup_msgs_per_sec)
      .integer("live_messages", r.live_messages)
      .integer("producers", static_cast<std::uint64_t>(r.producers))
      .num("live_seconds", r.live_seconds)
      .rate("live_msgs_per_sec", r.live_msgs_per_sec)
      .rate("live_commit_msgs_per_sec", r.live_commit_msgs_per_sec)
      .integer("live_databases", static_cast<std::uint64_t>(r.live_databases))
      .num("live_cpu_broker_us_per_msg", r.live_cpu_broker_us)
      .num("live_cpu_relay_us_per_msg", r.live_cpu_relay_us)
      .num("live_cpu_producers_us_per_msg", r.live_cpu_producers_us)
      .num("live_producer_span_share", r.live_producer_span_share)
      .num("latency_offered_msgs_per_sec", r.latency_offered_rate)
      .rate("latency_achieved_msgs_per_sec", r.latency_achieved_rate)
      .field("latency", latency_json(r.latency))
      .num("latency_cpu_wait_broker_ms", r.latency_cpu_wait_broker_ms)
      .num("latency_cpu_wait_relay_ms", r.latency_cpu_wait_relay_ms)
      .num("latency_cpu_wait_bench_ms", r.latency_cpu_wait_bench_ms)
      .num("latency_cpu_used_ms", r.latency_cpu_used_ms)
      .num("latency_steal_share", r.latency_steal_share)
      .field("latency_cost_per_message",
             JsonObject()
                 .field("broker", cost_json(r.latency_broker_cost))
                 .field("relay", cost_json(r.latency_relay_cost))
                 .field("producer_and_consumer", cost_json(r.latency_bench_cost))
                 .json())
      .num("resend_seconds", r.resend_seconds)
      .rate("resend_msgs_per_sec", r.resend_msgs_per_sec)
      .integer("resend_duplicates", r.resend_duplicates)
      .integer("resend_stored", r.resend_stored)
      .boolean("resend_all_duplicate", r.resend_all_duplicate)
      .integer("broker_stored", r.broker_stored)
      .integer("broker_duplicates", r.broker_duplicates)
      .integer("verified_messages", r.verified_messages)
      .field("problems", json_strings(r.problems))
      .json();
}

Json jetstream_round_json(const JetStreamResult& r) {
  return JsonObject()
      .integer("messages", r.messages)
      .num("publish_seconds", r.publish_seconds)
      .rate("publish_msgs_per_sec", r.publish_msgs_per_sec)
      .num("latency_offered_msgs_per_sec", r.latency_offered_rate)
      .rate("latency_achieved_msgs_per_sec", r.latency_achieved_rate)
      .field("latency", latency_json(r.latency))
      .num("resend_seconds", r.resend_seconds)
      .rate("resend_msgs_per_sec", r.resend_msgs_per_sec)
      .integer("resend_duplicates", r.resend_duplicates)
      .boolean("resend_all_duplicate", r.resend_all_duplicate)
      .integer("stream_messages", r.stream_messages)
      .field("problems", json_strings(r.problems))
      .json();
}

template <typename Result>
bool all_duplicate(const std::vector<Result>& results) {
  return !results.empty() && std::all_of(results.begin(), results.end(),
                                         [](const Result& r) { return r.resend_all_duplicate; });
}

// The targets on this machine.
constexpr double target_ratio = 2.0;
constexpr double target_p50_ms = 1.0;
constexpr double target_p99_ms = 5.0;

}  // namespace

void progress(const std::string& line) {
  std::lock_guard lock(progress_mutex);
  if (!progress_enabled) return;
  double elapsed = std::chrono::duration<double>(SteadyClock::now() - program_start).count();
  std::fprintf(stderr, "[%7.1f s] %s\n", elapsed, line.c_str());
  std::fflush(stderr);
}

void set_progress_enabled(bool enabled) {
  std::lock_guard lock(progress_mutex);
  progress_enabled = enabled;
}

std::string utc_now_iso() {
  auto now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm parts{};
  ::gmtime_r(&now, &parts);
  char buffer[32];
  std::strftime(buffer, sizeof buffer, "%Y-%m-%dT%H:%M:%SZ", &parts);
  return buffer;
}

std::string source_commit() {
  std::string command =
      std::string("git -C '") + OUTBOX_BENCH_SOURCE_DIR + "' describe --always --dirty 2>/dev/null";
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(::popen(command.c_str(), "r"), ::pclose);
  if (!pipe) return {};
  char buffer[128] = {};
  if (!std::fgets(buffer, sizeof buffer, pipe.get())) return {};
  std::string text = buffer;
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  return text;
}

std::string load_average() {
  std::ifstream loadavg("/proc/loadavg");
  std::string one, five, fifteen;
  if (loadavg >> one >> five >> fifteen) return one + " " + five + " " + fifteen;
  return {};
}

Machine describe_machine() {
  Machine machine;
  machine.cores = std::thread::hardware_concurrency();
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) == 0) {
      auto colon = line.find(':');
      if (colon != std::string::npos) machine.cpu_model = line.substr(colon + 2);
      break;
    }
  }
  utsname name{};
  if (::uname(&name) == 0) machine.kernel = std::string(name.sysname) + " " + name.release;
  machine.load_average = load_average();
  std::ifstream meminfo("/proc/meminfo");
  while (std::getline(meminfo, line)) {
    if (line.rfind("MemTotal:", 0) == 0) {
      machine.memory_gib = std::stod(line.substr(9)) / (1024.0 * 1024.0);
      break;
    }
  }
  return machine;
}

// Median, quartiles, lowest and highest of one figure over the rounds.
struct Spread {
  double median = 0, low = 0, high = 0;
  double lower_quartile = 0, upper_quartile = 0;
};

// The value below which `fraction` of the sorted values lie (linear between
// neighbours).
double quantile(const std::vector<double>& sorted, double fraction) {
  if (sorted.empty()) return 0;
  const double position = fraction * static_cast<double>(sorted.size() - 1);
  const auto below = static_cast<std::size_t>(position);
  const auto above = std::min(below + 1, sorted.size() - 1);
  return sorted[below] + (sorted[above] - sorted[below]) * (position - static_cast<double>(below));
}

template <typename Result, typename Field>
Spread spread_of(const std::vector<Result>& results, Field field) {
  std::vector<double> values;
  values.reserve(results.size());
  for (const auto& result : results) values.push_back(result.*field);
  Spread spread;
  if (values.empty()) return spread;
  std::sort(values.begin(), values.end());
  spread.median = median(values);
  spread.low = values.front();
  spread.high = values.back();
  spread.lower_quartile = quantile(values, 0.25);
  spread.upper_quartile = quantile(values, 0.75);
  return spread;
}

Json spread_json(const Spread& spread) {
  return JsonObject()
      .num("median", spread.median)
      .num("lower_quartile", spread.lower_quartile)
      .num("upper_quartile", spread.upper_quartile)
      .num("min", spread.low)
      .num("max", spread.high)
      .json();
}

// The report so far, and what every failed check found.
std::string with_problems(std::ostringstream& out, const Summary& summary) {
  if (!summary.ok()) {
    out << "\nCHECK FAILED:\n";
    for (const auto& problem : summary.problems) out << "  " << problem << "\n";
  }
  return out.str();
}

// The median (min-max) line and the CPU line of `outbox-bench cuts`, for the
// outbox's rounds or JetStream's (both have the fields used here); returns
// the ratio's spread.
template <typename Round>
Spread cuts_summary(std::ostream& out, const std::vector<Round>& rounds, const char* processes) {
  auto plain = spread_of(rounds, &Round::plain_msgs_per_sec);
  auto cut = spread_of(rounds, &Round::cut_msgs_per_sec);
  auto ratio = spread_of(rounds, &Round::ratio);
  auto seconds = spread_of(rounds, &Round::cut_seconds);
  auto resent = spread_of(rounds, &Round::resent_per_cut);
  out << "\nmedian (min-max): without cuts " << thousands(plain.median) << " msg/s ("
      << thousands(plain.low) << "-" << thousands(plain.high) << "), under cuts "
      << thousands(cut.median) << " msg/s (" << thousands(cut.low) << "-" << thousands(cut.high)
      << "), ratio " << fixed(ratio.median, 2) << " (" << fixed(ratio.low, 2) << "-"
      << fixed(ratio.high, 2) << "); drain under cuts " << fixed(seconds.median, 2) << " s ("
      << fixed(seconds.low, 2) << "-" << fixed(seconds.high, 2) << "); resent per cut "
      << fixed(resent.median, 0) << " (" << fixed(resent.low, 0) << "-" << fixed(resent.high, 0)
      << ")\n";
  // CPU of each process per drain (medians), and what the cuts add per cut.
  using Cpu = CutsResult::Cpu;
  auto cpu_median = [&](auto value) {
    std::vector<double> values;
    values.reserve(rounds.size());
    for (const auto& round : rounds) values.push_back(value(round));
    return fixed(median(values), 2);
  };
  out << "CPU ms per drain, median (" << processes << "): without cuts ";
  const char* separator = "";
  for (auto process : {&Cpu::relay_ms, &Cpu::broker_ms, &Cpu::proxy_ms}) {
    out << std::exchange(separator, "/")
        << cpu_median([&](const Round& r) { return r.plain_cpu.*process; });
  }
  out << ", under cuts ";
  separator = "";
  for (auto process : {&Cpu::relay_ms, &Cpu::broker_ms, &Cpu::proxy_ms}) {
    out << std::exchange(separator, "/")
        << cpu_median([&](const Round& r) { return r.cut_cpu.*process; });
  }
  out << "; added per cut ";
  separator = "";
  for (auto process : {&Cpu::relay_ms, &Cpu::broker_ms, &Cpu::proxy_ms}) {
    out << std::exchange(separator, "/") << cpu_median([&](const Round& r) {
      return r.cuts == 0
                 ? 0.0
                 : (r.cut_cpu.*process - r.plain_cpu.*process) / static_cast<double>(r.cuts);
    });
  }
  out << "\n";
  return ratio;
}

std::string cuts_text_report(const RunInfo& info, const Summary& summary) {
  std::ostringstream out;
  const auto& rounds = summary.cuts;
  out << "outbox-bench cuts: " << thousands(static_cast<double>(info.messages)) << " messages of "
      << info.payload_bytes << " B drained by outbox-relay through a TCP proxy, without and with "
      << "cuts (" << info.cut_every << " per connection); " << rounds.size() << " rounds\n";
  out << "  " << info.command_line << "\n\n";
  out << "round   without cuts msg/s   under cuts msg/s   ratio   connections cut   resent per "
         "cut   backoffs (ms)\n";
  for (std::size_t i = 0; i < rounds.size(); ++i) {
    char line[160];
    std::snprintf(line, sizeof line,
                  "%5zu   %18s   %16s   %5.2f   %15llu   %14.0f   %3llu (%llu)\n", i + 1,
                  thousands(rounds[i].plain_msgs_per_sec).c_str(),
                  thousands(rounds[i].cut_msgs_per_sec).c_str(), rounds[i].ratio,
                  static_cast<unsigned long long>(rounds[i].cuts), rounds[i].resent_per_cut,
                  static_cast<unsigned long long>(rounds[i].backoffs),
                  static_cast<unsigned long long>(rounds[i].backoff_ms));
    out << line;
  }
  const auto ratio = cuts_summary(out, rounds, "relay/broker/proxy");
  if (!rounds.empty() && rounds.front().jetstream.ran) {
    std::vector<CutsResult::JetStream> js;
    js.reserve(rounds.size());
    for (const auto& round : rounds) js.push_back(round.jetstream);
    out << "\nNATS JetStream through the same proxy: async publish with Nats-Msg-Id; after a "
           "cut a new connection at once and everything without a PubAck published again, in "
           "order\n";
    out << "round   without cuts msg/s   under cuts msg/s   ratio   connections cut   resent per "
           "cut   out of key order\n";
    for (std::size_t i = 0; i < js.size(); ++i) {
      char line[200];
      std::snprintf(line, sizeof line, "%5zu   %18s   %16s   %5.2f   %15llu   %14.0f   %16llu\n",
                    i + 1, thousands(js[i].plain_msgs_per_sec).c_str(),
                    thousands(js[i].cut_msgs_per_sec).c_str(), js[i].ratio,
                    static_cast<unsigned long long>(js[i].cuts), js[i].resent_per_cut,
                    static_cast<unsigned long long>(js[i].reordered));
      out << line;
    }
    cuts_summary(out, js, "publisher/nats-server/proxy");
    out << "\n";
  }
  // The targets: 50,000 messages drained under cuts within 60 s (every
  // round), and the ratio, which no window reaches on the 2-core machine
  // without slowing the drain of an unbroken link (bench/e2e/README.md,
  // "Every window the relay could choose").
  double slowest = 0;
  for (const auto& round : rounds) slowest = std::max(slowest, round.cut_seconds);
  char drain_line[160];
  std::snprintf(drain_line, sizeof drain_line,
                "target: every drain under cuts within 60 s: %s (slowest %.2f s)\n",
                slowest < 60 ? "met" : "MISSED", slowest);
  out << drain_line;
  out << "target ratio >= 0.5: " << (ratio.median >= 0.5 ? "met" : "MISSED") << "\n";
  return with_problems(out, summary);
}

// The CPU figures of a cuts round, named "<when>_<process>_cpu_ms".
JsonObject& cpu_json(JsonObject& object, const CutsResult::Cpu& plain, const CutsResult::Cpu& cut,
                     const char* relay, const char* broker) {
  for (const auto& [when, cpu] :
       {std::pair{"without_cuts", &plain}, std::pair{"under_cuts", &cut}}) {
    object.num(std::string(when) + "_" + relay + "_cpu_ms", cpu->relay_ms)
        .num(std::string(when) + "_" + broker + "_cpu_ms", cpu->broker_ms)
        .num(std::string(when) + "_proxy_cpu_ms", cpu->proxy_ms);
  }
  return object;
}

Json cuts_round_json(const CutsResult& r) {
  JsonObject round;
  round.integer("messages", r.messages)
      .num("without_cuts_seconds", r.plain_seconds)
      .rate("without_cuts_msgs_per_sec", r.plain_msgs_per_sec)
      .num("under_cuts_seconds", r.cut_seconds)
      .rate("under_cuts_msgs_per_sec", r.cut_msgs_per_sec)
      .num("ratio", r.ratio)
      .integer("connections_cut", r.cuts)
      .num("resent_per_cut", r.resent_per_cut)
      .integer("backoffs", r.backoffs)
      .integer("backoff_ms", r.backoff_ms);
  cpu_json(round, r.plain_cpu, r.cut_cpu, "relay", "broker");
  Json jetstream;
  if (r.jetstream.ran) {
    const auto& js = r.jetstream;
    JsonObject object;
    object.num("without_cuts_seconds", js.plain_seconds)
        .rate("without_cuts_msgs_per_sec", js.plain_msgs_per_sec)
        .num("under_cuts_seconds", js.cut_seconds)
        .rate("under_cuts_msgs_per_sec", js.cut_msgs_per_sec)
        .num("ratio", js.ratio)
        .integer("connections_cut", js.cuts)
        .num("resent_per_cut", js.resent_per_cut)
        .integer("stored_out_of_key_order", js.reordered);
    jetstream = cpu_json(object, js.plain_cpu, js.cut_cpu, "publisher", "server").json();
  }
  return round.field("jetstream", jetstream).field("problems", json_strings(r.problems)).json();
}

std::string overhead_text_report(const RunInfo& info, const Summary& summary) {
  std::ostringstream out;
  const auto& rounds = summary.overhead;
  out << "outbox-bench metrics: " << thousands(static_cast<double>(info.messages))
      << " messages of " << info.payload_bytes
      << " B drained by outbox-relay without metrics and with --metrics-bind (scraped every "
         "second); "
      << rounds.size() << " rounds\n";
  out << "  " << info.command_line << "\n\n";
  out << "round   without metrics msg/s   with metrics msg/s   ratio   scrapes   relay CPU "
         "us/msg without   with   ratio\n";
  for (std::size_t i = 0; i < rounds.size(); ++i) {
    char line[200];
    std::snprintf(
        line, sizeof line, "%5zu   %21s   %18s   %5.3f   %7llu   %19.2f   %4.2f   %5.3f\n", i + 1,
        thousands(rounds[i].off_msgs_per_sec).c_str(), thousands(rounds[i].on_msgs_per_sec).c_str(),
        rounds[i].ratio, static_cast<unsigned long long>(rounds[i].scrapes),
        rounds[i].off_cpu_us_per_message, rounds[i].on_cpu_us_per_message, rounds[i].cpu_ratio);
    out << line;
  }
  auto off = spread_of(rounds, &OverheadResult::off_msgs_per_sec);
  auto on = spread_of(rounds, &OverheadResult::on_msgs_per_sec);
  auto ratio = spread_of(rounds, &OverheadResult::ratio);
  auto cpu_ratio = spread_of(rounds, &OverheadResult::cpu_ratio);
  auto quartiles = [](const Spread& spread) {
    return fixed(spread.median, 3) + " (quartiles " + fixed(spread.lower_quartile, 3) + "-" +
           fixed(spread.upper_quartile, 3) + ", min-max " + fixed(spread.low, 3) + "-" +
           fixed(spread.high, 3) + ")";
  };
  out << "\nmedian (min-max): without metrics " << thousands(off.median) << " msg/s ("
      << thousands(off.low) << "-" << thousands(off.high) << "), with metrics "
      << thousands(on.median) << " msg/s (" << thousands(on.low) << "-" << thousands(on.high)
      << ")\n";
  out << "rate ratio, with metrics / without: " << quartiles(ratio) << "\n";
  out << "relay CPU per message, with metrics / without: " << quartiles(cpu_ratio) << "\n";
  auto scrape = spread_of(rounds, &OverheadResult::scrape_us_per_message);
  auto cpu_off = spread_of(rounds, &OverheadResult::off_cpu_us_per_message);
  out << "scrape round trips per message (the most serving metrics can add): "
      << fixed(scrape.median * 1000, 1) << " ns (max " << fixed(scrape.high * 1000, 1)
      << " ns), against " << fixed(cpu_off.median * 1000, 0)
      << " ns of relay CPU per message without metrics\n";
  auto added = spread_of(rounds, &OverheadResult::other_threads_added_us_per_message);
  out << "CPU the relay's threads besides its loop added per message with metrics: "
      << fixed(added.median * 1000, 1) << " ns (quartiles " << fixed(added.lower_quartile * 1000, 1)
      << " to " << fixed(added.upper_quartile * 1000, 1) << " ns), "
      << fixed(added.median / cpu_off.median * 100, 2) << " % of the relay's CPU per message\n";
  out << "target rate ratio >= 0.97: " << (ratio.median >= 0.97 ? "met" : "MISSED")
      << "; load average at the start " << info.machine.load_average << ", at the end "
      << info.load_average_at_end << "\n";
  return with_problems(out, summary);
}

Json overhead_round_json(const OverheadResult& r) {
  return JsonObject()
      .integer("messages", r.messages)
      .num("without_metrics_seconds", r.off_seconds)
      .rate("without_metrics_msgs_per_sec", r.off_msgs_per_sec)
      .num("with_metrics_seconds", r.on_seconds)
      .rate("with_metrics_msgs_per_sec", r.on_msgs_per_sec)
      .num("ratio", r.ratio)
      .integer("scrapes", r.scrapes)
      .num("relay_cpu_us_per_message_without_metrics", r.off_cpu_us_per_message)
      .num("relay_cpu_us_per_message_with_metrics", r.on_cpu_us_per_message)
      .num("relay_cpu_ratio", r.cpu_ratio)
      .num("scrape_us_per_message", r.scrape_us_per_message)
      .num("other_threads_cpu_us_per_message_without_metrics", r.off_other_threads_us_per_message)
      .num("other_threads_cpu_us_per_message_with_metrics", r.on_other_threads_us_per_message)
      .num("other_threads_added_cpu_us_per_message", r.other_threads_added_us_per_message)
      .field("problems", json_strings(r.problems))
      .json();
}

std::string tenants_text_report(const RunInfo& info, const Summary& summary) {
  std::ostringstream out;
  out << "outbox-bench tenants: outbox-relay run --db-dir, " << info.payload_bytes
      << " B payloads\n  " << info.command_line << "\n";
  const auto& rounds = summary.tenants_drain;
  if (!rounds.empty()) {
    out << "\ndrain: " << rounds.front().databases << " databases x "
        << thousands(static_cast<double>(rounds.front().messages) /
                     static_cast<double>(rounds.front().databases))
        << " messages against 1 database x "
        << thousands(static_cast<double>(rounds.front().messages)) << "; " << rounds.size()
        << " rounds\n";
    out << "round   1 database msg/s (relay CPU s)   many databases msg/s (relay CPU s)   ratio\n";
    for (std::size_t i = 0; i < rounds.size(); ++i) {
      char line[200];
      std::snprintf(line, sizeof line,
                    "%5zu   %13s (%6.2f)              %13s (%6.2f)            %5.2f\n", i + 1,
                    thousands(rounds[i].one_msgs_per_sec).c_str(), rounds[i].one_cpu_seconds,
                    thousands(rounds[i].many_msgs_per_sec).c_str(), rounds[i].many_cpu_seconds,
                    rounds[i].ratio);
      out << line;
    }
    auto one = spread_of(rounds, &TenantsDrainResult::one_msgs_per_sec);
    auto many = spread_of(rounds, &TenantsDrainResult::many_msgs_per_sec);
    auto ratio = spread_of(rounds, &TenantsDrainResult::ratio);
    out << "median (min-max): 1 database " << thousands(one.median) << " msg/s ("
        << thousands(one.low) << "-" << thousands(one.high) << "), many databases "
        << thousands(many.median) << " msg/s (" << thousands(many.low) << "-"
        << thousands(many.high) << "), ratio " << fixed(ratio.median, 2) << " ("
        << fixed(ratio.low, 2) << "-" << fixed(ratio.high, 2)
        << "); target >= 0.5: " << (ratio.median >= 0.5 ? "met" : "MISSED") << "\n";
  }
  if (const auto& latency = summary.tenants_latency) {
    out << "\nlatency: a backlog of " << thousands(static_cast<double>(latency->backlog))
        << " messages drained in " << fixed(latency->backlog_seconds, 2) << " s ("
        << thousands(latency->backlog_msgs_per_sec) << " msg/s); meanwhile "
        << latency->small_messages
        << " single messages of small tenants, commit to seen by a consumer: p50 "
        << fixed(latency->latency.p50_ms, 2) << " ms, p99 " << fixed(latency->latency.p99_ms, 2)
        << " ms, max " << fixed(latency->latency.max_ms, 2)
        << " ms; target p99 < 50 ms: " << (latency->latency.p99_ms < 50 ? "met" : "MISSED")
        << "\n  of which commit to stored (the broker's timestamp, ms resolution): p50 "
        << fixed(latency->stored_latency.p50_ms, 1) << " ms, p99 "
        << fixed(latency->stored_latency.p99_ms, 1) << " ms, max "
        << fixed(latency->stored_latency.max_ms, 1) << " ms\n"
        << "  runnable but waiting for a CPU meanwhile (schedstat; RT throttling counts here): "
           "broker "
        << fixed(latency->cpu_wait_broker_ms, 0) << " ms, relay "
        << fixed(latency->cpu_wait_relay_ms, 0) << " ms, outbox-bench "
        << fixed(latency->cpu_wait_bench_ms, 0) << " ms\n";
  }
  if (const auto& idle = summary.tenants_idle) {
    out << "\nidle: " << thousands(static_cast<double>(idle->databases))
        << " databases (one message each, all stored after " << fixed(idle->setup_seconds, 1)
        << " s); over " << fixed(idle->measured_seconds, 1) << " s idle: relay CPU "
        << fixed(idle->cpu_percent, 3) << " % of one core, RSS " << fixed(idle->rss_mib, 1)
        << " MiB, " << idle->descriptors << " descriptors open (at most " << idle->max_descriptors
        << " from the start); target < 2 %: " << (idle->cpu_percent < 2 ? "met" : "MISSED") << "\n";
  }
  out << "\nload average at the start " << info.machine.load_average << ", at the end "
      << info.load_average_at_end << "\n";
  return with_problems(out, summary);
}

Json tenants_drain_round_json(const TenantsDrainResult& r) {
  return JsonObject()
      .integer("databases", r.databases)
      .integer("messages", r.messages)
      .num("one_database_seconds", r.one_seconds)
      .rate("one_database_msgs_per_sec", r.one_msgs_per_sec)
      .num("one_database_relay_cpu_seconds", r.one_cpu_seconds)
      .num("many_databases_seconds", r.many_seconds)
      .rate("many_databases_msgs_per_sec", r.many_msgs_per_sec)
      .num("many_databases_relay_cpu_seconds", r.many_cpu_seconds)
      .num("ratio", r.ratio)
      .field("problems", json_strings(r.problems))
      .json();
}

void tenants_json(JsonObject& object, const Summary& summary) {
  if (!summary.tenants_drain.empty()) {
    Json rounds = Json::array();
    for (std::size_t i = 0; i < summary.tenants_drain.size(); ++i) {
      rounds.push_back(tenants_drain_round_json(summary.tenants_drain[i]));
    }
    const auto& drain = summary.tenants_drain;
    object.field("drain",
                 JsonObject()
                     .field("one_database_msgs_per_sec",
                            spread_json(spread_of(drain, &TenantsDrainResult::one_msgs_per_sec)))
                     .field("many_databases_msgs_per_sec",
                            spread_json(spread_of(drain, &TenantsDrainResult::many_msgs_per_sec)))
                     .field("ratio", spread_json(spread_of(drain, &TenantsDrainResult::ratio)))
                     .field("rounds", rounds)
                     .json());
  }
  if (const auto& latency = summary.tenants_latency) {
    object.field("latency",
                 JsonObject()
                     .integer("backlog", latency->backlog)
                     .num("backlog_seconds", latency->backlog_seconds)
                     .rate("backlog_msgs_per_sec", latency->backlog_msgs_per_sec)
                     .integer("small_tenant_messages", latency->small_messages)
                     .field("commit_to_seen", latency_json(latency->latency))
                     .field("commit_to_stored_broker_clock", latency_json(latency->stored_latency))
                     .num("cpu_wait_broker_ms", latency->cpu_wait_broker_ms)
                     .num("cpu_wait_relay_ms", latency->cpu_wait_relay_ms)
                     .num("cpu_wait_bench_ms", latency->cpu_wait_bench_ms)
                     .field("problems", json_strings(latency->problems))
                     .json());
  }
  if (const auto& idle = summary.tenants_idle) {
    object.field("idle", JsonObject()
                             .integer("databases", idle->databases)
                             .num("setup_seconds", idle->setup_seconds)
                             .num("measured_seconds", idle->measured_seconds)
                             .num("relay_cpu_percent_of_one_core", idle->cpu_percent)
                             .num("relay_rss_mib", idle->rss_mib)
                             .integer("relay_descriptors", idle->descriptors)
                             .integer("relay_max_descriptors", idle->max_descriptors)
                             .field("problems", json_strings(idle->problems))
                             .json());
  }
  object.boolean("ok", summary.ok()).field("problems", json_strings(summary.problems));
}

std::string text_report(const RunInfo& info, const Summary& summary) {
  if (info.subcommand == "tenants") return tenants_text_report(info, summary);
  if (!summary.cuts.empty()) return cuts_text_report(info, summary);
  if (!summary.overhead.empty()) return overhead_text_report(info, summary);
  std::ostringstream out;
  const auto& m = info.machine;
  out << "outbox-bench " << info.subcommand << ": " << thousands(static_cast<double>(info.messages))
      << " messages of " << info.payload_bytes << " bytes";
  if (info.rounds > 1) out << ", " << info.rounds << " rounds (medians; latency over all samples)";
  out << "\nmachine: " << m.cores << " cores, " << m.cpu_model << ", " << fixed(m.memory_gib, 0)
      << " GiB, " << m.kernel << "; load average at the start " << m.load_average << "\n\n";

  const bool have_outbox = !summary.outbox.empty();
  const bool have_js = !summary.jetstream.empty();
  std::string js_name = "NATS JetStream";
  if (have_js && !summary.jetstream.front().server_version.empty()) {
    js_name += " (nats-server " + summary.jetstream.front().server_version + ")";
  }
  double drain = have_outbox ? median_of(summary.outbox, &OutboxResult::drain_msgs_per_sec) : 0;
  double publish =
      have_js ? median_of(summary.jetstream, &JetStreamResult::publish_msgs_per_sec) : 0;
  Percentiles outbox_latency = have_outbox ? pooled_latency(summary.outbox) : Percentiles{};
  Percentiles js_latency = have_js ? pooled_latency(summary.jetstream) : Percentiles{};

  std::string header = "| figure |";
  std::string rule = "|---|";
  if (have_outbox) {
    header += " outbox (outbox-relay + outbox-broker, sync " + info.sync + ") |";
    rule += "---|";
  }
  if (have_js) {
    header += " " + js_name + " |";
    rule += "---|";
  }
  out << header << "\n" << rule << "\n";
  auto row = [&](const std::string& name, const std::string& outbox_cell,
                 const std::string& js_cell) {
    out << "| " << name << " |";
    if (have_outbox) out << " " << outbox_cell << " |";
    if (have_js) out << " " << js_cell << " |";
    out << "\n";
  };
  row("throughput, msg/s (outbox: drain a committed backlog; JetStream: async publish)",
      have_outbox ? thousands(drain) : "", have_js ? thousands(publish) : "");
  if (have_outbox && have_js) {
    row("ratio outbox drain / JetStream publish", fixed(drain / publish, 2) + "x", "1.00x");
  }
  if (have_outbox) {
    const auto& first = summary.outbox.front();
    row("live: " + std::to_string(first.producers) + " producer threads, " +
            std::to_string(first.live_databases) +
            (first.live_databases == 1 ? " database" : " databases") +
            ", one message per transaction, msg/s committed and stored",
        thousands(median_of(summary.outbox, &OutboxResult::live_msgs_per_sec)), "-");
  }
  row("latency at " + thousands(info.rate) + " msg/s, ms: p50 / p99 / p99.9 / max",
      have_outbox ? latency_cell(outbox_latency) + " (commit to stored, seen by a consumer)" : "",
      have_js ? (js_latency.samples ? latency_cell(js_latency) + " (publish to PubAck)" : "not run")
              : "");
  row("resend pass: duplicates answered per second; every resend reported duplicate?",
      have_outbox ? thousands(median_of(summary.outbox, &OutboxResult::resend_msgs_per_sec)) +
                        "; " + (all_duplicate(summary.outbox) ? "yes" : "NO")
                  : "",
      have_js ? thousands(median_of(summary.jetstream, &JetStreamResult::resend_msgs_per_sec)) +
                    "; " + (all_duplicate(summary.jetstream) ? "yes" : "NO")
              : "");
  {
    std::size_t verified = 0;
    for (const auto& r : summary.outbox) verified += r.verified_messages;
    std::uint64_t held = 0;
    for (const auto& r : summary.jetstream) held += r.stream_messages;
    row("self-check: every message stored exactly once",
        have_outbox ? (summary.ok() ? "ok, " : "FAILED, ") +
                          thousands(static_cast<double>(verified)) + " read back"
                    : "",
        have_js ? (summary.ok() ? "ok, " : "FAILED, ") + thousands(static_cast<double>(held)) +
                      " in the streams"
                : "");
  }

  if (info.rounds > 1) {
    out << "\nrounds (throughput msg/s):";
    for (std::size_t i = 0; i < std::max(summary.outbox.size(), summary.jetstream.size()); ++i) {
      out << "\n  " << i + 1 << ":";
      if (i < summary.outbox.size()) {
        out << " drain " << thousands(summary.outbox[i].drain_msgs_per_sec) << ", live "
            << thousands(summary.outbox[i].live_msgs_per_sec) << ", outbox p50/p99 "
            << fixed(summary.outbox[i].latency.p50_ms, 2) << "/"
            << fixed(summary.outbox[i].latency.p99_ms, 2) << " ms";
      }
      if (i < summary.jetstream.size()) {
        out << (i < summary.outbox.size() ? "; " : " ") << "JetStream "
            << thousands(summary.jetstream[i].publish_msgs_per_sec);
      }
    }
    out << "\n";
  }

  out << "\ntargets:";
  if (have_outbox && have_js) {
    out << "\n  drain >= " << fixed(target_ratio, 0)
        << "x JetStream: " << (drain >= target_ratio * publish ? "met" : "MISSED") << " ("
        << fixed(drain / publish, 2) << "x)";
  }
  if (have_outbox) {
    out << "\n  commit-to-stored p50 <= " << fixed(target_p50_ms, 0)
        << " ms: " << (outbox_latency.p50_ms <= target_p50_ms ? "met" : "MISSED") << " ("
        << fixed(outbox_latency.p50_ms, 3) << " ms)";
    out << "\n  commit-to-stored p99 <= " << fixed(target_p99_ms, 0)
        << " ms: " << (outbox_latency.p99_ms <= target_p99_ms ? "met" : "MISSED") << " ("
        << fixed(outbox_latency.p99_ms, 3) << " ms)";
  }
  out << "\n";
  if (have_outbox) {
    out << "\nlatency method: the producer stamps each message on the steady clock when its "
           "commit returns; a consumer thread long-polls FETCH on the topic and stamps each reply "
           "on arrival, so a figure includes relay wake-up, the broker's group commit and the "
           "fetch reply (an upper bound on commit to stored).\n";
    double broker_wait = 0, relay_wait = 0, bench_wait = 0, used = 0, seconds = 0;
    for (const auto& r : summary.outbox) {
      broker_wait += r.latency_cpu_wait_broker_ms;
      relay_wait += r.latency_cpu_wait_relay_ms;
      bench_wait += r.latency_cpu_wait_bench_ms;
      used += r.latency_cpu_used_ms;
      seconds += static_cast<double>(r.latency.samples) / std::max(r.latency_offered_rate, 1.0);
    }
    out << "during the latency passes (" << fixed(seconds, 0)
        << " s) the processes waited for a CPU (runnable, not running): broker "
        << fixed(broker_wait, 0) << " ms, relay " << fixed(relay_wait, 0)
        << " ms, producer and consumer " << fixed(bench_wait, 0) << " ms; together they ran "
        << fixed(used, 0) << " ms on a CPU.\n";
    // On a shared virtual machine the hypervisor's steal comes on top of that
    // wait; the tail follows it from round to round.
    std::string steal;
    for (const auto& r : summary.outbox) {
      if (r.latency_steal_share < 0) continue;
      steal += (steal.empty() ? "" : ", ") + fixed(r.latency_steal_share * 100, 0) + " % (p99 " +
               fixed(r.latency.p99_ms, 1) + " ms)";
    }
    if (!steal.empty()) {
      out << "the hypervisor took this share of the machine's CPUs (steal) in each latency pass: "
          << steal << ".\n";
    }
  }
  return with_problems(out, summary);
}

Json json_document(const RunInfo& info, const Summary& summary) {
  JsonObject object;
  object.text("benchmark", info.subcommand)
      .text("started_at", info.started_at)
      .text("command_line", info.command_line)
      .text("source_commit", info.source_commit)
      .field("machine", JsonObject()
                            .integer("cores", info.machine.cores)
                            .text("cpu_model", info.machine.cpu_model)
                            .text("kernel", info.machine.kernel)
                            .num("memory_gib", info.machine.memory_gib)
                            .text("load_average_at_start", info.machine.load_average)
                            .text("load_average_at_end", info.load_average_at_end)
                            .json())
      .field("settings", JsonObject()
                             .integer("messages", info.messages)
                             .integer("payload_bytes", info.payload_bytes)
                             .text("sync", info.sync)
                             .num("latency_rate_msgs_per_sec", info.rate)
                             .num("latency_seconds", info.latency_seconds)
                             .integer("rounds", static_cast<std::uint64_t>(info.rounds))
                             .json());
  if (!summary.cuts.empty()) {
    Json rounds = Json::array();
    std::vector<CutsResult::JetStream> js;
    for (std::size_t i = 0; i < summary.cuts.size(); ++i) {
      rounds.push_back(cuts_round_json(summary.cuts[i]));
      if (summary.cuts[i].jetstream.ran) js.push_back(summary.cuts[i].jetstream);
    }
    using JetStream = CutsResult::JetStream;
    Json jetstream =
        js.empty()
            ? Json()
            : JsonObject()
                  .field("without_cuts_msgs_per_sec",
                         spread_json(spread_of(js, &JetStream::plain_msgs_per_sec)))
                  .field("under_cuts_msgs_per_sec",
                         spread_json(spread_of(js, &JetStream::cut_msgs_per_sec)))
                  .field("ratio", spread_json(spread_of(js, &JetStream::ratio)))
                  .field("resent_per_cut", spread_json(spread_of(js, &JetStream::resent_per_cut)))
                  .json();
    return object.text("cut_every", info.cut_every)
        .field("without_cuts_msgs_per_sec",
               spread_json(spread_of(summary.cuts, &CutsResult::plain_msgs_per_sec)))
        .field("under_cuts_msgs_per_sec",
               spread_json(spread_of(summary.cuts, &CutsResult::cut_msgs_per_sec)))
        .field("ratio", spread_json(spread_of(summary.cuts, &CutsResult::ratio)))
        .field("under_cuts_seconds", spread_json(spread_of(summary.cuts, &CutsResult::cut_seconds)))
        .field("resent_per_cut", spread_json(spread_of(summary.cuts, &CutsResult::resent_per_cut)))
        .field("jetstream", jetstream)
        .boolean("ok", summary.ok())
        .field("problems", json_strings(summary.problems))
        .field("rounds", rounds)
        .json();
  }
  if (info.subcommand == "tenants") {
    tenants_json(object, summary);
    return object.json();
  }
  if (!summary.overhead.empty()) {
    Json rounds = Json::array();
    for (std::size_t i = 0; i < summary.overhead.size(); ++i) {
      rounds.push_back(overhead_round_json(summary.overhead[i]));
    }
    return object
        .field("without_metrics_msgs_per_sec",
               spread_json(spread_of(summary.overhead, &OverheadResult::off_msgs_per_sec)))
        .field("with_metrics_msgs_per_sec",
               spread_json(spread_of(summary.overhead, &OverheadResult::on_msgs_per_sec)))
        .field("ratio", spread_json(spread_of(summary.overhead, &OverheadResult::ratio)))
        .field("relay_cpu_us_per_message_without_metrics",
               spread_json(spread_of(summary.overhead, &OverheadResult::off_cpu_us_per_message)))
        .field("relay_cpu_us_per_message_with_metrics",
               spread_json(spread_of(summary.overhead, &OverheadResult::on_cpu_us_per_message)))
        .field("relay_cpu_ratio",
               spread_json(spread_of(summary.overhead, &OverheadResult::cpu_ratio)))
        .field("scrape_us_per_message",
               spread_json(spread_of(summary.overhead, &OverheadResult::scrape_us_per_message)))
        .field("other_threads_added_cpu_us_per_message",
               spread_json(spread_of(summary.overhead,
                                     &OverheadResult::other_threads_added_us_per_message)))
        .boolean("ok", summary.ok())
        .field("problems", json_strings(summary.problems))
        .field("rounds", rounds)
        .json();
  }
  const bool have_outbox = !summary.outbox.empty();
  const bool have_js = !summary.jetstream.empty();
  double drain = 0, publish = 0;
  if (have_outbox) {
    drain = median_of(summary.outbox, &OutboxResult::drain_msgs_per_sec);
    auto latency = pooled_latency(summary.outbox);
    object.rate("outbox_drain_msgs_per_sec", drain)
        .rate("outbox_live_msgs_per_sec",
              median_of(summary.outbox, &OutboxResult::live_msgs_per_sec))
        .num("outbox_latency_p50_ms", latency.p50_ms)
        .num("outbox_latency_p99_ms", latency.p99_ms)
        .num("outbox_latency_p999_ms", latency.p999_ms)
        .num("outbox_latency_max_ms", latency.max_ms)
        .integer("outbox_latency_samples", latency.samples)
        .rate("outbox_resend_msgs_per_sec",
              median_of(summary.outbox, &OutboxResult::resend_msgs_per_sec))
        .boolean("outbox_resend_all_duplicate", all_duplicate(summary.outbox));
  }
  if (have_js) {
    publish = median_of(summary.jetstream, &JetStreamResult::publish_msgs_per_sec);
    auto latency = pooled_latency(summary.jetstream);
    object.text("jetstream_server_version", summary.jetstream.front().server_version)
        .rate("jetstream_msgs_per_sec", publish)
        .num("jetstream_latency_p50_ms", latency.p50_ms)
        .num("jetstream_latency_p99_ms", latency.p99_ms)
        .num("jetstream_latency_p999_ms", latency.p999_ms)
        .num("jetstream_latency_max_ms", latency.max_ms)
        .rate("jetstream_resend_msgs_per_sec",
              median_of(summary.jetstream, &JetStreamResult::resend_msgs_per_sec))
        .boolean("jetstream_resend_all_duplicate", all_duplicate(summary.jetstream));
  }
  if (have_outbox && have_js) {
    object.num("ratio", drain / publish);
    auto latency = pooled_latency(summary.outbox);
    object.field("targets",
                 JsonObject()
                     .boolean("drain_at_least_2x_jetstream", drain >= target_ratio * publish)
                     .boolean("latency_p50_at_most_1ms", latency.p50_ms <= target_p50_ms)
                     .boolean("latency_p99_at_most_5ms", latency.p99_ms <= target_p99_ms)
                     .json());
  }
  object.boolean("ok", summary.ok()).field("problems", json_strings(summary.problems));
  Json rounds = Json::array();
  for (std::size_t i = 0; i < std::max(summary.outbox.size(), summary.jetstream.size()); ++i) {
    JsonObject round;
    if (i < summary.outbox.size()) round.field("outbox", outbox_round_json(summary.outbox[i]));
    if (i < summary.jetstream.size())
      round.field("jetstream", jetstream_round_json(summary.jetstream[i]));
    rounds.push_back(round.json());
  }
  object.field("rounds", rounds);
  return object.json();
}

std::string json_report(const RunInfo& info, const Summary& summary) {
  return json_document(info, summary).dump();
}

std::filesystem::path write_results_file(const std::filesystem::path& dir, const RunInfo& info,
                                         const std::string& json) {
  std::filesystem::create_directories(dir);
  std::string stamp = info.started_at;
  stamp.erase(std::remove(stamp.begin(), stamp.end(), ':'), stamp.end());
  stamp.erase(std::remove(stamp.begin(), stamp.end(), '-'), stamp.end());
  auto path = dir / (stamp + "-" + info.subcommand + ".json");
  for (int n = 2; std::filesystem::exists(path) && n < 100; ++n) {
    path = dir / (stamp + "-" + info.subcommand + "-" + std::to_string(n) + ".json");
  }
  std::ofstream out(path);
  out << json << "\n";
  if (!out) throw std::runtime_error("cannot write " + path.string());
  return path;
}

}  // namespace bench
