#include <catch2/catch.hpp>

#include "format.hpp"

TEST_CASE("stats and messages print as one JSON object each") {
  wire::StoredMessage message{3, 5, "id", "key", {{"h", "v"}}, "text"};
  CHECK(broker::message_to_json("orders", message) ==
        "{\"topic\":\"orders\",\"offset\":3,\"msg_id\":\"id\",\"key\":\"key\",\"timestamp_ms\":5,"
        "\"headers\":{\"h\":\"v\"},\"payload\":\"text\"}");
  wire::StatsReply stats{1, {{"stored", 2}}, {{"orders", 2, 2}}};
  CHECK(broker::stats_to_json(stats) ==
        "{\"stored\":2,\"topics\":{\"orders\":{\"messages\":2,\"last_offset\":2}}}");
}
