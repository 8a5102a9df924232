#include "schema.hpp"

#include <algorithm>
#include <array>
#include <limits>
#include <stdexcept>
#include <utility>

#include "outbox/error.hpp"
#include "outbox/schema.hpp"
#include "sqlite/sqlite.hpp"

namespace outbox::detail {
namespace {

// Each step is applied once, in order, in the same transaction that records
// the new version. Steps are frozen once released: change the schema only by
// adding a step.
constexpr const char* migrations[] = {
    // 1: messages, lease.
    R"sql(
CREATE TABLE outbox_meta(
  key   TEXT PRIMARY KEY,
  value ANY
) WITHOUT ROWID;
CREATE TABLE outbox_messages(
  seq           INTEGER PRIMARY KEY,
  msg_id        TEXT    NOT NULL UNIQUE,
  topic         TEXT    NOT NULL CHECK (length(topic) > 0),
  partition_key TEXT,
  payload       BLOB    NOT NULL,
  created_at_ms INTEGER NOT NULL
                DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
);
CREATE TABLE outbox_lease(
  name           TEXT PRIMARY KEY,
  holder         TEXT    NOT NULL,
  epoch          INTEGER NOT NULL,
  acquired_at_ms INTEGER NOT NULL,
  expires_at_ms  INTEGER NOT NULL
) WITHOUT ROWID;
)sql",
    // 2: headers; relay bookkeeping off the producer's path; worker ids; inbox.
    R"sql(
ALTER TABLE outbox_messages ADD COLUMN headers BLOB;
CREATE TABLE outbox_delivery(
  seq             INTEGER PRIMARY KEY,
  state           INTEGER NOT NULL,
  attempts        INTEGER NOT NULL DEFAULT 0,
  next_attempt_ms INTEGER NOT NULL DEFAULT 0,
  last_error      TEXT,
  broker_offset   INTEGER,
  updated_at_ms   INTEGER NOT NULL
);
CREATE INDEX outbox_delivery_unsettled ON outbox_delivery(state) WHERE state <> 1;
CREATE TABLE outbox_relay_cursor(
  id                  INTEGER PRIMARY KEY CHECK (id = 1),
  settled_through_seq INTEGER NOT NULL,
  delivered_total     INTEGER NOT NULL
);
INSERT INTO outbox_relay_cursor(id, settled_through_seq, delivered_total) VALUES (1, 0, 0);
CREATE TABLE outbox_workers(
  worker_id     INTEGER PRIMARY KEY,
  holder        TEXT    NOT NULL,
  expires_at_ms INTEGER NOT NULL
);
CREATE TABLE outbox_inbox(
  msg_id           TEXT PRIMARY KEY,
  state            INTEGER NOT NULL,
  claimed_until_ms INTEGER,
  completed_at_ms  INTEGER
) WITHOUT ROWID;
CREATE INDEX outbox_inbox_completed ON outbox_inbox(completed_at_ms) WHERE state = 2;
)sql",
    // 3: one block per change, each under its own comment.
    R"sql(
-- relay generation (replay/drop)
ALTER TABLE outbox_relay_cursor ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;

-- inbox claim owners: the token of the begin() that holds (or completed) a claim.
ALTER TABLE outbox_inbox ADD COLUMN claim_token TEXT;

-- worker ids: the high-water mark of each leased snowflake worker id
ALTER TABLE outbox_workers ADD COLUMN reserved_until_ms INTEGER NOT NULL DEFAULT 0;

-- field limits
-- CHECK constraints cost the enqueue path about half what a trigger does
-- (docs/schema.md, "Measurements"), and SQLite cannot add them to a table:
-- the table is rebuilt, keeping every row and its seq. Rows written before
-- are copied unchecked (the relay refuses those one by one).
PRAGMA ignore_check_constraints = ON;
CREATE TABLE outbox_messages_v3(
  seq           INTEGER PRIMARY KEY,
  msg_id        TEXT    NOT NULL UNIQUE
                CONSTRAINT msg_id_limits CHECK (length(CAST(msg_id AS BLOB)) BETWEEN 1 AND 255
                                                AND msg_id NOT GLOB '*[^!-~]*'),
  topic         TEXT    NOT NULL
                CONSTRAINT topic_limits CHECK (length(CAST(topic AS BLOB)) BETWEEN 1 AND 249
                                               AND topic NOT GLOB '*[^A-Za-z0-9._-]*'),
  partition_key TEXT
                CONSTRAINT partition_key_limits CHECK (length(CAST(partition_key AS BLOB)) <= 4096),
  payload       BLOB    NOT NULL,
  created_at_ms INTEGER NOT NULL
                DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
  headers       BLOB
);
INSERT INTO outbox_messages_v3(seq, msg_id, topic, partition_key, payload, created_at_ms, headers)
  SELECT seq, msg_id, topic, partition_key, payload, created_at_ms, headers FROM outbox_messages;
DROP TABLE outbox_messages;
ALTER TABLE outbox_messages_v3 RENAME TO outbox_messages;
PRAGMA ignore_check_constraints = OFF;

-- relay status: what the active relay last reported (outbox-relay status)
CREATE TABLE outbox_relay_status(
  id                    INTEGER PRIMARY KEY CHECK (id = 1),
  holder                TEXT    NOT NULL,
  destination           TEXT    NOT NULL,
  session_up            INTEGER NOT NULL,
  session_changed_at_ms INTEGER NOT NULL,
  last_error            TEXT,
  last_error_at_ms      INTEGER,
  last_progress_at_ms   INTEGER,
  updated_at_ms         INTEGER NOT NULL
);
)sql",
};
static_assert(std::size(migrations) == static_cast<std::size_t>(schema_version));

