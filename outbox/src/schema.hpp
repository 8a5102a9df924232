#pragma once

#include <sqlite3.h>

#include <string>
#include <string_view>

namespace outbox::detail {

// Delivery states in outbox_delivery.state (docs/schema.md).
inline constexpr int state_retry = 0;
inline constexpr int state_delivered = 1;
inline constexpr int state_dead = 2;
inline constexpr int state_dropped = 3;

// Inbox states in outbox_inbox.state.
inline constexpr int inbox_processing = 1;
inline constexpr int inbox_done = 2;

// `sql` with {retry}, {delivered}, {dead}, {dropped}, {processing} and {done}
// replaced by the state numbers above. Written into the text rather than bound
// as parameters: SQLite uses a partial index (WHERE state <> 1, WHERE state = 2)
// only for a query that names the same literal. Throws std::logic_error on an
// unknown name in braces (a typo in our own SQL).
std::string with_states(std::string_view sql);

enum class SchemaMode {
  create_or_migrate,  // producers and consumers: create the tables if missing
  require_existing,   // relay and operator tools: refuse a database without them
};

// Brings the outbox tables of `db` to schema_version. Refuses (outbox::Error,
// nothing written) a database whose schema is newer than this library. Must be
// called in autocommit mode; migrates in one IMMEDIATE transaction.
void ensure_schema(sqlite3* db, const std::string& path_for_errors, SchemaMode mode);

// Creates the rows the relay owns when they are missing (a database whose
// tables another program created from docs/schema.md): the cursor row. The
// lease row and delivery rows are created on use. Autocommit mode.
void repair_relay_state(sqlite3* db);

// Reads the schema version; 0 when outbox_meta does not exist. Throws
// outbox::Error naming the file when the stored value is not a positive INTEGER.
int read_schema_version(sqlite3* db, const std::string& path_for_errors);

// The SQL of one migration step (1-based), exposed for tests that build an
// older database.
const char* migration_sql(int version);

}  // namespace outbox::detail
