// The outbox schema version this library reads and writes. The schema itself
// is a documented contract (docs/schema.md): tables prefixed `outbox_` inside
// the application's own database, versioned in `outbox_meta` (the
// application's PRAGMA user_version is left alone).
#pragma once

namespace outbox {

// Version 1: outbox_meta, outbox_messages (without headers), outbox_lease.
// Version 2: outbox_messages.headers, relay delivery table and cursor,
//            snowflake worker leases, consumer inbox.
// Version 3: outbox_relay_cursor.generation (changes of delivery state made
//            outside the running relay), outbox_inbox.claim_token (claims
//            have owners).
inline constexpr int schema_version = 3;

}  // namespace outbox
