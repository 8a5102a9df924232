#include <charconv>
#include <limits>
#include <string>
#include <vector>

#include "idgen/snowflake.hpp"

namespace idgen {
namespace {

constexpr std::int64_t max_unix_ms = std::numeric_limits<std::int64_t>::max();

std::string_view trim(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) text.remove_suffix(1);
  return text;
}

std::string lower(std::string_view text) {
  std::string result(text);
  for (char& c : result) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return result;
}

std::optional<std::int64_t> parse_integer(std::string_view text) {
  std::int64_t value = 0;
  const auto* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (ec != std::errc() || ptr != end || text.empty()) return std::nullopt;
  return value;
}

std::int64_t parse_tick_ms(std::string_view text, const std::string& fail_prefix) {
  std::int64_t multiplier = 1;
  std::string_view digits = text;
  if (digits.size() >= 2 && digits.substr(digits.size() - 2) == "ms") {
    digits.remove_suffix(2);
  } else if (!digits.empty() && digits.back() == 's') {
    digits.remove_suffix(1);
    multiplier = 1000;
  }
  auto value = parse_integer(trim(digits));
  if (!value || *value < 1 || *value > 86'400'000 / multiplier) {
    throw Error(fail_prefix + "tick '" + std::string(text) +
                "' must be a whole number of milliseconds from 1ms to 1 day (e.g. 1ms, 10ms, 1s)");
  }
  return *value * multiplier;
}

}  // namespace

Layout Layout::standard() {
  return Layout{};
}

Layout Layout::snowflake() {
  Layout layout;
  layout.name = "snowflake";
  layout.epoch_unix_ms = 1288834974657;
  return layout;
}

Layout Layout::sonyflake() {
  Layout layout;
  layout.name = "sonyflake";
  layout.timestamp_bits = 39;
  layout.worker_bits = 16;
  layout.sequence_bits = 8;
  layout.epoch_unix_ms = 1409529600000;  // 2014-09-01T00:00:00Z
  layout.tick_ms = 10;
  layout.order = FieldOrder::time_sequence_worker;
  return layout;
}

Layout Layout::parse(std::string_view name_or_spec) {
  const std::string_view text = trim(name_or_spec);
  const std::string name = lower(text);
  if (name == "standard" || name == "default") return standard();
  if (name == "snowflake" || name == "twitter") return snowflake();
  if (name == "sonyflake") return sonyflake();

  const std::string fail_prefix = "invalid layout '" + std::string(text) + "': ";
  if (text.find('=') == std::string_view::npos) {
    throw Error(fail_prefix +
                "not a preset (standard, snowflake, sonyflake) nor a spec like "
                "time=41,worker=10,seq=12,epoch=2026-01-01T00:00:00Z,tick=1ms");
  }
  Layout layout;
  layout.name = "custom";
  bool seen_time = false, seen_worker = false, seen_sequence = false;
  std::vector<std::string> seen_keys;
  std::string_view rest = text;
  while (!rest.empty()) {
    const std::size_t comma = rest.find(',');
    const std::string_view item = trim(rest.substr(0, comma));
    rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
    if (item.empty()) throw Error(fail_prefix + "empty item between commas");
    const std::size_t equals = item.find('=');
    if (equals == std::string_view::npos) {
      throw Error(fail_prefix + "'" + std::string(item) + "' is not key=value");
    }
    std::string key = lower(trim(item.substr(0, equals)));
    const std::string_view value = trim(item.substr(equals + 1));
    if (key == "timestamp") key = "time";
    if (key == "sequence") key = "seq";
    for (const auto& seen : seen_keys) {
      if (seen == key) throw Error(fail_prefix + "'" + key + "' given twice");
    }
    seen_keys.push_back(key);
    const auto bits = [&]() -> unsigned {
      auto number = parse_integer(value);
      if (!number || *number < 0 || *number > 63) {
        throw Error(fail_prefix + key + "='" + std::string(value) +
                    "' must be a bit count from 0 to 63");
      }
      return static_cast<unsigned>(*number);
    };
    if (key == "time") {
      layout.timestamp_bits = bits();
      seen_time = true;
    } else if (key == "worker") {
      layout.worker_bits = bits();
      seen_worker = true;
    } else if (key == "seq") {
      layout.sequence_bits = bits();
      seen_sequence = true;
    } else if (key == "epoch") {
      if (auto millis = parse_integer(value)) {
        layout.epoch_unix_ms = *millis;
      } else {
        try {
          layout.epoch_unix_ms = parse_utc(value);
        } catch (const Error& error) {
          throw Error(fail_prefix + "epoch: " + error.what());
        }
      }
    } else if (key == "tick") {
      layout.tick_ms = parse_tick_ms(value, fail_prefix);
    } else if (key == "order") {
      const std::string order = lower(value);
      if (order == "tws" || order == "time-worker-seq") {
        layout.order = FieldOrder::time_worker_sequence;
      } else if (order == "tsw" || order == "time-seq-worker") {
        layout.order = FieldOrder::time_sequence_worker;
      } else {
        throw Error(fail_prefix + "order='" + std::string(value) + "' must be tws or tsw");
      }
    } else {
      throw Error(fail_prefix + "unknown key '" + key +
                  "' (known: time, worker, seq, epoch, tick, order)");
    }
  }
  if (!seen_time || !seen_worker || !seen_sequence) {
    throw Error(fail_prefix + "missing " +
                (!seen_time     ? "time"
                 : !seen_worker ? "worker"
                                : "seq") +
                "=<bits> (a spec needs time, worker and seq)");
  }
  try {
    layout.validate();
  } catch (const Error& error) {
    throw Error(fail_prefix + error.what());
  }
  return layout;
}

