#!/usr/bin/env python3
"""Writes outbox rows through the SQL contract alone (docs/schema.md), the way
a producer in another language would, including rows that break a limit or
the headers format (with the schema's CHECK constraints turned off, as in a
database whose rows predate them). Used by the relay's integration tests.

usage: sql_producer.py DB ROW...

Each ROW is a JSON object; every field is optional:
  {"msg_id": ..., "topic": ..., "key": ..., "payload": ...,
   "headers": {"count": N, "value_bytes": M}, "headers_hex": "FFFFFFFF"}
A text field may also be {"repeat": "x", "count": 300}. The default msg_id is
"sql-" + a random UUID, the default topic "orders". All rows are committed in
one transaction. Prints "committed N".
"""
import json
import sqlite3
import struct
import sys
import uuid


def text(value):
    if isinstance(value, dict):
        return value["repeat"] * value["count"]
    return value


def headers_blob(spec):
    # Per header: 4-byte big-endian name length, name, 4-byte big-endian value
    # length, value (docs/schema.md).
    blob = b""
    for i in range(spec.get("count", 1)):
        name = ("h%d" % i).encode()
        value = b"v" * spec.get("value_bytes", 1)
        blob += struct.pack(">I", len(name)) + name + struct.pack(">I", len(value)) + value
    return blob


def main():
    db, rows = sys.argv[1], [json.loads(arg) for arg in sys.argv[2:]]
    connection = sqlite3.connect(db, timeout=10, isolation_level=None)
    # The schema's CHECK constraints refuse most impossible rows at INSERT, but rows
    # written before they existed (a database migrated from version 2) or by a tool
    # that turned them off still reach the relay, which must make each one dead and
    # go on: write them unchecked.
    connection.execute("PRAGMA ignore_check_constraints = ON")
    connection.execute("BEGIN IMMEDIATE")
    for row in rows:
        headers = None
        if "headers_hex" in row:
            headers = bytes.fromhex(row["headers_hex"])
        elif "headers" in row:
            headers = headers_blob(row["headers"])
        connection.execute(
            "INSERT INTO outbox_messages(msg_id, topic, partition_key, headers, payload) "
            "VALUES (?, ?, ?, ?, ?)",
            (
                text(row.get("msg_id", "sql-" + str(uuid.uuid4()))),
                text(row.get("topic", "orders")),
                text(row["key"]) if "key" in row else None,
                headers,
                text(row.get("payload", "")).encode(),
            ),
        )
    connection.execute("COMMIT")
    connection.close()
    print("committed %d" % len(rows))


if __name__ == "__main__":
    main()
