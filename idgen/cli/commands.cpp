#include "commands.hpp"

#include <atomic>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#include <spdlog/logger.h>
#include <nlohmann/json.hpp>

#include "idgen/encoding.hpp"
#include "idgen/snowflake.hpp"
#include "idgen/uuid.hpp"

namespace idgen::cli {
namespace {

// Buffered stdout: printing a million ids must not cost a syscall each.
class Output {
 public:
  Output() { buffer_.reserve(1 << 16); }
  ~Output() noexcept {
    try {
      flush();
    } catch (...) {
    }
  }
  Output(const Output&) = delete;
  Output& operator=(const Output&) = delete;

  Output& operator<<(std::string_view text) {
    buffer_.append(text);
    if (buffer_.size() >= (1 << 16)) flush();
    return *this;
  }
  void flush() {
    if (!buffer_.empty() &&
        std::fwrite(buffer_.data(), 1, buffer_.size(), stdout) != buffer_.size()) {
      buffer_.clear();
      throw Error(ErrorCode::io, "cannot write to standard output");
    }
    buffer_.clear();
    if (std::fflush(stdout) != 0) throw Error(ErrorCode::io, "cannot write to standard output");
  }

 private:
  std::string buffer_;
};

using Json = nlohmann::ordered_json;

// One JSON object on a line of its own.
std::string json_line(const Json& object) {
  return object.dump() + "\n";
}

// `value` rounded to `decimals` places, for JSON numbers that should not print
// every digit of a measurement.
double rounded(double value, int decimals) {
  const double scale = std::pow(10.0, decimals);
  return std::round(value * scale) / scale;
}

// A whole number in [min, max] given for `what` (a flag or argument name).
std::uint64_t parse_number(const std::string& what, std::string_view text, std::uint64_t min,
                           std::uint64_t max) {
  std::uint64_t value = 0;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (text.empty() || ec == std::errc::invalid_argument || ptr != end) {
    throw Error(what + " '" + std::string(text) + "' is not a whole number from " +
                std::to_string(min) + " to " + std::to_string(max));
  }
  if (ec == std::errc::result_out_of_range || value < min || value > max) {
    throw Error(what + " " + std::string(text) + " is out of range " + std::to_string(min) + ".." +
                std::to_string(max));
  }
  return value;
}

Layout parse_layout(const std::string& text) {
  try {
    return Layout::parse(text);
  } catch (const Error& error) {
    throw Error(std::string("--layout: ") + error.what());
  }
}

Encoding parse_format(const std::string& text) {
  if (auto encoding = parse_encoding(text)) return *encoding;
  throw Error("--format '" + text + "' is not one of dec, hex, base62, base32");
}

std::uint32_t parse_worker(const std::string& what, const std::string& text, const Layout& layout) {
  try {
    return static_cast<std::uint32_t>(parse_number(what, text, 0, layout.max_worker_id()));
  } catch (const Error& error) {
    throw Error(std::string(error.what()) + " (the worker range of layout " +
                (layout.name == "custom" ? layout.spec() : layout.name) + ")");
  }
}

std::string layout_label(const Layout& layout) {
  return layout.name == "custom" ? layout.spec() : layout.name;
}

std::string order_text(FieldOrder order) {
  return order == FieldOrder::time_worker_sequence ? "time | worker | sequence"
                                                   : "time | sequence | worker";
}

std::string fixed(double value, int decimals) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.*f", decimals, value);
  return buffer;
}

// 4096000 -> "4,096,000"
std::string grouped(std::uint64_t value) {
  const std::string digits = std::to_string(value);
  std::string result;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i != 0 && (digits.size() - i) % 3 == 0) result.push_back(',');
    result.push_back(digits[i]);
  }
  return result;
}

}  // namespace

