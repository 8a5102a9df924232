// Thousands of random and mutated frames: each must decode to a value or come
// back as a clean Error (a code and a message), never crash or throw.
#include <catch2/catch.hpp>

#include <algorithm>

#include <random>
#include <string>
#include <vector>

#include "wire/protocol.hpp"

namespace {

std::vector<wire::Frames> seeds() {
  std::vector<wire::Frames> result;
  wire::Publish publish{7, 42, {}};
  for (int i = 0; i < 4; ++i) {
    publish.messages.push_back({"id-" + std::to_string(i),
                                "orders",
                                "k",
                                {{"h", "v"}},
                                std::string(static_cast<std::size_t>(i) * 10, 'p')});
  }
  result.push_back(wire::encode(publish));
  result.push_back(wire::encode(wire::Hello{"p", 0, "origin", 3}));
  result.push_back(wire::encode(wire::Ack{1, {{wire::AckStatus::rejected, 0, "r"}}}));
  result.push_back(wire::encode(wire::Fetch{1, "t", "g", 5, true, 10, 0, 100}));
  wire::Messages messages{1, "t", 2, 2, {{1, 5, "m", "k", {{"a", "b"}}, "payload"}}};
  result.push_back(wire::encode(messages));
  result.push_back(wire::encode(wire::CommitOffset{1, "t", "g", 3}));
  result.push_back(wire::encode(wire::StatsReply{1, {{"stored", 1}}, {{"t", 1, 1}}}));
  result.push_back(wire::encode(wire::ErrorReply{1, wire::ErrorCode::busy, "later"}));
  result.push_back(wire::encode(wire::Welcome{1, 2, 3, "b"}));
  return result;
}

void require_clean(const std::vector<std::string>& frames, const wire::Limits& limits) {
  std::vector<std::string_view> views(frames.begin(), frames.end());
  wire::Result<wire::AnyMessage> decoded = wire::Error{};
  REQUIRE_NOTHROW(decoded = wire::decode(views, limits));
  if (!decoded.ok()) {
    REQUIRE(decoded.error().code != wire::ErrorCode::none);
    REQUIRE_FALSE(decoded.error().message.empty());
  }
  if (frames.size() == 3 && frames[1] == std::string(1, '\x03')) {
    // The zero-copy PUBLISH decoder must agree with the owning one.
    // A field above its limit refuses one message in the view and fails the
    // owning decode with limit_exceeded.
    auto view = wire::decode_publish_view(frames[2], limits);
    auto owning = wire::decode_body(wire::Command::publish, frames[2], limits);
    bool violations = view.ok() && std::any_of(view->messages.begin(), view->messages.end(),
                                               [](const auto& m) { return !m.violation.empty(); });
    if (violations) {
      REQUIRE_FALSE(owning.ok());
      REQUIRE(owning.error().code == wire::ErrorCode::limit_exceeded);
    } else {
      REQUIRE(view.ok() == owning.ok());
    }
  }
  if (decoded.ok()) {
    // Whatever is accepted must encode back to the same value.
    auto again = wire::encode(decoded.value());
    std::string_view round[] = {again.tag, again.command, again.body};
    auto second = wire::decode(round, limits);
    REQUIRE(second.ok());
    REQUIRE(second.value() == decoded.value());
  }
}

}  // namespace

TEST_CASE("random frames decode to a clean error") {
  std::mt19937_64 rng(20261125);
  wire::Limits limits;
  std::uniform_int_distribution<int> byte(0, 255);
  std::size_t errors = 0;
  for (int round = 0; round < 5000; ++round) {
    std::vector<std::string> frames(rng() % 5);
    for (auto& frame : frames) {
      frame.resize(rng() % 64);
      for (auto& c : frame) c = static_cast<char>(byte(rng));
    }
    // Half the time use a valid tag and command so bodies get exercised.
    if (frames.size() == 3 && (round % 2) == 0) {
      frames[0] = wire::encode_tag();
      frames[1] = std::string(1, static_cast<char>(1 + rng() % 13));
    }
    std::vector<std::string_view> views(frames.begin(), frames.end());
    if (!wire::decode(views, limits).ok()) ++errors;
    require_clean(frames, limits);
  }
  CHECK(errors > 4000);
}

TEST_CASE("mutated valid frames decode to a value or a clean error") {
  std::mt19937_64 rng(7);
  auto originals = seeds();
  wire::Limits limits;
  limits.max_payload_bytes = 1000;
  for (int round = 0; round < 20000; ++round) {
    const auto& seed = originals[rng() % originals.size()];
    std::vector<std::string> frames = {seed.tag, seed.command, seed.body};
    auto& body = frames[2];
    switch (rng() % 6) {
      case 0:  // flip bytes
        for (int i = 0; i < 1 + static_cast<int>(rng() % 4) && !body.empty(); ++i) {
          body[rng() % body.size()] = static_cast<char>(rng());
        }
        break;
      case 1:  // truncate
        body.resize(body.empty() ? 0 : rng() % body.size());
        break;
      case 2:  // append garbage
        body.append(rng() % 16, static_cast<char>(rng()));
        break;
      case 3:  // absurd length or count at a random position
        if (body.size() >= 4) {
          auto at = rng() % (body.size() - 3);
          for (int i = 0; i < 4; ++i) body[at + i] = static_cast<char>(0xff);
        }
        break;
      case 4:  // wrong command for the body
        frames[1] = std::string(1, static_cast<char>(rng() % 16));
        break;
      default:  // wrong version or dropped frame
        if (rng() % 2) {
          frames[0][3] = static_cast<char>(rng());
        } else {
          frames.erase(frames.begin() + static_cast<long>(rng() % 3));
        }
        break;
    }
    require_clean(frames, limits);
  }
}
