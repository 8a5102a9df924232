#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "wire/protocol.hpp"

namespace {

wire::Result<wire::AnyMessage> round_trip(const wire::AnyMessage& message) {
  auto frames = wire::encode(message);
  std::string_view views[] = {frames.tag, frames.command, frames.body};
  return wire::decode(views);
}

std::vector<wire::AnyMessage> samples() {
  wire::Publish publish{7, 42, {}};
  publish.messages.push_back({"0192-a", "orders", "customer-1", {{"trace", "abc"}}, "payload"});
  publish.messages.push_back({"0192-b", "orders", "", {}, std::string("\0\xff\x01", 3)});
  wire::Messages messages{9, "orders", 3, 5, {}};
  messages.messages.push_back({1, 1700000000000, "0192-a", "customer-1", {{"h", "v"}}, "x"});
  return {
      wire::Hello{"producer-a", 0, "9f0c5d2e7b1a4c3d8e6f0a1b2c3d4e5f", 7},
      wire::Hello{"tool", 0, "", 0},
      wire::Hello{"multi-relay", wire::kHelloOneOfSeveral, "origin-7", 3},
      wire::Hello{"multi-relay", wire::kHelloOneOfSeveral | wire::kHelloWithId, "origin-8", 4,
                  (1ull << 63) | 5},
      wire::Welcome{12, 1 << 20, 5000, "broker"},
      wire::Welcome{12, 1 << 20, 5000, "broker", 1, 2, 3, 4, 5, 6, 7, 8, (1ull << 63) | 5},
      wire::welcome_for(13, 1 << 20, "broker", wire::Limits{}),
      publish,
      wire::Ack{42,
                {{wire::AckStatus::stored, 1, ""},
                 {wire::AckStatus::duplicate, 1, ""},
                 {wire::AckStatus::conflict, 3, "payload differs"},
                 {wire::AckStatus::rejected, 0, "too large"}}},
      wire::Fetch{3, "orders", "billing", 0, true, 100, 1 << 20, 250},
      messages,
      wire::CommitOffset{4, "orders", "billing", 17},
      wire::OffsetCommitted{4, "orders", "billing", 17},
      wire::Ping{99},
      wire::Pong{99},
      wire::StatsRequest{5},
      wire::StatsReply{5, {{"stored", 10}, {"malformed", 2}}, {{"orders", 10, 10}}},
      wire::ErrorReply{42, wire::ErrorCode::session_failed, "send HELLO again"},
      wire::ErrorReply{0, wire::ErrorCode::stale_epoch, "lease epoch 3 is older than 4"},
      wire::Resume{14, 13, 42},
      wire::Resumed{13,
                    {wire::Ack{42, {{wire::AckStatus::stored, 1, ""}}},
                     wire::Ack{43, {{wire::AckStatus::rejected, 0, "too large"}}}}},
      wire::Resumed{13, {}},
  };
}

}  // namespace

TEST_CASE("every command survives an encode/decode round trip") {
  for (const auto& message : samples()) {
    auto decoded = round_trip(message);
    INFO(wire::command_name(wire::command_of(message)));
    REQUIRE(decoded.ok());
    CHECK(decoded.value() == message);
  }
}

TEST_CASE("the tag frame is OBX plus the version, little-endian fields follow") {
  auto frames = wire::encode(wire::Ping{0x0102030405060708ull});
  CHECK(frames.tag == std::string("OBX\x02", 4));
  CHECK(frames.command == std::string("\x09", 1));
  CHECK(frames.body == std::string("\x08\x07\x06\x05\x04\x03\x02\x01", 8));
}

TEST_CASE("a publish body built incrementally equals the encoded Publish") {
  wire::Publish publish{1, 2, {{"m1", "t", "k", {}, "p1"}, {"m2", "t", "", {{"a", "b"}}, "p2"}}};
  std::string body;
  wire::begin_publish_body(body, 1, 2);
  for (const auto& m : publish.messages) {
    wire::append_publish_message(body, m.msg_id, m.topic, m.key, m.headers, m.payload);
  }
  wire::finish_publish_body(body, 2);
  CHECK(body == wire::encode_body(publish));
}