bool has_table(sqlite3* db, const char* name) {
  sqlite::Statement statement(db, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1");
  auto use = statement.use();
  use.bind_text(1, name);
  return use.step();
}

}  // namespace

std::string with_states(std::string_view sql) {
  static constexpr std::array<std::pair<std::string_view, int>, 6> names = {{
      {"{retry}", state_retry},
      {"{delivered}", state_delivered},
      {"{dead}", state_dead},
      {"{dropped}", state_dropped},
      {"{processing}", inbox_processing},
      {"{done}", inbox_done},
  }};
  std::string out;
  out.reserve(sql.size());
  while (!sql.empty()) {
    const auto open = sql.find('{');
    out.append(sql.substr(0, open));
    if (open == std::string_view::npos) break;
    sql.remove_prefix(open);
    const auto close = sql.find('}');
    const auto name = sql.substr(0, close == std::string_view::npos ? sql.size() : close + 1);
    const auto known = std::find_if(names.begin(), names.end(),
                                    [&](const auto& entry) { return entry.first == name; });
    if (known == names.end())
      throw std::logic_error("unknown state name in SQL: " + std::string(name));
    out += std::to_string(known->second);
    sql.remove_prefix(name.size());
  }
  return out;
}

const char* migration_sql(int version) {
  if (version < 1 || version > schema_version) throw Error("no such schema version");
  return migrations[version - 1];
}

int read_schema_version(sqlite3* db, const std::string& path_for_errors) {
  if (!has_table(db, "outbox_meta")) return 0;
  sqlite::Statement statement(
      db, "SELECT typeof(value), value FROM outbox_meta WHERE key = 'schema_version'");
  auto use = statement.use();
  if (!use.step()) return 0;
  // Only an INTEGER is a version: SQLite would read '2abc' as 2 and 2.5 as 2.
  auto type = use.column_text(0);
  auto version = use.column_int64(1);
  if (type != "integer" || version < 1 || version > std::numeric_limits<int>::max()) {
    throw Error(ErrorKind::database,
                "database '" + path_for_errors + "' has outbox_meta schema_version " +
                    (type == "text" ? "'" + use.column_text(1) + "'" : use.column_text(1)) + " (" +
                    type +
                    "), not a positive integer; this is not an outbox written by this "
                    "toolkit, or it was damaged");
  }
  return static_cast<int>(version);
}

void ensure_schema(sqlite3* db, const std::string& path, SchemaMode mode) {
  if (sqlite3_get_autocommit(db) == 0) {
    throw Error("outbox: the connection for '" + path +
                "' is inside a transaction; open or attach the outbox in autocommit mode");
  }
  // Fast path without a write lock: most opens find the current version.
  int version = read_schema_version(db, path);
  if (version == schema_version) return;
  if (version > schema_version) {
    throw Error(ErrorKind::database,
                "database '" + path + "' has outbox schema version " + std::to_string(version) +
                    ", newer than this library supports (" + std::to_string(schema_version) +
                    "); upgrade the outbox library");
  }
  if (version == 0 && mode == SchemaMode::require_existing) {
    throw Error(ErrorKind::database,
                "database '" + path +
                    "' has no outbox schema (table outbox_meta is missing); a producer creates it "
                    "with outbox::Outbox::open");
  }
  sqlite::Transaction transaction(db, true);
  version = read_schema_version(db, path);  // another process may have migrated meanwhile
  if (version > schema_version) {
    throw Error(ErrorKind::database,
                "database '" + path + "' has outbox schema version " + std::to_string(version) +
                    ", newer than this library supports (" + std::to_string(schema_version) + ")");
  }
  if (version == 0 && has_table(db, "outbox_messages")) {
    throw Error(
        ErrorKind::database,
        "database '" + path +
            "' has a table outbox_messages but no outbox_meta; refusing to guess its version");
  }
  for (int step = version + 1; step <= schema_version; ++step) {
    try {
      sqlite::exec(db, migrations[step - 1]);
    } catch (const Error& error) {
      // A step may relax checks while it copies rows; never leave them off.
      sqlite3_exec(db, "PRAGMA ignore_check_constraints = OFF", nullptr, nullptr, nullptr);
      throw Error(ErrorKind::database,
                  "migrating '" + path + "' to outbox schema version " + std::to_string(step) +
                      ": " + error.what(),
                  error.extended_code());
    }
  }
  sqlite::Statement record(db,
                           "INSERT INTO outbox_meta(key, value) VALUES ('schema_version', ?1) "
                           "ON CONFLICT(key) DO UPDATE SET value = excluded.value");
  {
    auto use = record.use();
    use.bind(1, schema_version).run();
  }
  transaction.commit();
}

void repair_relay_state(sqlite3* db) {
  // A database whose tables were created by another program may lack the
  // rows only the relay needs; nothing of the producer's side depends on them.
  if (sqlite::query_int64(db, "SELECT count(*) FROM outbox_relay_cursor WHERE id = 1") != 0) return;
  sqlite::exec(db,
               "INSERT INTO outbox_relay_cursor(id, settled_through_seq, delivered_total) "
               "VALUES (1, 0, 0) ON CONFLICT(id) DO NOTHING");
}

}  // namespace outbox::detail
