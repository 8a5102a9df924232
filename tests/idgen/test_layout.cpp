#include <catch2/catch.hpp>

#include "idgen/snowflake.hpp"

using idgen::Layout;

namespace {

std::string parse_error(const std::string& spec) {
  try {
    Layout::parse(spec);
  } catch (const idgen::Error& error) {
    CHECK(error.code() == idgen::ErrorCode::invalid_argument);
    return error.what();
  }
  FAIL("spec was accepted: " << spec);
  return {};
}

}  // namespace

TEST_CASE("presets have the documented widths, epochs and ticks", "[idgen][layout]") {
  const Layout standard = Layout::standard();
  CHECK(standard.timestamp_bits == 41);
  CHECK(standard.worker_bits == 10);
  CHECK(standard.sequence_bits == 12);
  CHECK(standard.tick_ms == 1);
  CHECK(standard.epoch_unix_ms == idgen::parse_utc("2026-01-01T00:00:00Z"));

  const Layout snowflake = Layout::snowflake();
  CHECK(snowflake.timestamp_bits == 41);
  CHECK(snowflake.worker_bits == 10);
  CHECK(snowflake.sequence_bits == 12);
  CHECK(snowflake.epoch_unix_ms == 1288834974657);
  CHECK(snowflake.tick_ms == 1);

  const Layout sonyflake = Layout::sonyflake();
  CHECK(sonyflake.timestamp_bits == 39);
  CHECK(sonyflake.worker_bits == 16);
  CHECK(sonyflake.sequence_bits == 8);
  CHECK(sonyflake.tick_ms == 10);
  CHECK(sonyflake.epoch_unix_ms == idgen::parse_utc("2014-09-01T00:00:00Z"));
  CHECK(sonyflake.order == idgen::FieldOrder::time_sequence_worker);
}

TEST_CASE("a layout knows its maximum rate per worker and its expiry", "[idgen][layout]") {
  CHECK(Layout::standard().max_ids_per_second() == 4'096'000.0);
  CHECK(Layout::sonyflake().max_ids_per_second() == 25'600.0);
  CHECK(Layout::standard().max_worker_id() == 1023);
  CHECK(Layout::sonyflake().max_worker_id() == 65535);
  CHECK(Layout::standard().max_sequence() == 4095);
  // 2^41 ms after the epochs.
  CHECK(Layout::standard().expires_unix_ms() == 1767225600000 + (std::int64_t{1} << 41));
  CHECK(idgen::format_utc(Layout::snowflake().expires_unix_ms()) == "2080-07-10T17:30:30.209Z");
  CHECK(Layout::sonyflake().expires_unix_ms() ==
        Layout::sonyflake().epoch_unix_ms + (std::int64_t{1} << 39) * 10);
}

TEST_CASE("presets parse by name, case-insensitively, with aliases", "[idgen][layout]") {
  CHECK(Layout::parse("standard") == Layout::standard());
  CHECK(Layout::parse("default") == Layout::standard());
  CHECK(Layout::parse("Snowflake") == Layout::snowflake());
  CHECK(Layout::parse("twitter") == Layout::snowflake());
  CHECK(Layout::parse(" sonyflake ") == Layout::sonyflake());
}

TEST_CASE("custom specs parse, and spec() parses back to the same layout", "[idgen][layout]") {
  const Layout layout =
      Layout::parse("time=40, worker=8, seq=15, epoch=2024-06-01T00:00:00Z, tick=2ms");
  CHECK(layout.name == "custom");
  CHECK(layout.timestamp_bits == 40);
  CHECK(layout.worker_bits == 8);
  CHECK(layout.sequence_bits == 15);
  CHECK(layout.tick_ms == 2);
  CHECK(layout.epoch_unix_ms == idgen::parse_utc("2024-06-01T00:00:00Z"));
  CHECK(Layout::parse(layout.spec()) == layout);

  const Layout from_millis =
      Layout::parse("timestamp=39,worker=16,sequence=8,epoch=1409529600000,tick=10ms,order=tsw");
  CHECK(from_millis.epoch_unix_ms == 1409529600000);
  CHECK(from_millis.order == idgen::FieldOrder::time_sequence_worker);
  CHECK(Layout::parse("time=41,worker=10,seq=12,tick=1s").tick_ms == 1000);
  // Epoch and tick default to the standard layout's.
  const Layout defaults = Layout::parse("time=41,worker=10,seq=12");
  CHECK(defaults.epoch_unix_ms == Layout::standard().epoch_unix_ms);
  CHECK(defaults.tick_ms == 1);

  for (const Layout& preset : {Layout::standard(), Layout::snowflake(), Layout::sonyflake()}) {
    Layout reparsed = Layout::parse(preset.spec());
    reparsed.name = preset.name;
    CHECK(reparsed == preset);
  }
}

TEST_CASE("invalid specs are refused with the reason", "[idgen][layout]") {
  CHECK_THAT(parse_error("time=41,worker=10,seq=13"), Catch::Contains("sum to 63"));
  CHECK_THAT(parse_error("time=41,worker=10"), Catch::Contains("missing seq"));
  CHECK_THAT(parse_error("flake"), Catch::Contains("not a preset"));
  CHECK_THAT(parse_error("time=41,worker=10,seq=12,colour=blue"),
             Catch::Contains("unknown key 'colour'"));
  CHECK_THAT(parse_error("time=abc,worker=10,seq=12"), Catch::Contains("bit count"));
  CHECK_THAT(parse_error("time=41,worker=10,seq=12,tick=0ms"), Catch::Contains("tick"));
  CHECK_THAT(parse_error("time=41,worker=10,seq=12,tick=fast"), Catch::Contains("tick"));
  CHECK_THAT(parse_error("time=41,worker=10,seq=12,epoch=yesterday"), Catch::Contains("epoch"));
  CHECK_THAT(parse_error("time=41,worker=10,seq=12,epoch=-5"), Catch::Contains("epoch"));
  CHECK_THAT(parse_error("time=41,time=41,worker=10,seq=12"), Catch::Contains("twice"));
  CHECK_THAT(parse_error("time=41,,worker=10,seq=12"), Catch::Contains("empty item"));
  CHECK_THAT(parse_error("time=41,worker,seq=12"), Catch::Contains("key=value"));
  CHECK_THAT(parse_error("time=0,worker=30,seq=33"), Catch::Contains("at least 1 bit"));
  CHECK_THAT(parse_error("time=20,worker=33,seq=10"), Catch::Contains("at most 32"));
  CHECK_THAT(parse_error("time=41,worker=10,seq=12,order=wst"), Catch::Contains("order"));
}
