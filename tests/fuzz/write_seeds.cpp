// Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/), so that
// each starts from valid inputs and mutates from there:
//   build/tests/bin/fuzz_write_seeds tests/fuzz/corpus
// The files are checked in; rerun after a protocol or format change.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_input.hpp"
#include "outbox/message.hpp"
#include "wire/protocol.hpp"

namespace {

std::filesystem::path root;

void write(const std::string& target, const std::string& name, const std::string& bytes) {
  auto directory = root / target;
  std::filesystem::create_directories(directory);
  std::ofstream out(directory / name, std::ios::binary | std::ios::trunc);
  out << bytes;
}

// One request as the fuzz targets read it: its frames (tag, command, body).
std::string request(const wire::AnyMessage& message) {
  auto frames = wire::encode(message);
  std::string out;
  fuzz::put_frames(out, {frames.tag, frames.command, frames.body});
  return out;
}

wire::Publish publish(std::uint64_t session, std::uint64_t batch, int first, int count) {
  wire::Publish batch_message{session, batch, {}};
  for (int i = first; i < first + count; ++i) {
    batch_message.messages.push_back({"msg-" + std::to_string(i),
                                      "orders",
                                      "key-" + std::to_string(i % 2),
                                      {{"traceparent", "00-abc-def-01"}},
                                      "payload " + std::to_string(i)});
  }
  return batch_message;
}

void wire_seeds() {
  int index = 0;
  auto add = [&](const wire::AnyMessage& message) {
    write("wire_decode", "message-" + std::to_string(index++), request(message));
  };
  add(wire::Hello{"relay", 0, "origin-1", 3});
  add(publish(1, 1, 0, 3));
  add(wire::Ack{1,
                {{wire::AckStatus::stored, 7, ""}, {wire::AckStatus::rejected, 0, "too_large"}}});
  add(wire::Fetch{5, "orders", "billing", 1, true, 100, 1 << 20, 0});
  add(wire::Messages{5, "orders", 3, 3, {{1, 1767225600000, "msg-0", "key-0", {}, "payload"}}});
  add(wire::CommitOffset{6, "orders", "billing", 2});
  add(wire::Ping{9});
  add(wire::StatsRequest{10});
  add(wire::StatsReply{10, {{"stored", 3}}, {{"orders", 3, 3}}});
  add(wire::ErrorReply{4, wire::ErrorCode::session_failed, "session failed"});
}

void broker_seeds() {
  // connection byte, then the request
  auto from = [](int connection, const wire::AnyMessage& message) {
    return std::string(1, static_cast<char>(connection)) + request(message);
  };
  write("broker_requests", "publish-fetch",
        from(0, wire::Hello{"relay", 0, "", 0}) + from(0, publish(1, 1, 0, 3)) +
            from(0, publish(1, 2, 2, 3)) +
            from(1, wire::Fetch{1, "orders", "", 1, false, 10, 0, 0}) +
            from(1, wire::CommitOffset{2, "orders", "billing", 2}) +
            from(1, wire::Fetch{3, "orders", "billing", 0, true, 10, 0, 0}));
  auto conflicting = publish(2, 1, 0, 2);
  conflicting.messages[0].payload = "another payload";
  write("broker_requests", "fenced-conflict",
        from(0, wire::Hello{"relay", 0, "origin-1", 5}) + from(0, publish(1, 1, 0, 2)) +
            from(1, wire::Hello{"relay", 0, "origin-1", 4}) +
            from(2, wire::Hello{"relay", 0, "origin-2", 1}) + from(2, conflicting) +
            from(2, wire::StatsRequest{7}) + from(0, wire::Ping{8}));
  write("broker_requests", "gap-and-garbage",
        from(0, wire::Hello{"relay", 0, "", 0}) + from(0, publish(1, 5, 0, 1)) +
            from(0, publish(1, 7, 1, 1)) + from(0, wire::Welcome{}) +
            std::string("\x01\x02\x03\x00OBX", 7));
}

void header_seeds() {
  write("outbox_headers", "two",
        outbox::encode_headers_blob({{"traceparent", "00-1-2-01"}, {"k", ""}}));
  write("outbox_headers", "empty-name", outbox::encode_headers_blob({{"", "value"}}));
}

void text_seeds() {
  const std::vector<std::string_view> values = {
      "1500ms",    "30s",          "15m",          "24h",  "7d",  "forever",
      "0",         "512k",         "1m",           "1GiB", "100", "tcp://127.0.0.1:7750",
      "tcp://*:*", "ipc:///tmp/x", "tcp://[::1]:1"};
  int index = 0;
  for (auto value : values)
    write("cli_values", "value-" + std::to_string(index++), std::string(value));
  write("cli_values", "config",
        "# relay\n[run]\ndb = \"app.db\"\nbroker = 'tcp://127.0.0.1:7750'\nlease = \"30s\"\n"
        "in-flight = 4\nverbose = true\ntopics = [\"a\", \"b\"]\nratio = 1.5\n");
  const std::vector<std::string_view> ids = {
      "1234567890123",
      "0x00000000499602d2",
      "0000001LY7VK",
      "000000014MS16",
      "standard",
      "sonyflake",
      "time=41,worker=10,seq=12,epoch=2026-01-01T00:00:00Z,tick=1ms,order=tsw",
      "time=39,worker=16,seq=8,epoch=1409529600000,tick=10ms",
      "0190f5c2-8a4b-7c3d-9e2f-0123456789ab",
      "crockford"};
  index = 0;
  for (auto id : ids) write("idgen_text", "text-" + std::to_string(index++), std::string(id));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_write_seeds <corpus directory>\n");
    return 2;
  }
  root = argv[1];
  wire_seeds();
  broker_seeds();
  header_seeds();
  text_seeds();
  return 0;
}
