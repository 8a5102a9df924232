#include <catch2/catch.hpp>

#include "format.hpp"

TEST_CASE("stats and messages print as one JSON object each") {
  wire::StoredMessage message{3, 5, "id", "key", {{"h", "v"}}, "text"};
  CHECK(broker::message_to_json("orders", message) ==
        "{\"topic\":\"orders\",\"offset\":3,\"msg_id\":\"id\",\"key\":\"key\",\"timestamp_ms\":5,"
        "\"headers\":{\"h\":\"v\"},\"payload\":\"text\"}");
  // Bytes that are not text are marked, so that every line parses as JSON.
  wire::StoredMessage binary{4, 6, "id", "\xff\xfe", {{"h", std::string("\x00\x01", 2)}}, "\xc0"};
  CHECK(broker::message_to_json("orders", binary) ==
        "{\"topic\":\"orders\",\"offset\":4,\"msg_id\":\"id\",\"key\":{\"base64\":\"//4=\"},"
        "\"timestamp_ms\":6,\"headers\":{\"h\":{\"base64\":\"AAE=\"}},"
        "\"payload\":{\"base64\":\"wA==\"}}");
  wire::StatsReply stats{1, {{"stored", 2}}, {{"orders", 2, 2}}};
  CHECK(broker::stats_to_json(stats) ==
        "{\"stored\":2,\"topics\":{\"orders\":{\"messages\":2,\"last_offset\":2}}}");
}

TEST_CASE("a header name sent twice appears twice in tail --json, as docs/protocol.md says") {
  wire::StoredMessage message{1, 2, "id", "", {{"h", "a"}, {"h", "b"}}, "p"};
  CHECK(broker::message_to_json("orders", message) ==
        "{\"topic\":\"orders\",\"offset\":1,\"msg_id\":\"id\",\"key\":\"\",\"timestamp_ms\":2,"
        "\"headers\":{\"h\":\"a\",\"h\":\"b\"},\"payload\":\"p\"}");
}