void Layout::validate() const {
  const unsigned total = timestamp_bits + worker_bits + sequence_bits;
  if (timestamp_bits > 63 || worker_bits > 63 || sequence_bits > 63 || total != 63) {
    throw Error("time, worker and seq bits must sum to 63 (the sign bit stays 0), got " +
                std::to_string(timestamp_bits) + "+" + std::to_string(worker_bits) + "+" +
                std::to_string(sequence_bits) + "=" + std::to_string(total));
  }
  if (timestamp_bits < 1) throw Error("time needs at least 1 bit");
  if (worker_bits > 32)
    throw Error("worker may have at most 32 bits, got " + std::to_string(worker_bits));
  if (tick_ms < 1 || tick_ms > 86'400'000) {
    throw Error("tick must be from 1 ms to 1 day, got " + std::to_string(tick_ms) + " ms");
  }
  if (epoch_unix_ms < 0 || epoch_unix_ms > parse_utc("9999-12-31T23:59:59.999Z")) {
    throw Error("epoch must be between 1970-01-01 and 9999-12-31, got " +
                std::to_string(epoch_unix_ms));
  }
}

std::string Layout::spec() const {
  std::string text =
      "time=" + std::to_string(timestamp_bits) + ",worker=" + std::to_string(worker_bits) +
      ",seq=" + std::to_string(sequence_bits) + ",epoch=" + format_utc(epoch_unix_ms) +
      ",tick=" + std::to_string(tick_ms) + "ms";
  if (order == FieldOrder::time_sequence_worker) text += ",order=tsw";
  return text;
}

std::uint32_t Layout::max_worker_id() const noexcept {
  return worker_bits >= 32 ? std::numeric_limits<std::uint32_t>::max()
                           : static_cast<std::uint32_t>((std::uint64_t{1} << worker_bits) - 1);
}

std::uint64_t Layout::max_sequence() const noexcept {
  return sequence_bits >= 64 ? std::numeric_limits<std::uint64_t>::max()
                             : (std::uint64_t{1} << sequence_bits) - 1;
}

double Layout::max_ids_per_second() const noexcept {
  return (static_cast<double>(max_sequence()) + 1.0) * 1000.0 / static_cast<double>(tick_ms);
}

std::int64_t Layout::expires_unix_ms() const noexcept {
  // 2^timestamp_bits ticks after the epoch, saturating at the largest int64.
  if (timestamp_bits >= 63 || tick_ms < 1) return max_unix_ms;
  const auto ticks = static_cast<std::int64_t>(std::uint64_t{1} << timestamp_bits);
  if (ticks > (max_unix_ms - epoch_unix_ms) / tick_ms) return max_unix_ms;
  return epoch_unix_ms + ticks * tick_ms;
}

Parts decode(const Layout& layout, std::uint64_t id) {
  if (id >> 63 != 0) {
    throw Error("id " + std::to_string(id) + " has the sign bit set, so no layout produced it");
  }
  const unsigned low_bits = layout.worker_bits + layout.sequence_bits;
  const std::uint64_t tick = id >> low_bits;
  const std::uint64_t worker_mask = layout.max_worker_id();
  Parts parts;
  if (layout.order == FieldOrder::time_worker_sequence) {
    parts.worker = static_cast<std::uint32_t>((id >> layout.sequence_bits) & worker_mask);
    parts.sequence = id & layout.max_sequence();
  } else {
    parts.sequence = (id >> layout.worker_bits) & layout.max_sequence();
    parts.worker = static_cast<std::uint32_t>(id & worker_mask);
  }
  parts.timestamp_unix_ms = layout.epoch_unix_ms + static_cast<std::int64_t>(tick) * layout.tick_ms;
  return parts;
}

std::uint64_t compose(const Layout& layout, const Parts& parts) {
  if (parts.timestamp_unix_ms < layout.epoch_unix_ms) {
    throw Error("time " + format_utc(parts.timestamp_unix_ms) + " is before the layout's epoch " +
                format_utc(layout.epoch_unix_ms));
  }
  if (parts.timestamp_unix_ms >= layout.expires_unix_ms()) {
    throw Error("time " + format_utc(parts.timestamp_unix_ms) +
                " is past the layout's last representable time (it expires " +
                format_utc(layout.expires_unix_ms()) + ")");
  }
  const std::int64_t since_epoch = parts.timestamp_unix_ms - layout.epoch_unix_ms;
  if (since_epoch % layout.tick_ms != 0) {
    throw Error("time " + format_utc(parts.timestamp_unix_ms) + " is not on a " +
                std::to_string(layout.tick_ms) + " ms tick boundary of the layout");
  }
  if (parts.worker > layout.max_worker_id()) {
    throw Error("worker " + std::to_string(parts.worker) + " is out of range 0.." +
                std::to_string(layout.max_worker_id()));
  }
  if (parts.sequence > layout.max_sequence()) {
    throw Error("sequence " + std::to_string(parts.sequence) + " is out of range 0.." +
                std::to_string(layout.max_sequence()));
  }
  const auto tick = static_cast<std::uint64_t>(since_epoch / layout.tick_ms);
  const unsigned low_bits = layout.worker_bits + layout.sequence_bits;
  if (layout.order == FieldOrder::time_worker_sequence) {
    return tick << low_bits | std::uint64_t{parts.worker} << layout.sequence_bits | parts.sequence;
  }
  return tick << low_bits | parts.sequence << layout.worker_bits | parts.worker;
}

}  // namespace idgen