int run_gen(const GenOptions& options, const std::shared_ptr<spdlog::logger>& logger) {
  const Layout layout = parse_layout(options.layout);
  const Encoding encoding = parse_format(options.format);
  const std::uint64_t count = parse_number("-n", options.count, 1, 1'000'000'000'000);
  std::uint32_t worker = 0;
  if (options.worker) {
    worker = parse_worker("--worker", *options.worker, layout);
  } else if (const char* from_env = std::getenv("IDGEN_WORKER_ID")) {
    worker = parse_worker("IDGEN_WORKER_ID", from_env, layout);
  } else {
    logger->warn("no --worker or IDGEN_WORKER_ID given, using worker 0");
  }
  GeneratorOptions generator_options;
  if (options.clock_policy == "wait") {
    generator_options.clock_policy = ClockPolicy::wait;
  } else if (options.clock_policy == "fail") {
    generator_options.clock_policy = ClockPolicy::fail;
  } else if (options.clock_policy == "borrow") {
    generator_options.clock_policy = ClockPolicy::borrow;
  } else {
    throw Error("--clock-policy '" + options.clock_policy + "' is not one of wait, fail, borrow");
  }
  generator_options.max_backward_wait = std::chrono::milliseconds(
      parse_number("--max-backward-wait", options.max_backward_wait_ms, 0, 60'000));
  if (options.state_file) generator_options.state_file = *options.state_file;
  generator_options.logger = logger;
  Generator generator(layout, worker, generator_options);

  Output out;
  if (options.json) out << "[";
  for (std::uint64_t i = 0; i < count; ++i) {
    const std::string text = encode(generator.next(), encoding);
    if (options.json) {
      out << (i == 0 ? "" : ",\n") << Json(text).dump();
    } else {
      out << text << "\n";
    }
  }
  if (options.json) out << "]\n";
  out.flush();
  return exit_ok;
}

namespace {

bool looks_like_uuid(std::string_view text) {
  return text.size() == 36 && text[8] == '-' && text[13] == '-' && text[18] == '-' &&
         text[23] == '-';
}

int decode_uuid(const DecodeOptions& options) {
  const boost::uuids::uuid uuid = parse_uuid(options.id);
  const int version = uuid.data[6] >> 4;
  std::optional<std::int64_t> unix_ms;
  if (version == 7) unix_ms = uuid_v7_unix_ms(uuid);
  Output out;
  if (options.json) {
    Json decoded = {{"uuid", idgen::to_string(uuid)}, {"version", version}};
    if (unix_ms) {
      decoded["timestamp_ms"] = *unix_ms;
      decoded["time"] = format_utc(*unix_ms);
    }
    out << json_line(decoded);
  } else {
    out << "uuid          " << idgen::to_string(uuid) << "\n"
        << "version       " << std::to_string(version) << "\n";
    if (unix_ms) {
      out << "time          " << format_utc(*unix_ms) << "\n"
          << "timestamp_ms  " << std::to_string(*unix_ms) << "\n";
    }
  }
  out.flush();
  return exit_ok;
}

}  // namespace

int run_decode(const DecodeOptions& options) {
  if (options.format == "dec" && looks_like_uuid(options.id)) return decode_uuid(options);
  const Layout layout = parse_layout(options.layout);
  const Encoding encoding = parse_format(options.format);
  const std::uint64_t id = decode(options.id, encoding);
  const Parts parts = decode(layout, id);
  Output out;
  if (options.json) {
    out << json_line({{"id", encode(id, Encoding::decimal)},
                      {"layout", layout_label(layout)},
                      {"timestamp_ms", parts.timestamp_unix_ms},
                      {"time", format_utc(parts.timestamp_unix_ms)},
                      {"worker", parts.worker},
                      {"sequence", parts.sequence}});
  } else {
    out << "id            " << encode(id, Encoding::decimal) << "\n"
        << "layout        " << layout_label(layout) << "\n"
        << "time          " << format_utc(parts.timestamp_unix_ms) << "\n"
        << "timestamp_ms  " << std::to_string(parts.timestamp_unix_ms) << "\n"
        << "worker        " << std::to_string(parts.worker) << "\n"
        << "sequence      " << std::to_string(parts.sequence) << "\n";
  }
  out.flush();
  return exit_ok;
}

int run_compose(const ComposeOptions& options) {
  const Layout layout = parse_layout(options.layout);
  const Encoding encoding = parse_format(options.format);
  Parts parts;
  try {
    parts.timestamp_unix_ms = parse_utc(options.time);
  } catch (const Error& error) {
    throw Error(std::string("--time: ") + error.what());
  }
  parts.worker = parse_worker("--worker", options.worker, layout);
  parts.sequence = parse_number("--seq", options.sequence, 0, layout.max_sequence());
  std::uint64_t id = 0;
  try {
    id = compose(layout, parts);
  } catch (const Error& error) {
    throw Error(std::string("--time: ") + error.what());
  }
  Output out;
  if (options.json) {
    out << json_line({{"id", encode(id, encoding)},
                      {"layout", layout_label(layout)},
                      {"timestamp_ms", parts.timestamp_unix_ms},
                      {"time", format_utc(parts.timestamp_unix_ms)},
                      {"worker", parts.worker},
                      {"sequence", parts.sequence}});
  } else {
    out << encode(id, encoding) << "\n";
  }
  out.flush();
  return exit_ok;
}

int run_layout(const LayoutOptions& options) {
  const Layout layout = Layout::parse(options.layout);
  const std::int64_t expires = layout.expires_unix_ms();
  const auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
  const double years_left = static_cast<double>(expires - now) / (365.25 * 86'400'000.0);
  const auto max_rate = static_cast<std::uint64_t>(std::llround(layout.max_ids_per_second()));
  Output out;
  if (options.json) {
    out << json_line({{"name", layout.name},
                      {"spec", layout.spec()},
                      {"timestamp_bits", layout.timestamp_bits},
                      {"worker_bits", layout.worker_bits},
                      {"sequence_bits", layout.sequence_bits},
                      {"order", order_text(layout.order)},
                      {"epoch_ms", layout.epoch_unix_ms},
                      {"epoch", format_utc(layout.epoch_unix_ms)},
                      {"tick_ms", layout.tick_ms},
                      {"max_worker_id", layout.max_worker_id()},
                      {"max_ids_per_sec", max_rate},
                      {"expires_ms", expires},
                      {"expires", format_utc(expires)},
                      {"expired", expires <= now}});
  } else {
    out << "layout        " << layout.name << "\n"
        << "spec          " << layout.spec() << "\n"
        << "bits          time " << std::to_string(layout.timestamp_bits) << ", worker "
        << std::to_string(layout.worker_bits) << ", sequence "
        << std::to_string(layout.sequence_bits) << " (" << order_text(layout.order) << ")\n"
        << "epoch         " << format_utc(layout.epoch_unix_ms) << " ("
        << std::to_string(layout.epoch_unix_ms) << " ms)\n"
        << "tick          " << std::to_string(layout.tick_ms) << " ms\n"
        << "workers       0.." << std::to_string(layout.max_worker_id()) << "\n"
        << "max ids/s     " << grouped(max_rate) << " per worker\n"
        << "expires       " << format_utc(expires)
        << (expires <= now ? std::string(" (expired)") : " (in " + fixed(years_left, 1) + " years)")
        << "\n";
  }
  out.flush();
  return exit_ok;
}

int run_uuid(const UuidOptions& options) {
  if (options.v4 && options.v7) throw Error("--v4 and --v7 exclude each other");
  const std::uint64_t count = parse_number("-n", options.count, 1, 1'000'000'000);
  UuidV7Generator v7;
  Output out;
  if (options.json) out << "[";
  for (std::uint64_t i = 0; i < count; ++i) {
    const std::string text = idgen::to_string(options.v4 ? uuid_v4() : v7.next());
    if (options.json) {
      out << (i == 0 ? "" : ",\n") << Json(text).dump();
    } else {
      out << text << "\n";
    }
  }
  if (options.json) out << "]\n";
  out.flush();
  return exit_ok;
}

int run_bench(const BenchOptions& options, const std::shared_ptr<spdlog::logger>& logger) {
  const Layout layout = parse_layout(options.layout);
  const auto threads = static_cast<unsigned>(parse_number("--threads", options.threads, 1, 256));
  double seconds = 0;
  {
    const char* end = options.seconds.data() + options.seconds.size();
    auto [ptr, ec] = std::from_chars(options.seconds.data(), end, seconds);
    if (ec != std::errc() || ptr != end || !(seconds >= 0.1 && seconds <= 3600)) {
      throw Error("--seconds '" + options.seconds + "' must be a number from 0.1 to 3600");
    }
  }
  GeneratorOptions generator_options;
  generator_options.logger = logger;
  Generator generator(layout, 0, generator_options);

  std::atomic<bool> start{false};
  std::atomic<bool> stop{false};
  std::atomic<bool> out_of_order{false};
  std::vector<std::uint64_t> counts(threads, 0);
  std::vector<std::thread> workers;
  workers.reserve(threads);
  for (unsigned t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      while (!start.load(std::memory_order_acquire)) std::this_thread::yield();
      std::uint64_t made = 0;
      std::uint64_t last = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        for (int i = 0; i < 256; ++i) {
          const std::uint64_t id = generator.next();
          // One thread's ids from one generator must increase.
          if (id <= last) out_of_order.store(true, std::memory_order_relaxed);
          last = id;
        }
        made += 256;
      }
      counts[t] = made;
    });
  }
  // Start on a tick boundary, so the measurement does not get a part-used
  // first tick's whole sequence for free.
  const auto clock = SystemClock::shared();
  const auto tick_now = [&] {
    return (clock->now_unix_ms() - layout.epoch_unix_ms) / layout.tick_ms;
  };
  for (const auto first_tick = tick_now(); tick_now() == first_tick;) {
  }
  const auto began = std::chrono::steady_clock::now();
  start.store(true, std::memory_order_release);
  // The measurement interval itself, not a synchronisation.
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop.store(true, std::memory_order_relaxed);
  for (auto& worker : workers) worker.join();
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
  if (out_of_order.load()) {
    throw Error(ErrorCode::io, "generator returned ids out of order during the benchmark");
  }
  std::uint64_t total = 0;
  for (const auto made : counts) total += made;
  const double rate = static_cast<double>(total) / elapsed;
  const double limit = layout.max_ids_per_second();
  Output out;
  if (options.json) {
    out << json_line({{"layout", layout_label(layout)},
                      {"threads", threads},
                      {"seconds", rounded(elapsed, 3)},
                      {"ids", total},
                      {"ids_per_sec", std::llround(rate)},
                      {"limit_per_sec", std::llround(limit)},
                      {"ratio", rounded(rate / limit, 4)}});
  } else {
    out << "layout        " << layout_label(layout) << ", " << std::to_string(threads)
        << (threads == 1 ? " thread, " : " threads, ") << fixed(elapsed, 2) << " s\n"
        << "ids/s         " << grouped(static_cast<std::uint64_t>(std::llround(rate))) << "\n"
        << "limit/s       " << grouped(static_cast<std::uint64_t>(std::llround(limit)))
        << " (one worker: 2^" << std::to_string(layout.sequence_bits) << " per "
        << std::to_string(layout.tick_ms) << " ms tick)\n"
        << "of limit      " << fixed(100.0 * rate / limit, 2) << "%\n";
  }
  out.flush();
  return exit_ok;
}

}  // namespace idgen::cli