TEST_CASE("frames with the wrong shape give clear errors") {
  auto frames = wire::encode(wire::Ping{1});
  SECTION("frame count") {
    std::vector<std::string_view> two = {frames.tag, frames.command};
    auto decoded = wire::decode(two);
    REQUIRE_FALSE(decoded.ok());
    CHECK(decoded.error().code == wire::ErrorCode::bad_frame_count);
    std::vector<std::string_view> none;
    CHECK(wire::decode(none).error().code == wire::ErrorCode::bad_frame_count);
  }
  SECTION("foreign tag and unknown version") {
    std::string_view foreign[] = {"HTTP", frames.command, frames.body};
    CHECK(wire::decode(foreign).error().code == wire::ErrorCode::bad_tag);
    auto future = wire::encode_tag(3);
    std::string_view newer[] = {future, frames.command, frames.body};
    auto decoded = wire::decode(newer);
    CHECK(decoded.error().code == wire::ErrorCode::unsupported_version);
    CHECK_THAT(decoded.error().message, Catch::Contains("version 3"));
    CHECK_THAT(decoded.error().message, Catch::Contains("speaks version 2"));
    auto first = wire::encode_tag(1);
    std::string_view older[] = {first, frames.command, frames.body};
    CHECK(wire::decode(older).error().code == wire::ErrorCode::unsupported_version);
  }
  SECTION("unknown command") {
    std::string_view unknown[] = {frames.tag, "\x7f", frames.body};
    CHECK(wire::decode(unknown).error().code == wire::ErrorCode::unknown_command);
    std::string_view empty[] = {frames.tag, "", frames.body};
    CHECK(wire::decode(empty).error().code == wire::ErrorCode::unknown_command);
  }
  SECTION("truncated and trailing bodies") {
    std::string short_body = frames.body.substr(0, 5);
    std::string_view truncated[] = {frames.tag, frames.command, short_body};
    CHECK(wire::decode(truncated).error().code == wire::ErrorCode::truncated);
    std::string long_body = frames.body + "x";
    std::string_view trailing[] = {frames.tag, frames.command, long_body};
    CHECK(wire::decode(trailing).error().code == wire::ErrorCode::trailing_bytes);
  }
}

TEST_CASE("absurd counts and lengths are refused before any allocation") {
  std::string body;
  wire::begin_publish_body(body, 1, 1);
  wire::finish_publish_body(body, 0xffffffffu);
  auto decoded = wire::decode_body(wire::Command::publish, body);
  REQUIRE_FALSE(decoded.ok());
  CHECK(decoded.error().code == wire::ErrorCode::limit_exceeded);

  wire::Limits small;
  small.max_batch_messages = 1'000'000;
  decoded = wire::decode_body(wire::Command::publish, body, small);
  CHECK(decoded.error().code == wire::ErrorCode::limit_exceeded);
  small.max_batch_messages = 0xffffffffu;
  decoded = wire::decode_body(wire::Command::publish, body, small);
  CHECK(decoded.error().code == wire::ErrorCode::truncated);

  wire::Publish big{1, 1, {{"m", "t", "", {}, std::string(100, 'x')}}};
  wire::Limits tiny;
  tiny.max_payload_bytes = 99;
  decoded = wire::decode_body(wire::Command::publish, wire::encode_body(big), tiny);
  REQUIRE_FALSE(decoded.ok());
  CHECK(decoded.error().code == wire::ErrorCode::limit_exceeded);
  CHECK_THAT(decoded.error().message, Catch::Contains("payload"));
}

TEST_CASE("a RESUMED whose ack count cannot fit is truncated, not allocated") {
  std::string body = wire::encode_body(wire::Resumed{1, {}});
  body[8] = '\xff';  // the ack count's low byte: 255 ACKs announced, none present
  auto decoded = wire::decode_body(wire::Command::resumed, body);
  REQUIRE_FALSE(decoded.ok());
  CHECK(decoded.error().code == wire::ErrorCode::truncated);
  CHECK_THAT(decoded.error().message, Catch::Contains("RESUMED"));
}

TEST_CASE("unknown ack status and fetch flags are invalid values") {
  auto body = wire::encode_body(wire::Ack{1, {{wire::AckStatus::stored, 1, ""}}});
  body[12] = 9;
  CHECK(wire::decode_body(wire::Command::ack, body).error().code == wire::ErrorCode::invalid_value);
  auto fetch = wire::encode_body(wire::Fetch{1, "t", "", 0, false, 1, 0, 0});
  fetch[8 + 3 + 2 + 8] = 4;
  CHECK(wire::decode_body(wire::Command::fetch, fetch).error().code ==
        wire::ErrorCode::invalid_value);
}

