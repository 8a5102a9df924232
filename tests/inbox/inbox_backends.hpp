// The two inbox implementations behind one test interface, so that one
// contract suite runs against both. A "store" names where the records live:
// sqlite:<path> or a Redis endpoint (redis://... or unix://...).
#pragma once

#include <stdexcept>
#include <string>
#include <utility>

#include "outbox/inbox.hpp"
#include "test_support.hpp"

#ifdef OUTBOX_REDIS_SERVER
#include "outbox/redis_inbox.hpp"
#include "redis_server.hpp"
#endif

namespace inbox_test {

// Calls visit(inbox) with an inbox opened on `store`; returns what it returns.
template <class Visitor>
auto with_inbox(const std::string& store, Visitor&& visit) {
  const std::string sqlite_prefix = "sqlite:";
  if (store.starts_with(sqlite_prefix)) {
    auto inbox = outbox::Inbox::open(store.substr(sqlite_prefix.size()));
    return std::forward<Visitor>(visit)(inbox);
  }
#ifdef OUTBOX_REDIS_SERVER
  outbox::RedisInboxOptions options;
  options.endpoint = store;
  auto inbox = outbox::RedisInbox::connect(options);
  return std::forward<Visitor>(visit)(inbox);
#else
  throw std::runtime_error("this build has no Redis inbox: " + store);
#endif
}

struct SqliteBackend {
  test_support::TempDir dir{"outbox-inbox"};

  std::string store() const { return "sqlite:" + (dir / "consumer.db").string(); }
  outbox::Inbox open() const { return outbox::Inbox::open(dir / "consumer.db"); }
};

#ifdef OUTBOX_REDIS_SERVER
struct RedisBackend {
  RedisServer server;

  std::string store() const { return server.endpoint(); }
  outbox::RedisInbox open() const {
    outbox::RedisInboxOptions options;
    options.endpoint = server.endpoint();
    return outbox::RedisInbox::connect(options);
  }
};
#define OUTBOX_INBOX_BACKENDS inbox_test::SqliteBackend, inbox_test::RedisBackend
#else
#define OUTBOX_INBOX_BACKENDS inbox_test::SqliteBackend
#endif

}  // namespace inbox_test
