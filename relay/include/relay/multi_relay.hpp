// Forwards every outbox database of a directory from one process and one
// thread, over a few shared broker connections (docs/architecture.md, "Many
// outboxes, one relay").
//
//   relay::MultiRelayConfig config;
//   config.directory = "/var/lib/tenants";
//   config.broker.endpoint = "tcp://127.0.0.1:7750";
//   relay::MultiRelay relay(config);
//   relay.run();            // until request_stop(), e.g. from a signal handler
//
// What run() does:
// - Lists the directory (not recursively) for files matching `glob`, and
//   watches it with inotify: a file that appears is picked up, one that goes
//   away is no longer forwarded, and a commit to a database (its WAL file
//   changes) wakes that database. A full rescan every rescan_interval (and at
//   once after an inotify queue overflow) covers lost events. A matching file
//   that is not an outbox database is logged once and looked at again when it
//   changes.
// - Forwards each database with a Relay of its own (relay.hpp: its own lease,
//   session, window, dead letters, retention and status row), stepped in
//   turn: one batch per database per round, so a database with a large
//   backlog does not hold back one with a single message.
// - Opens databases on opener_threads threads of its own (schema check,
//   backlog, origin id and, with something pending, the lease claimed for
//   the database's relay, which carries on with it: one lease write per
//   open), while the loop forwards the open ones.
// - Forwards one database per origin id: a database whose origin id another
//   database of the directory already forwards (a file copied from it) is
//   refused with a warning naming both files, and looked at again when its
//   files change or the other one goes away (docs/operations.md).
// - Carries every database's session over `connections` shared connections
//   (SharedBrokerConnection, or what make_connection makes: one NATS
//   connection for JetStream); a database keeps its connection while open.
//   A database whose HELLO is not answered yet (the broker is down or not
//   started) holds up no other: it is looked at again when the answer
//   comes or the connect timeout has passed.
// - Warns once per database that sends a msg_id shaped like a snowflake id
//   (unique per database only; databases forwarded together use UUID v7,
//   docs/operations.md).
// - Keeps at most max_open_databases open (three descriptors each): beyond
//   it the least recently busy idle or standby database is closed. A
//   database idle for idle_release gives its lease up and is closed; its
//   next commit opens it again, and it is forwarded again if a read finds
//   pending messages.
// - request_stop(): every open database finishes as Relay::run() does when
//   stopped (in-flight acknowledgements within drain_timeout, lease
//   released), then run() returns.
//
// - Every line it logs about one database, and every line that database's
//   Relay logs, names the database: "database NAME: " in front of the text
//   and a `database` field (metrics/log_fields.hpp) for structured logs.
//
// Ownership: owns its databases, relays, connections and opener threads
// (started by the constructor). Thread safety: run() on one thread; request_stop() from any thread
// or a signal handler; counters() from any thread (a copy of what run() last published). Errors: an
// unusable directory (missing, not a directory, no inotify) throws std::runtime_error from run();
// SinkRefusal from a database propagates (the broker refuses the configuration for everyone); every
// other database failure is logged with the database's name and that database alone is closed and
// retried later.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "outbox/relay_store.hpp"
#include "relay/broker_sink.hpp"
#include "relay/relay.hpp"
#include "relay/shared_connection.hpp"