TEST_CASE("the zero-copy PUBLISH view sees the same fields as the owning decoder") {
  wire::Publish publish{
      3, 4, {{"m1", "orders", "k1", {{"a", "1"}, {"b", "2"}}, "p1"}, {"m2", "orders", "", {}, ""}}};
  auto body = wire::encode_body(publish);
  auto view = wire::decode_publish_view(body);
  REQUIRE(view.ok());
  CHECK(view->session_id == 3);
  CHECK(view->batch_id == 4);
  REQUIRE(view->messages.size() == 2);
  CHECK(view->messages[0].msg_id == "m1");
  CHECK(view->messages[0].key == "k1");
  CHECK(view->messages[0].payload == "p1");
  auto headers = wire::decode_header_block(view->messages[0].headers);
  REQUIRE(headers.ok());
  CHECK(*headers == publish.messages[0].headers);
  CHECK(view->messages[0].headers == wire::encode_header_block(publish.messages[0].headers));
  CHECK(wire::decode_header_block(view->messages[1].headers)->empty());
  body.pop_back();
  CHECK(wire::decode_publish_view(body).error().code == wire::ErrorCode::truncated);
}

TEST_CASE("WELCOME announces the decoder's limits, and the size formulas match the encoder") {
  wire::Limits limits;
  limits.max_key_bytes = 1234;
  limits.max_body_bytes = std::size_t{8} << 30;  // above u32: announced as the u32 maximum
  auto welcome = wire::welcome_for(1, 5000, "b", limits);
  CHECK(welcome.max_message_bytes == 5000);
  CHECK(welcome.max_key_bytes == 1234);
  CHECK(welcome.max_body_bytes == UINT32_MAX);
  CHECK(welcome.max_msg_id_bytes == limits.max_msg_id_bytes);
  CHECK(welcome.max_header_name_bytes == limits.max_msg_id_bytes);
  CHECK(welcome.max_headers == limits.max_headers);
  CHECK(welcome.max_header_value_bytes == limits.max_header_value_bytes);
  CHECK(welcome.max_payload_bytes == limits.max_payload_bytes);

  std::string body;
  wire::begin_publish_body(body, 1, 2);
  std::vector<wire::Header> headers{{"trace", "abc"}, {"h", ""}};
  wire::append_publish_message(body, "id", "orders", "key", headers, "payload");
  CHECK(body.size() ==
        wire::kPublishFixedBytes +
            wire::publish_message_bytes(2, 6, 3, wire::header_block_bytes(2, 5 + 3 + 1), 7));
}

TEST_CASE("HELLO of version 2: flags, producer, origin, lease epoch") {
  auto body = wire::encode_body(wire::Hello{"p", 0, "o1", 0x0102030405060708ull});
  CHECK(body == std::string("\0\0\0\0"
                            "\x01\0p"
                            "\x02\0o1"
                            "\x08\x07\x06\x05\x04\x03\x02\x01",
                            4 + 3 + 4 + 8));
  // Flag bit 0, one of several sessions on the connection, needs an origin;
  // bit 1 needs a hello_id after the epoch (below); the other bits are reserved.
  auto decode_flags = [](std::uint32_t flags, const std::string& origin) {
    auto hello = wire::encode_body(wire::Hello{"p", 0, origin, 1});
    for (int i = 0; i < 4; ++i)
      hello[static_cast<std::size_t>(i)] = static_cast<char>(flags >> (8 * i));
    return wire::decode_body(wire::Command::hello, hello);
  };
  REQUIRE(decode_flags(1, "o1").ok());
  CHECK(std::get<wire::Hello>(decode_flags(1, "o1").value()).flags == wire::kHelloOneOfSeveral);
  for (auto [flags, origin] :
       {std::pair<std::uint32_t, std::string>{1, ""}, {4, "o1"}, {0x80000001u, "o1"}}) {
    auto refused = decode_flags(flags, origin);
    REQUIRE_FALSE(refused.ok());
    CHECK(refused.error().code == wire::ErrorCode::invalid_value);
  }
  // A version 1 body (no origin, no epoch) is truncated for version 2.
  auto old = wire::decode_body(wire::Command::hello, std::string("\0\0\0\0\x01\0p", 7));
  REQUIRE_FALSE(old.ok());
  CHECK(old.error().code == wire::ErrorCode::truncated);
}

