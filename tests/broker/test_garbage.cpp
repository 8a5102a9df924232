// Garbage from many connections at once: random bytes, truncated frames,
// absurd lengths and counts, unknown commands and versions, empty messages.
// Each is answered with ERROR (or its reply dropped) and counted in
// `malformed`; the broker keeps serving and its memory stays bounded.
#include <catch2/catch.hpp>

#include <random>

#include "broker_process.hpp"
#include "wire/zmq_io.hpp"

using namespace broker_test;

namespace {

// Every kind produced here is malformed by construction.
std::vector<std::string> garbage(std::mt19937_64& rng, int kind) {
  auto random_bytes = [&](std::size_t size) {
    std::string bytes(size, '\0');
    for (auto& c : bytes) c = static_cast<char>(rng());
    return bytes;
  };
  const std::string publish(1, '\x03');
  switch (kind % 9) {
    case 0: {  // random frames without a protocol tag
      std::vector<std::string> frames(1 + rng() % 5);
      for (auto& frame : frames) frame = random_bytes(rng() % 100);
      frames[0] = "X" + frames[0];
      return frames;
    }
    case 1:
      return {""};  // an empty message
    case 2:
      return {wire::encode_tag(), std::string(1, '\x7f'), random_bytes(10)};
    case 3:
      return {wire::encode_tag(9), std::string(1, '\x09'), random_bytes(8)};
    case 4: {  // absurd message count
      std::string body;
      wire::begin_publish_body(body, 1, 1);
      wire::finish_publish_body(body, 0xffffffffu);
      return {wire::encode_tag(), publish, body};
    }
    case 5: {  // absurd payload length
      std::string body;
      wire::begin_publish_body(body, 1, 1);
      wire::append_publish_message(body, "m", "t", "", {}, "");
      body.resize(body.size() - 4);
      body += std::string("\xff\xff\xff\x7f", 4);
      wire::finish_publish_body(body, 1);
      return {wire::encode_tag(), publish, body};
    }
    case 6: {  // truncated body of a valid message
      auto frames = wire::encode(wire::Fetch{1, "orders", "g", 1, false, 10, 0, 0});
      return {frames.tag, frames.command, frames.body.substr(0, 1 + rng() % 20)};
    }
    case 7: {  // too many frames
      auto frames = wire::encode(wire::Ping{1});
      return {frames.tag, frames.command, frames.body, "extra"};
    }
    default:  // a command only the broker sends
      return {wire::encode_tag(), std::string(1, '\x04'), random_bytes(3)};
  }
}

bool send_all(zmq::socket_t& socket, const std::vector<std::string>& frames) {
  for (std::size_t i = 0; i < frames.size(); ++i) {
    auto flags = i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none;
    if (!socket.send(zmq::buffer(frames[i].data(), frames[i].size()), flags)) return false;
  }
  return true;
}

}  // namespace

TEST_CASE("garbage from many connections is counted and the broker keeps serving") {
  test_support::TempDir dir("broker-garbage");
  BrokerProcess broker(dir.path(), dir / "broker.db");
  auto producer = connect(broker.endpoint());
  auto observer = std::make_unique<broker::Client>(broker.endpoint());
  std::mt19937_64 rng(42);
  // Reduced in the sanitizer trees: 8 connections of 100 messages a wave.
  const int kConnections = test_support::scaled(24, 8);
  const int kPerConnection = test_support::scaled(250, 100);

  zmq::context_t context(1);
  long resident_after_first_wave = 0;
  std::uint64_t sent = 0;
  std::uint64_t batch_id = 0;
  for (int wave = 0; wave < 3; ++wave) {
    std::vector<zmq::socket_t> sockets;
    for (int c = 0; c < kConnections; ++c) {
      sockets.emplace_back(context, zmq::socket_type::dealer);
      sockets.back().set(zmq::sockopt::linger, 0);
      sockets.back().connect(broker.endpoint());
    }
    std::uint64_t errors = 0;
    std::uint64_t other_replies = 0;
    for (int i = 0; i < kPerConnection; ++i) {
      for (auto& socket : sockets) {
        REQUIRE(send_all(socket, garbage(rng, static_cast<int>(rng() % 9))));
        ++sent;
      }
      // Valid traffic in between keeps working.
      if (i % 50 == 0) {
        auto id = "valid-" + std::to_string(wave) + "-" + std::to_string(i);
        auto ack = producer->publish(++batch_id, std::vector{message(id, "ok")}, 20s);
        REQUIRE(ack.ok());
        CHECK(ack->entries[0].status == wire::AckStatus::stored);
      }
    }
    // Every garbage message is counted.
    REQUIRE(test_support::wait_until(
        [&] {
          auto stats = observer->stats(20s);
          return stats.ok() && counter(*stats, "malformed") == sent;
        },
        60s));
    // Replies that came back are ERRORs with a code and a message.
    for (auto& socket : sockets) {
      while (auto reply = wire::receive_message(socket, zmq::recv_flags::dontwait)) {
        REQUIRE(reply->ok());
        auto* error = std::get_if<wire::ErrorReply>(&reply->value());
        if (error == nullptr) {
          ++other_replies;
          continue;
        }
        CHECK(error->code != wire::ErrorCode::none);
        CHECK_FALSE(error->message.empty());
        ++errors;
      }
    }
    CHECK(other_replies == 0);
    CHECK(errors > 0);
    REQUIRE(producer->ping(20s).ok());
    if (wave == 0) resident_after_first_wave = broker.resident_kib();
  }
  auto resident_now = broker.resident_kib();
  INFO("resident after wave 1: " << resident_after_first_wave
                                 << " KiB, after wave 3: " << resident_now << " KiB");
  REQUIRE(resident_after_first_wave > 0);
  CHECK(resident_now < resident_after_first_wave + 32 * 1024);
  CHECK(broker.process().running());
  CHECK(broker.stop().code == 0);
}