namespace relay {

struct MultiRelayConfig {
  std::filesystem::path directory;
  std::string glob = "*.db";  // fnmatch(3) pattern for the file names
  std::size_t connections = 2;
  std::size_t max_open_databases = 256;
  // Threads that open databases (and claim their leases) while the loop
  // forwards the open ones: on disk an open waits for file creation and a
  // sync, far longer than forwarding a small backlog takes. 0: the loop
  // opens each database itself, in turn.
  std::size_t opener_threads = 4;
  std::chrono::milliseconds idle_release{30'000};
  std::chrono::milliseconds rescan_interval{30'000};
  // Read each database's backlog (pending, retrying, dead, oldest pending
  // age) for counters(): when it is opened, at its turns at most once per
  // backlog_interval while open, and when it is closed. Never a pass over
  // every database: a closed database keeps its last reading. 0: not read.
  std::chrono::milliseconds backlog_interval{0};
  // counters().largest lists at most this many databases, by backlog.
  std::size_t listed_databases = 20;
  // The fallback look for commits inotify missed (PRAGMA data_version of
  // open idle databases): this many in all per second, whatever the number
  // of databases; none more often than relay.idle_wait.
  std::size_t fallback_checks_per_second = 100;
  // Per database. Its holder names the process; idle_wait is the shortest
  // time between two fallback checks of one open idle database. A
  // `metrics` given here is shared by every database's relay: build it with
  // RelayMetrics' two-registry constructor (relay/metrics.hpp).
  RelayConfig relay{};
  outbox::RelayOptions store{};
  // Once a database is open, its reads and writes on the forwarding thread
  // wait at most this long for another process' lock (store.busy_timeout
  // still applies when an opener thread opens it). A database another
  // process keeps locked then delays the others by this much per attempt,
  // not by store.busy_timeout, while its relay backs off and retries.
  std::chrono::milliseconds stepped_busy_timeout{100};
  BrokerSinkOptions broker{};
  // Makes each of the `connections` shared connections; empty: outbox-broker
  // connections to `broker` (SharedBrokerConnection). For NATS JetStream,
  // one SharedJetStreamConnection (jetstream_sink.hpp) with connections = 1.
  std::function<std::unique_ptr<SharedConnection>()> make_connection;
};

// One database's figures in MultiRelayCounters::largest.
struct DatabaseCounters {
  std::string name;  // the file name in the directory
  std::int64_t pending = 0;
  std::int64_t retrying = 0;
  std::int64_t dead = 0;
  // When its oldest pending message was committed, on this process' steady
  // clock (its age as read, taken back from the time of the reading); empty
  // when none is pending.
  std::optional<std::chrono::steady_clock::time_point> oldest_pending_since;
  RelayCounters counters;  // of every relay of it since run() started
  bool open = false;
  bool active = false;      // holds its lease
  bool session_up = false;  // its relay has a session with the broker
};

// Since run() started, refreshed by run() every 100 ms; readable from other
// threads. The counters count on after a database is gone from the directory.
struct MultiRelayCounters {
  std::uint64_t databases = 0;    // known outbox databases in the directory
  std::uint64_t open = 0;         // open now
  std::uint64_t active = 0;       // holding their lease now
  std::uint64_t sessions_up = 0;  // with a session with the broker now
  std::uint64_t stored = 0;       // summed over every database
  std::uint64_t duplicates = 0;
  std::uint64_t dead = 0;
  std::uint64_t sent_messages = 0;
  // With backlog_interval: the backlogs summed over every database as last
  // read, the oldest pending message of them all, and the listed_databases
  // databases with the most pending messages (then dead ones, then by name).
  // `unread`: known databases without a reading (not yet read, or unreadable).
  std::int64_t pending = 0;
  std::int64_t retrying = 0;
  std::int64_t dead_messages = 0;
  std::uint64_t unread = 0;
  std::optional<std::chrono::steady_clock::time_point> oldest_pending_since;
  std::string oldest_pending_database;  // whose it is
  std::vector<DatabaseCounters> largest;
};

// The names of the files in `directory` (not its subdirectories) that
// MultiRelay takes for databases: regular files matching `glob`, never
// SQLite's or the outbox's companion files (-wal, -shm, -journal,
// -outbox-workers.lock). Sorted. Throws std::runtime_error naming the
// directory when it cannot be listed.
std::vector<std::string> database_files(const std::filesystem::path& directory,
                                        const std::string& glob);

class MultiRelay {
 public:
  explicit MultiRelay(MultiRelayConfig config);
  ~MultiRelay() noexcept;
  MultiRelay(const MultiRelay&) = delete;
  MultiRelay& operator=(const MultiRelay&) = delete;

  void run();
  void request_stop() noexcept;
  MultiRelayCounters counters() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace relay
