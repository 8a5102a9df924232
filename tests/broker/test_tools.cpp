#include <catch2/catch.hpp>

#include "broker/tools.hpp"

TEST_CASE("durations and sizes parse with units") {
  using std::chrono::milliseconds;
  CHECK(broker::parse_duration("forever") == milliseconds(0));
  CHECK(broker::parse_duration("0") == milliseconds(0));
  CHECK(broker::parse_duration("30") == milliseconds(30'000));
  CHECK(broker::parse_duration("1500ms") == milliseconds(1500));
  CHECK(broker::parse_duration("15m") == milliseconds(900'000));
  CHECK(broker::parse_duration("7d") == milliseconds(604'800'000));
  CHECK_FALSE(broker::parse_duration("soon"));
  CHECK_FALSE(broker::parse_duration("5 parsecs"));
  CHECK_FALSE(broker::parse_duration("99999999999999999999d"));
  CHECK(broker::parse_size("1k") == 1024u);
  CHECK(broker::parse_size("2MiB") == 2u * 1024 * 1024);
  CHECK(broker::parse_size("100") == 100u);
  CHECK_FALSE(broker::parse_size("-1"));
  CHECK_FALSE(broker::parse_size("1x"));
}

TEST_CASE("JSON output escapes text and base64-encodes binary payloads") {
  CHECK(broker::json_escape("a\"b\\c\n\x01") == "\"a\\\"b\\\\c\\n\\u0001\"");
  CHECK(broker::base64_encode("") == "");
  CHECK(broker::base64_encode("f") == "Zg==");
  CHECK(broker::base64_encode("fo") == "Zm8=");
  CHECK(broker::base64_encode("foo") == "Zm9v");
  CHECK(broker::is_printable_text("héllo\n"));
  CHECK_FALSE(broker::is_printable_text(std::string("\x00", 1)));
  CHECK_FALSE(broker::is_printable_text("\xff\xfe"));
  wire::StoredMessage message{3, 5, "id", "key", {{"h", "v"}}, "text"};
  CHECK(broker::message_to_json("orders", message) ==
        "{\"topic\":\"orders\",\"offset\":3,\"msg_id\":\"id\",\"key\":\"key\",\"timestamp_ms\":5,"
        "\"headers\":{\"h\":\"v\"},\"payload\":\"text\"}");
  wire::StatsReply stats{1, {{"stored", 2}}, {{"orders", 2, 2}}};
  CHECK(broker::stats_to_json(stats) ==
        "{\"stored\":2,\"topics\":{\"orders\":{\"messages\":2,\"last_offset\":2}}}");
}