TEST_CASE("HELLO with flag bit 1 carries a hello_id, and its WELCOME names it") {
  wire::Hello hello{"p", wire::kHelloOneOfSeveral | wire::kHelloWithId, "o1", 1, 0x0a0b};
  auto body = wire::encode_body(hello);
  CHECK(body.size() == 4 + 3 + 4 + 8 + 8);
  CHECK(body.substr(body.size() - 8) == std::string("\x0b\x0a\0\0\0\0\0\0", 8));
  // Without bit 1 the id is not on the wire (the body is as before).
  CHECK(wire::encode_body(wire::Hello{"p", wire::kHelloOneOfSeveral, "o1", 1, 0x0a0b}).size() ==
        4 + 3 + 4 + 8);
  // Bit 1 without the id is truncated; an id of 0 is refused.
  auto without_id = body.substr(0, body.size() - 8);
  auto truncated = wire::decode_body(wire::Command::hello, without_id);
  REQUIRE_FALSE(truncated.ok());
  CHECK(truncated.error().code == wire::ErrorCode::truncated);
  auto zero = wire::decode_body(wire::Command::hello, without_id + std::string(8, '\0'));
  REQUIRE_FALSE(zero.ok());
  CHECK(zero.error().code == wire::ErrorCode::invalid_value);

  // A WELCOME without hello_id (to a HELLO without bit 1, or from an older
  // broker) decodes with 0; with it, the id; anything else after the limits
  // is malformed.
  auto plain = wire::encode_body(wire::welcome_for(3, 1 << 20, "b", wire::Limits{}));
  auto decoded = wire::decode_body(wire::Command::welcome, plain);
  REQUIRE(decoded.ok());
  CHECK(std::get<wire::Welcome>(decoded.value()).hello_id == 0);
  auto named = wire::welcome_for(3, 1 << 20, "b", wire::Limits{});
  named.hello_id = 0x0a0b;
  auto with_id = wire::encode_body(named);
  CHECK(with_id.size() == plain.size() + 8);
  decoded = wire::decode_body(wire::Command::welcome, with_id);
  REQUIRE(decoded.ok());
  CHECK(std::get<wire::Welcome>(decoded.value()).hello_id == 0x0a0b);
  for (std::size_t extra : {1, 7, 9}) {
    INFO(extra << " bytes after the limits");
    CHECK_FALSE(wire::decode_body(wire::Command::welcome, plain + std::string(extra, '\x01')).ok());
  }
  CHECK_FALSE(wire::decode_body(wire::Command::welcome, plain + std::string(8, '\0')).ok());
}

TEST_CASE("peeking at a frame reads the fields at their documented places") {
  // PUBLISH: session id at bytes 0-7, batch id at bytes 8-15, little-endian.
  auto body = wire::encode_body(wire::Publish{0x0102030405060708, 0x1112131415161718, {}});
  CHECK(wire::peek_publish_session_id(body) == 0x0102030405060708u);
  CHECK(wire::peek_request_id(wire::Command::publish, body) == 0x1112131415161718u);
  CHECK(wire::peek_publish_session_id(body.substr(0, 8)) == 0x0102030405060708u);
  CHECK_FALSE(wire::peek_publish_session_id(body.substr(0, 7)).has_value());
  CHECK(wire::peek_request_id(wire::Command::publish, body.substr(0, 15)) == 0);

  // The tag's version is readable whatever it is; a foreign frame has none.
  CHECK(wire::peek_tag_version(wire::encode_tag()) == wire::kProtocolVersion);
  CHECK(wire::peek_tag_version(wire::encode_tag(1)) == 1);
  CHECK_FALSE(wire::peek_tag_version("OBX").has_value());
  CHECK_FALSE(wire::peek_tag_version("ABC\x02").has_value());

  auto frames = wire::encode(wire::Publish{1, 2, {}});
  CHECK(wire::is_command_frame(frames.command, wire::Command::publish));
  CHECK_FALSE(wire::is_command_frame(frames.command, wire::Command::fetch));
  CHECK_FALSE(wire::is_command_frame(frames.command + "x", wire::Command::publish));

  // The ACK size formula is the encoder's.
  wire::Ack ack{9, {{wire::AckStatus::stored, 1, ""}, {wire::AckStatus::rejected, 0, "too large"}}};
  CHECK(wire::ack_body_bytes(ack) == wire::encode_body(ack).size());
  CHECK(wire::ack_body_bytes(wire::Ack{9, {}}) == wire::kAckFixedBytes);
}
