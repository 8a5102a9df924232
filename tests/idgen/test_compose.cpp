#include <random>

#include <catch2/catch.hpp>

#include "idgen/snowflake.hpp"

using idgen::Layout;
using idgen::Parts;

namespace {

std::vector<Layout> all_layouts() {
  return {Layout::standard(),
          Layout::snowflake(),
          Layout::sonyflake(),
          Layout::parse("time=50,worker=5,seq=8,tick=3ms"),
          Layout::parse("time=30,worker=0,seq=33,order=tsw"),
          Layout::parse("time=31,worker=32,seq=0")};
}

}  // namespace

TEST_CASE("decode(compose(parts)) == parts for every field, at the edges and at random",
          "[idgen][compose]") {
  std::mt19937_64 random(12345);
  for (const Layout& layout : all_layouts()) {
    INFO("layout " << layout.spec());
    const std::int64_t last_tick =
        (layout.expires_unix_ms() - layout.epoch_unix_ms) / layout.tick_ms - 1;
    const std::vector<std::int64_t> ticks = {0, 1, last_tick / 2, last_tick - 1, last_tick};
    const std::vector<std::uint32_t> workers = {
        0, std::min<std::uint32_t>(1, layout.max_worker_id()), layout.max_worker_id()};
    const std::vector<std::uint64_t> sequences = {
        0, std::min<std::uint64_t>(1, layout.max_sequence()), layout.max_sequence()};
    for (auto tick : ticks) {
      for (auto worker : workers) {
        for (auto sequence : sequences) {
          const Parts parts{layout.epoch_unix_ms + tick * layout.tick_ms, worker, sequence};
          const std::uint64_t id = idgen::compose(layout, parts);
          CHECK(id >> 63 == 0);
          CHECK(idgen::decode(layout, id) == parts);
        }
      }
    }
    for (int i = 0; i < 10'000; ++i) {
      const auto tick =
          static_cast<std::int64_t>(random() % static_cast<std::uint64_t>(last_tick + 1));
      const Parts parts{layout.epoch_unix_ms + tick * layout.tick_ms,
                        static_cast<std::uint32_t>(random() & layout.max_worker_id()),
                        random() & layout.max_sequence()};
      REQUIRE(idgen::decode(layout, idgen::compose(layout, parts)) == parts);
      // And the other way round: every 63-bit value decodes and recomposes.
      const std::uint64_t id = random() >> 1;
      REQUIRE(idgen::compose(layout, idgen::decode(layout, id)) == id);
    }
  }
}

TEST_CASE("ids order by time first", "[idgen][compose]") {
  const Layout layout = Layout::standard();
  const auto early = idgen::compose(layout, {layout.epoch_unix_ms + 5, 1023, 4095});
  const auto later = idgen::compose(layout, {layout.epoch_unix_ms + 6, 0, 0});
  CHECK(early < later);
}

TEST_CASE("the standard layout places time, worker and sequence as documented",
          "[idgen][compose]") {
  const Layout layout = Layout::standard();
  CHECK(idgen::compose(layout, {layout.epoch_unix_ms + 1, 0, 0}) == (std::uint64_t{1} << 22));
  CHECK(idgen::compose(layout, {layout.epoch_unix_ms, 1, 0}) == (std::uint64_t{1} << 12));
  CHECK(idgen::compose(layout, {layout.epoch_unix_ms, 0, 1}) == 1);
  // Sonyflake: time | sequence | machine, 10 ms ticks.
  const Layout sony = Layout::sonyflake();
  CHECK(idgen::compose(sony, {sony.epoch_unix_ms + 10, 0, 0}) == (std::uint64_t{1} << 24));
  CHECK(idgen::compose(sony, {sony.epoch_unix_ms, 0, 1}) == (std::uint64_t{1} << 16));
  CHECK(idgen::compose(sony, {sony.epoch_unix_ms, 1, 0}) == 1);
}

TEST_CASE("compose names the field that does not fit", "[idgen][compose]") {
  const Layout layout = Layout::standard();
  const std::int64_t epoch = layout.epoch_unix_ms;
  CHECK_THROWS_WITH(idgen::compose(layout, {epoch - 1, 0, 0}),
                    Catch::Contains("before the layout's epoch"));
  CHECK_THROWS_WITH(idgen::compose(layout, {layout.expires_unix_ms(), 0, 0}),
                    Catch::Contains("expires"));
  CHECK_THROWS_WITH(idgen::compose(layout, {epoch, 1024, 0}),
                    Catch::Contains("worker 1024 is out of range 0..1023"));
  CHECK_THROWS_WITH(idgen::compose(layout, {epoch, 0, 4096}),
                    Catch::Contains("sequence 4096 is out of range 0..4095"));
  CHECK_THROWS_WITH(
      idgen::compose(Layout::sonyflake(), {Layout::sonyflake().epoch_unix_ms + 5, 0, 0}),
      Catch::Contains("tick boundary"));
  CHECK_THROWS_AS(idgen::decode(layout, std::uint64_t{1} << 63), idgen::Error);
}
