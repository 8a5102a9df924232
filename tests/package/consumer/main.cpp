// A tiny application using the installed (or add_subdirectory'd) toolkit the
// way a user's project would. argv[1] is a scratch directory it may write to.
// Exits 0 when everything it checks holds.
#include <cstdio>
#include <filesystem>
#include <string>

#include <idgen/encoding.hpp>
#include <idgen/snowflake.hpp>
#include <idgen/uuid.hpp>
#include <outbox/outbox.hpp>
#include <outbox/relay_store.hpp>
#ifdef CONSUMER_WITH_REDIS_INBOX
#include <outbox/redis_inbox.hpp>
#endif

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: consumer SCRATCH_DIR\n");
    return 2;
  }
  try {
    idgen::GeneratorOptions options;
    options.state_file = std::filesystem::path(argv[1]) / "consumer.idgen-state";
    idgen::Generator generator(idgen::Layout::parse("standard"), 42, options);
    std::uint64_t previous = 0;
    for (int i = 0; i < 10'000; ++i) {
      const std::uint64_t id = generator.next();
      if (id <= previous) {
        std::fprintf(stderr, "ids out of order\n");
        return 1;
      }
      previous = id;
    }
    const idgen::Parts parts = idgen::decode(generator.layout(), previous);
    if (parts.worker != 42 || idgen::compose(generator.layout(), parts) != previous) {
      std::fprintf(stderr, "decode/compose mismatch\n");
      return 1;
    }
    const std::string text = idgen::encode(previous, idgen::Encoding::base62);
    if (idgen::decode(text, idgen::Encoding::base62) != previous) {
      std::fprintf(stderr, "base62 round trip failed\n");
      return 1;
    }
    idgen::UuidV7Generator uuids;
    const std::string uuid = idgen::to_string(uuids.next());
    if (uuid.size() != 36 || uuid[14] != '7') {
      std::fprintf(stderr, "bad UUID v7 %s\n", uuid.c_str());
      return 1;
    }
    if (!std::filesystem::exists(*options.state_file)) {
      std::fprintf(stderr, "state file not written\n");
      return 1;
    }
    // One business row and one message in one transaction, seen by the relay side.
    auto box = outbox::Outbox::open(std::filesystem::path(argv[1]) / "consumer-app.db");
    if (sqlite3_exec(box.db(), "CREATE TABLE orders(id INTEGER PRIMARY KEY, item TEXT)", nullptr,
                     nullptr, nullptr) != SQLITE_OK) {
      std::fprintf(stderr, "create table: %s\n", sqlite3_errmsg(box.db()));
      return 1;
    }
    outbox::Transaction tx(box);
    if (sqlite3_exec(tx.db(), "INSERT INTO orders(item) VALUES ('book')", nullptr, nullptr,
                     nullptr) != SQLITE_OK) {
      std::fprintf(stderr, "insert: %s\n", sqlite3_errmsg(tx.db()));
      return 1;
    }
    outbox::Message message;
    message.topic = "orders";
    message.payload = "{\"item\":\"book\"}";
    const auto enqueued = tx.enqueue(message);
    tx.commit();
    auto relay_side = outbox::RelayStore::open(std::filesystem::path(argv[1]) / "consumer-app.db");
    if (!enqueued.inserted() || relay_side.stats().pending != 1) {
      std::fprintf(stderr, "outbox message not pending after commit\n");
      return 1;
    }
#ifdef CONSUMER_WITH_REDIS_INBOX
    // Links hiredis through outbox::redis_inbox; no Redis listens on this socket.
    outbox::RedisInboxOptions redis_options;
    redis_options.endpoint =
        "unix://" + (std::filesystem::absolute(argv[1]) / "no-redis.sock").string();
    try {
      outbox::RedisInbox::connect(redis_options);
      std::fprintf(stderr, "connected to a Redis that does not exist\n");
      return 1;
    } catch (const outbox::RedisError& error) {
      std::printf("redis inbox linked: %s\n", error.what());
    }
#endif
    std::printf("consumer ok: id %llu (%s), uuid %s\n", static_cast<unsigned long long>(previous),
                text.c_str(), uuid.c_str());
    return 0;
  } catch (const idgen::Error& error) {
    std::fprintf(stderr, "consumer: %s\n", error.what());
    return 1;
  } catch (const outbox::Error& error) {
    std::fprintf(stderr, "consumer: %s\n", error.what());
    return 1;
  }
}
