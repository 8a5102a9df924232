#!/usr/bin/env python3
"""A producer written only from docs/schema.md, with Python's sqlite3 module.

  sql_contract_producer.py create DB SCHEMA_MD
      Creates the outbox tables by running the script printed under
      "## Creating the tables" in SCHEMA_MD (read from the page every time, so
      the page cannot drift from what works), plus a business table `orders`.
  sql_contract_producer.py enqueue DB COUNT KEYS [--busy-timeout-ms MS]
      COUNT transactions, each: BEGIN IMMEDIATE; one order; one message on
      topic "orders" with key "k<i>", payload "k<i>:<n>" (n counts per key
      from 1) and a traceparent header; COMMIT. A transaction that fails with
      "database is locked" is rolled back and counted, not retried.
      Prints "committed N locked M".
"""
import sqlite3
import struct
import sys
import uuid


def documented_ddl(schema_md):
    with open(schema_md, encoding="utf-8") as page:
        text = page.read()
    section = text.index("\n## Creating the tables\n")
    start = text.index("```sql\n", section) + len("```sql\n")
    return text[start:text.index("\n```", start)]


def encode_headers(headers):
    # docs/schema.md, "The headers blob": u32 big-endian length + bytes, name then value.
    return b"".join(struct.pack(">I", len(part)) + part
                    for name, value in headers for part in (name, value))


def connect(path, busy_timeout_ms):
    # isolation_level=None: the module issues no BEGIN of its own.
    db = sqlite3.connect(path, timeout=busy_timeout_ms / 1000.0, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    return db


def create(path, schema_md):
    db = connect(path, 5000)
    db.executescript(documented_ddl(schema_md))
    db.execute("CREATE TABLE orders(id INTEGER PRIMARY KEY, customer TEXT NOT NULL)")
    db.close()


def enqueue(path, count, keys, busy_timeout_ms):
    db = connect(path, busy_timeout_ms)
    sent = [0] * keys
    committed = locked = 0
    for i in range(count):
        key = i % keys
        n = sent[key] + 1
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO orders(customer) VALUES (?)", (f"k{key}",))
            db.execute(
                "INSERT INTO outbox_messages(msg_id, topic, partition_key, payload, headers) "
                "VALUES (?, 'orders', ?, ?, ?)",
                (f"py-{uuid.uuid4()}", f"k{key}", f"k{key}:{n}".encode(),
                 encode_headers([(b"traceparent", f"00-py-{i}-01".encode())])))
            db.execute("COMMIT")
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) and "busy" not in str(error):
                raise
            if db.in_transaction:
                db.execute("ROLLBACK")
            locked += 1
            continue
        sent[key] = n
        committed += 1
    db.close()
    print(f"committed {committed} locked {locked}", flush=True)


def main(argv):
    if len(argv) == 4 and argv[1] == "create":
        create(argv[2], argv[3])
        return 0
    if len(argv) in (5, 7) and argv[1] == "enqueue":
        busy_timeout_ms = 5000
        if len(argv) == 7:
            if argv[5] != "--busy-timeout-ms":
                print(__doc__, file=sys.stderr)
                return 2
            busy_timeout_ms = int(argv[6])
        enqueue(argv[2], int(argv[3]), int(argv[4]), busy_timeout_ms)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
