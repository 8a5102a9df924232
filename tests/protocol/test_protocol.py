"""The broker's wire protocol, checked by an independent client (obx.py) written from
docs/protocol.md. Each test class starts its own outbox-broker on a free loopback
port. Run: OUTBOX_BROKER=build/bin/outbox-broker python3 -m unittest test_protocol
"""

import os
import signal
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import obx  # noqa: E402
from obx import ERROR_CODES as E  # noqa: E402

BROKER = os.environ.get("OUTBOX_BROKER", "outbox-broker")


class BrokerTest(unittest.TestCase):
    broker_args = ()

    @classmethod
    def setUpClass(cls):
        cls.broker = obx.Broker(BROKER, cls.broker_args)

    @classmethod
    def tearDownClass(cls):
        code = cls.broker.stop()
        if code != 0:
            raise AssertionError("outbox-broker exited with %s" % code)

    def setUp(self):
        self.conn = self.broker.connect()
        self.addCleanup(self.conn.close)

    def expect_error(self, reply, code, request_id=None):
        command, body = reply
        self.assertEqual(command, obx.ERROR, "expected ERROR, got %r" % (body,))
        self.assertEqual(body["code"], E[code], body["message"])
        self.assertTrue(body["message"], "ERROR without a message")
        self.assertNotIn("\n", body["message"])
        if request_id is not None:
            self.assertEqual(body["request_id"], request_id)
        return body

    def publish_ok(self, session, batch_id, messages, conn=None):
        command, ack = (conn or self.conn).publish(session, batch_id, messages)
        self.assertEqual(command, obx.ACK, "PUBLISH answered %r" % (ack,))
        self.assertEqual(ack["batch_id"], batch_id)
        self.assertEqual(len(ack["entries"]), len(messages))
        return ack["entries"]

    def counter(self, name):
        return self.conn.stats()["counters"].get(name)

    def fetch_all(self, topic):
        command, reply = self.conn.fetch(900, topic, from_offset=1, max_messages=10000)
        self.assertEqual(command, obx.MESSAGES, reply)
        return reply["messages"]


class TestSession(BrokerTest):
    def test_hello_opens_a_session_with_the_documented_fields(self):
        welcome = self.conn.hello()
        self.assertNotEqual(welcome["session_id"], 0)
        self.assertGreater(welcome["max_message_bytes"], 0)
        self.assertGreater(welcome["max_batch_messages"], 0)
        self.assertTrue(welcome["broker_name"])
        # The documented defaults of outbox-broker.
        self.assertEqual(welcome["limits"], {
            "max_body_bytes": welcome["limits"]["max_body_bytes"],
            "max_msg_id_bytes": 255, "max_name_bytes": 255, "max_key_bytes": 4096,
            "max_headers": 64, "max_header_name_bytes": 255, "max_header_value_bytes": 65535,
            "max_payload_bytes": welcome["limits"]["max_payload_bytes"]})
        self.assertGreaterEqual(welcome["limits"]["max_body_bytes"], 2 * welcome["max_message_bytes"])
        self.assertGreaterEqual(welcome["limits"]["max_payload_bytes"], welcome["max_message_bytes"])

    def test_fields_over_the_announced_limits_are_rejected_one_by_one(self):
        welcome = self.conn.hello()
        limits = welcome["limits"]
        entries = self.publish_ok(welcome["session_id"], 1, [
            obx.message("l-1", "lim", "x", key="k" * (limits["max_key_bytes"] + 1)),
            obx.message("l-2", "lim", "x", key="b",
                        hdrs=[("h%d" % i, b"v") for i in range(limits["max_headers"] + 1)]),
            obx.message("l-3", "lim", "x", key="c",
                        hdrs=[("big", b"v" * (limits["max_header_value_bytes"] + 1))]),
            obx.message("l-4", "lim", "x", key="d"),
        ])
        self.assertEqual([e["status"] for e in entries],
                         [obx.REJECTED, obx.REJECTED, obx.REJECTED, obx.STORED])
        self.assertIn(b"key too long", entries[0]["reason"])
        self.assertIn(b"invalid headers", entries[1]["reason"])

    def test_a_second_hello_replaces_the_session(self):
        first = self.conn.hello()["session_id"]
        second = self.conn.hello()["session_id"]
        self.assertNotEqual(first, second)
        reply = self.conn.publish(first, 1, [obx.message("s-old", "session", "x")])
        self.expect_error(reply, "no_session", 1)
        self.assertEqual(self.publish_ok(second, 1, [obx.message("s-new", "session", "x")])[0]
                         ["status"], obx.STORED)

    def test_publish_before_hello_is_no_session(self):
        reply = self.conn.publish(12345, 7, [obx.message("s-1", "session", "x")])
        self.expect_error(reply, "no_session", 7)

    def test_hello_with_unknown_flags_is_invalid_value(self):
        for flags in (4, 0x80000000, 5):
            self.conn.send(obx.HELLO, obx.hello_body(origin="py-flags", epoch=1, flags=flags))
            self.expect_error(self.conn.receive(), "invalid_value")

    def test_hello_with_an_id_is_answered_naming_it(self):
        several = obx.HELLO_ONE_OF_SEVERAL | obx.HELLO_WITH_ID
        welcome = self.conn.hello(origin="py-id-a", epoch=1, flags=several, hello_id=0x8000000000000007)
        self.assertEqual(welcome["hello_id"], 0x8000000000000007)
        # Without the flag, WELCOME ends with the limits, as before.
        self.assertIsNone(self.conn.hello(origin="py-id-b", epoch=1, flags=1)["hello_id"])
        # A refused HELLO names it in the ERROR's request_id; an id of 0 is invalid.
        self.conn.send(obx.HELLO, obx.hello_body(origin="py-id-a", epoch=0, flags=several,
                                                 hello_id=41))
        self.expect_error(self.conn.receive(), "stale_epoch", 41)
        self.conn.send(obx.HELLO, obx.hello_body(origin="py-id-c", epoch=1, flags=several,
                                                 hello_id=0))
        self.expect_error(self.conn.receive(), "invalid_value")

    def test_ping_echoes_its_nonce(self):
        command, pong = self.conn.request(obx.PING, obx.u64(0xDEADBEEF01))
        self.assertEqual(command, obx.PONG)
        self.assertEqual(pong["nonce"], 0xDEADBEEF01)


class TestSeveralSessions(BrokerTest):
    """HELLO flag 'one of several': one session per origin on one connection."""

    def origin(self, name):
        return "py-%s-%d" % (name, os.getpid())

    def several(self, origin, epoch=1, conn=None):
        return (conn or self.conn).hello(origin=origin, epoch=epoch,
                                         flags=obx.HELLO_ONE_OF_SEVERAL)["session_id"]

    def test_sessions_of_several_origins_share_a_connection(self):
        a = self.several(self.origin("share-a"))
        b = self.several(self.origin("share-b"))
        self.assertNotEqual(a, b)
        # Interleaved batches, each session numbering its own.
        self.assertEqual(self.publish_ok(a, 1, [obx.message("ms-a1", "multi", "x", key="a")])[0]
                         ["status"], obx.STORED)
        self.assertEqual(self.publish_ok(b, 7, [obx.message("ms-b1", "multi", "x", key="b")])[0]
                         ["status"], obx.STORED)
        self.publish_ok(a, 2, [obx.message("ms-a2", "multi", "x", key="a")])
        self.publish_ok(b, 8, [obx.message("ms-b2", "multi", "x", key="b")])
        self.assertEqual([m["msg_id"] for m in self.fetch_all("multi")],
                         [b"ms-a1", b"ms-b1", b"ms-a2", b"ms-b2"])
        self.assertGreaterEqual(self.counter("sessions_active"), 2)

    def test_a_hello_replaces_only_the_session_of_its_origin(self):
        origin_a = self.origin("repl-a")
        a = self.several(origin_a)
        b = self.several(self.origin("repl-b"))
        a2 = self.several(origin_a)
        self.expect_error(self.conn.publish(a, 1, [obx.message("mr-1", "mrepl", "x")]),
                          "no_session", 1)
        self.publish_ok(a2, 1, [obx.message("mr-2", "mrepl", "x")])
        self.publish_ok(b, 1, [obx.message("mr-3", "mrepl", "x")])

    def test_a_hello_without_the_flag_replaces_every_session(self):
        a = self.several(self.origin("plain-a"))
        b = self.several(self.origin("plain-b"))
        plain = self.conn.hello()["session_id"]
        for session in (a, b):
            self.expect_error(self.conn.publish(session, 1, [obx.message("mp-1", "mplain", "x")]),
                              "no_session", 1)
        self.publish_ok(plain, 1, [obx.message("mp-2", "mplain", "x")])

    def test_the_flag_needs_an_origin(self):
        self.conn.send(obx.HELLO, obx.hello_body(flags=obx.HELLO_ONE_OF_SEVERAL))
        self.expect_error(self.conn.receive(), "invalid_value", 0)

    def test_a_session_of_another_connection_is_no_session(self):
        a = self.several(self.origin("other-conn"))
        other = self.broker.connect()
        self.addCleanup(other.close)
        self.several(self.origin("other-conn-2"), conn=other)
        self.expect_error(other.publish(a, 1, [obx.message("mo-1", "mother", "x")]),
                          "no_session", 1)

    def test_a_failure_fails_only_its_own_session(self):
        a = self.several(self.origin("fail-a"))
        b = self.several(self.origin("fail-b"))
        body = obx.publish_body(a, 1, [obx.message("mf-1", "mfail", "x")])
        self.conn.send(obx.PUBLISH, body[:-3])
        self.expect_error(self.conn.receive(), "truncated", 1)
        self.expect_error(self.conn.publish(a, 2, [obx.message("mf-2", "mfail", "x")]),
                          "session_failed", 2)
        self.publish_ok(b, 1, [obx.message("mf-3", "mfail", "x")])
        # A gap in one session's batch ids fails that session only.
        self.publish_ok(b, 2, [obx.message("mf-4", "mfail", "x")])
        c = self.several(self.origin("fail-c"))
        self.publish_ok(c, 5, [obx.message("mf-5", "mfail", "x")])
        self.expect_error(self.conn.publish(c, 9, [obx.message("mf-6", "mfail", "x")]),
                          "invalid_value", 9)
        self.publish_ok(b, 3, [obx.message("mf-7", "mfail", "x")])
        self.assertEqual([m["msg_id"] for m in self.fetch_all("mfail")],
                         [b"mf-3", b"mf-4", b"mf-5", b"mf-7"])

    def test_a_refused_key_blocks_only_its_own_session(self):
        a = self.several(self.origin("block-a"))
        b = self.several(self.origin("block-b"))
        self.publish_ok(a, 1, [obx.message("mb-1", "mblock", "x", key="k")])
        entries = self.publish_ok(a, 2, [obx.message("mb-1", "mblock", "other", key="k"),
                                         obx.message("mb-2", "mblock", "x", key="k")])
        self.assertEqual([e["status"] for e in entries], [obx.CONFLICT, obx.BLOCKED])
        self.assertEqual(self.publish_ok(b, 1, [obx.message("mb-3", "mblock", "x", key="k")])[0]
                         ["status"], obx.STORED)

    def test_a_stale_epoch_ends_only_that_origins_session(self):
        origin_a = self.origin("stale-a")
        a = self.several(origin_a, epoch=3)
        b = self.several(self.origin("stale-b"), epoch=3)
        newer = self.broker.connect()
        self.addCleanup(newer.close)
        self.several(origin_a, epoch=4, conn=newer)
        self.expect_error(self.conn.publish(a, 1, [obx.message("mst-1", "mstale", "x")]),
                          "stale_epoch", 1)
        self.conn.send(obx.HELLO, obx.hello_body(origin=origin_a, epoch=3,
                                                 flags=obx.HELLO_ONE_OF_SEVERAL))
        self.expect_error(self.conn.receive(), "stale_epoch", 0)
        self.publish_ok(b, 1, [obx.message("mst-2", "mstale", "x")])
        self.assertEqual([m["msg_id"] for m in self.fetch_all("mstale")], [b"mst-2"])

    def test_a_new_session_of_an_origin_ends_the_older_ones_but_the_latest(self):
        origin = self.origin("older")
        conns = []
        for _ in range(3):
            conn = self.broker.connect()
            self.addCleanup(conn.close)
            conns.append(conn)
        first = self.several(origin, conn=conns[0])
        second = self.several(origin, conn=conns[1])
        # The second keeps the first (a RESUME may ask about it); the third ends it.
        self.publish_ok(first, 1, [obx.message("mo-1", "molder", "x")], conn=conns[0])
        third = self.several(origin, conn=conns[2])
        self.expect_error(conns[0].publish(first, 2, [obx.message("mo-2", "molder", "x")]),
                          "no_session", 2)
        self.publish_ok(second, 1, [obx.message("mo-2", "molder", "x")], conn=conns[1])
        self.publish_ok(third, 1, [obx.message("mo-3", "molder", "x")], conn=conns[2])

    def test_resume_works_session_by_session(self):
        origin_a, origin_b = self.origin("resume-a"), self.origin("resume-b")
        a, b = self.several(origin_a), self.several(origin_b)
        self.publish_ok(a, 1, [obx.message("mrs-1", "mresume", "x", key="a")])
        self.publish_ok(a, 2, [obx.message("mrs-2", "mresume", "x", key="a")])
        self.publish_ok(b, 5, [obx.message("mrs-3", "mresume", "x", key="b")])
        retained = self.counter("retained_ack_bytes")
        one_ack = 12 + 11  # an ACK body of one entry without a reason
        # The relay's new connection carries the next session of each origin.
        newer = self.broker.connect()
        self.addCleanup(newer.close)
        a2, b2 = self.several(origin_a, conn=newer), self.several(origin_b, conn=newer)
        # Another origin's session, on the old connection or on this one, tells nothing.
        for previous in (b, b2):
            command, reply = newer.resume(a2, previous, 5)
            self.assertEqual((command, reply["acks"]), (obx.RESUMED, []))
        # Found by its id on the old connection: a's ACKs only; a is over and
        # its kept ACKs are freed, b goes on.
        command, reply = newer.resume(a2, a, 1)
        self.assertEqual(command, obx.RESUMED, reply)
        self.assertEqual([ack["batch_id"] for ack in reply["acks"]], [1, 2])
        self.assertEqual(self.counter("retained_ack_bytes"), retained - 2 * one_ack)
        self.expect_error(self.conn.publish(a, 3, [obx.message("mrs-4", "mresume", "x", key="a")]),
                          "no_session", 3)
        self.publish_ok(b, 6, [obx.message("mrs-5", "mresume", "x", key="b")])
        command, reply = newer.resume(b2, b, 5)
        self.assertEqual([ack["batch_id"] for ack in reply["acks"]], [5, 6])
        self.assertEqual(self.counter("retained_ack_bytes"), retained - 3 * one_ack)
        # A HELLO replacing a session frees its kept ACKs too.
        c = self.several(self.origin("resume-c"))
        self.publish_ok(c, 1, [obx.message("mrs-6", "mresume", "x", key="c")])
        self.assertEqual(self.counter("retained_ack_bytes"), retained - 2 * one_ack)
        self.several(self.origin("resume-c"))
        self.assertEqual(self.counter("retained_ack_bytes"), retained - 3 * one_ack)
        # The sessions still open publish on.
        newer_ok = newer.publish(a2, 1, [obx.message("mrs-7", "mresume", "x", key="a")])
        self.assertEqual(newer_ok[0], obx.ACK, newer_ok)


class TestFencing(BrokerTest):
    def test_an_older_epoch_of_the_same_origin_is_refused(self):
        origin = "py-origin-%d" % os.getpid()
        old = self.conn.hello(origin=origin, epoch=5)["session_id"]
        self.publish_ok(old, 1, [obx.message("fe-1", "fence", "x")])
        newer = self.broker.connect()
        self.addCleanup(newer.close)
        new = newer.hello(origin=origin, epoch=6)["session_id"]
        # The older session's next batch is refused with its batch id, then the session is over.
        reply = self.conn.publish(old, 2, [obx.message("fe-2", "fence", "x")])
        self.expect_error(reply, "stale_epoch", 2)
        reply = self.conn.publish(old, 3, [obx.message("fe-3", "fence", "x")])
        self.expect_error(reply, "session_failed", 3)
        # A HELLO below the highest epoch gets no session.
        self.conn.send(obx.HELLO, obx.hello_body(origin=origin, epoch=5))
        self.expect_error(self.conn.receive(), "stale_epoch", 0)
        # The same epoch, other origins and unfenced sessions go on.
        command, ack = newer.publish(new, 1, [obx.message("fe-4", "fence", "x")])
        self.assertEqual(command, obx.ACK)
        self.assertEqual(self.conn.hello(origin=origin, epoch=6)["session_id"] != 0, True)
        self.assertNotEqual(self.conn.hello(origin="other-" + origin, epoch=1)["session_id"], 0)
        self.assertNotEqual(self.conn.hello()["session_id"], 0)
        self.assertEqual([m["msg_id"] for m in self.fetch_all("fence")], [b"fe-1", b"fe-4"])
        self.assertGreaterEqual(self.counter("stale_epochs"), 2)

    def test_a_burst_of_hellos_is_recorded_together_and_answered_in_order(self):
        base = "py-burst-%d-" % os.getpid()
        commits_before = self.counter("epoch_commits")
        flags = obx.HELLO_ONE_OF_SEVERAL | obx.HELLO_WITH_ID
        count = 300
        # Queued while the broker is stopped, so that it reads them together.
        self.broker.process.send_signal(signal.SIGSTOP)
        self.addCleanup(self.broker.process.send_signal, signal.SIGCONT)
        for i in range(count):
            self.conn.send(obx.HELLO, obx.hello_body(origin=base + str(i), epoch=i + 2, flags=flags,
                                                     hello_id=i + 1))
        # Behind them: an older epoch of an origin of the burst.
        self.conn.send(obx.HELLO, obx.hello_body(origin=base + "7", epoch=3, flags=flags,
                                                 hello_id=count + 1))
        self.broker.process.send_signal(signal.SIGCONT)
        replies = [self.conn.receive() for _ in range(count + 1)]
        for i, (command, body) in enumerate(replies[:count]):
            self.assertEqual(command, obx.WELCOME, body)
            self.assertEqual(body["hello_id"], i + 1)
        self.expect_error(replies[count], "stale_epoch", count + 1)
        # One durable write for many HELLOs, not one each.
        self.assertLess(self.counter("epoch_commits") - commits_before, count // 10)
        # In arrival order: the stale HELLO ended origin 7's session, opened before it.
        reply = self.conn.publish(replies[7][1]["session_id"], 1, [obx.message("burst-7", "b", "x")])
        self.expect_error(reply, "no_session", 1)
        command, ack = self.conn.publish(replies[8][1]["session_id"], 1,
                                         [obx.message("burst-8", "b", "x")])
        self.assertEqual(command, obx.ACK, ack)

    def test_an_origin_outside_its_character_set_is_invalid(self):
        self.conn.send(obx.HELLO, obx.hello_body(origin="has space", epoch=1))
        self.expect_error(self.conn.receive(), "invalid_value")


class TestResume(BrokerTest):
    def test_resume_returns_the_stored_batches_of_the_previous_session(self):
        origin = "py-resume-%d" % os.getpid()
        old = self.conn.hello(origin=origin, epoch=3)["session_id"]
        first = self.publish_ok(old, 7, [obx.message("rs-1", "resume-a", "a"),
                                         obx.message("rs-2", "resume-a", "b")])
        second = self.publish_ok(old, 8, [obx.message("rs-3", "resume-a", "c")])
        # The connection "breaks": a new one opens the next session and asks.
        newer = self.broker.connect()
        self.addCleanup(newer.close)
        new = newer.hello(origin=origin, epoch=3)["session_id"]
        command, reply = newer.resume(new, old, 8)
        self.assertEqual(command, obx.RESUMED, reply)
        self.assertEqual(reply["previous_session_id"], old)
        self.assertEqual([a["batch_id"] for a in reply["acks"]], [8])
        self.assertEqual(reply["acks"][0]["entries"], second)
        # The previous session is over: its batches are no longer applied,
        # and a second RESUME of it finds nothing.
        self.expect_error(self.conn.publish(old, 9, [obx.message("rs-4", "resume-a", "d")]),
                          "no_session", 9)
        command, reply = newer.resume(new, old, 7)
        self.assertEqual((command, reply["acks"]), (obx.RESUMED, []))
        self.assertEqual([m["msg_id"] for m in self.fetch_all("resume-a")],
                         [b"rs-1", b"rs-2", b"rs-3"])
        self.assertEqual(first[0]["status"], obx.STORED)
        self.assertGreaterEqual(self.counter("resumes"), 2)
        self.assertGreaterEqual(self.counter("resumed_batches"), 1)

    def test_resume_lists_consecutive_batches_from_the_one_asked(self):
        origin = "py-resume-run-%d" % os.getpid()
        old = self.conn.hello(origin=origin, epoch=1)["session_id"]
        for batch_id in (20, 21, 22):
            self.publish_ok(old, batch_id, [obx.message("rr-%d" % batch_id, "resume-b", "x")])
        newer = self.broker.connect()
        self.addCleanup(newer.close)
        new = newer.hello(origin=origin, epoch=1)["session_id"]
        command, reply = newer.resume(new, old, 21)
        self.assertEqual(command, obx.RESUMED, reply)
        self.assertEqual([a["batch_id"] for a in reply["acks"]], [21, 22])
        self.assertEqual([a["entries"][0]["status"] for a in reply["acks"]], [obx.STORED] * 2)

    def test_resume_tells_nothing_about_another_origin_or_epoch(self):
        origin = "py-resume-other-%d" % os.getpid()
        old = self.conn.hello(origin=origin, epoch=1)["session_id"]
        self.publish_ok(old, 1, [obx.message("ro-1", "resume-c", "x")])
        for other_origin, epoch in (("x" + origin, 1), (origin, 2), ("", 0)):
            other = self.broker.connect()
            self.addCleanup(other.close)
            session = other.hello(origin=other_origin, epoch=epoch)["session_id"]
            command, reply = other.resume(session, old, 1)
            self.assertEqual((command, reply["acks"]), (obx.RESUMED, []))

    def test_resume_outside_a_session_is_no_session(self):
        self.conn.send(obx.RESUME, obx.resume_body(123, 1, 1))
        self.expect_error(self.conn.receive(), "no_session", 0)
        session = self.conn.hello()["session_id"]
        self.conn.send(obx.RESUME, obx.resume_body(session, 1, 1) + b"x")
        self.expect_error(self.conn.receive(), "trailing_bytes", 0)


class TestPublish(BrokerTest):
    def test_stored_then_duplicate_with_the_original_offset(self):
        session = self.conn.hello()["session_id"]
        batch = [obx.message("p-%d" % i, "pub", "payload %d" % i, key="k") for i in range(5)]
        entries = self.publish_ok(session, 1, batch)
        self.assertEqual([e["status"] for e in entries], [obx.STORED] * 5)
        self.assertEqual([e["offset"] for e in entries], [1, 2, 3, 4, 5])
        self.assertTrue(all(e["reason"] == b"" for e in entries))
        again = self.publish_ok(session, 2, batch)
        self.assertEqual([e["status"] for e in again], [obx.DUPLICATE] * 5)
        self.assertEqual([e["offset"] for e in again], [1, 2, 3, 4, 5])

    def test_same_msg_id_with_other_payload_key_or_headers_is_conflict(self):
        session = self.conn.hello()["session_id"]
        self.publish_ok(session, 1, [obx.message("c-1", "conf", "{}", key="order-1",
                                                 hdrs=[("h", b"1")])])
        variants = [
            obx.message("c-1", "conf", "{\"other\":1}", key="order-1", hdrs=[("h", b"1")]),
            obx.message("c-1", "conf", "{}", key="order-2", hdrs=[("h", b"1")]),
            obx.message("c-1", "conf", "{}", key="order-1", hdrs=[("h", b"2")]),
        ]
        for batch_id, variant in enumerate(variants, start=2):
            session = self.conn.hello()["session_id"]  # a refusal blocks the key
            entry = self.publish_ok(session, batch_id, [variant])[0]
            self.assertEqual(entry["status"], obx.CONFLICT, entry)
            self.assertEqual(entry["offset"], 1)
            self.assertTrue(entry["reason"])
        self.assertEqual(len(self.fetch_all("conf")), 1)

    def test_each_documented_rejection(self):
        cases = [
            ("", "rej", "empty msg_id"),
            ("has space", "rej", "invalid msg_id"),
            ("ok-id-1", "bad topic!", "invalid topic"),
            ("ok-id-2", "t" * 250, "invalid topic"),
            ("x" * 256, "rej", None),  # over the msg_id limit: REJECTED, not ERROR
        ]
        for i, (msg_id, topic, reason) in enumerate(cases, start=1):
            session = self.conn.hello()["session_id"]
            entry = self.publish_ok(session, 1, [obx.message(msg_id, topic, "x", key="r%d" % i)])[0]
            self.assertEqual(entry["status"], obx.REJECTED, (msg_id[:20], topic[:20], entry))
            self.assertEqual(entry["offset"], 0)
            if reason is not None:
                self.assertIn(reason.encode(), entry["reason"])

    def test_message_over_max_message_bytes_is_rejected_too_large(self):
        welcome = self.conn.hello()
        big = b"z" * (welcome["max_message_bytes"] + 1)
        entries = self.publish_ok(welcome["session_id"], 1,
                                  [obx.message("big-1", "big", big, key="a"),
                                   obx.message("big-2", "big", "small", key="b")])
        self.assertEqual(entries[0]["status"], obx.REJECTED)
        self.assertIn(b"too large", entries[0]["reason"])
        self.assertEqual(entries[1]["status"], obx.STORED)

    def test_a_refused_key_is_blocked_for_the_rest_of_the_session(self):
        session = self.conn.hello()["session_id"]
        entries = self.publish_ok(session, 1, [
            obx.message("b 1", "blk", "x", key="k1"),   # invalid msg_id: REJECTED
            obx.message("b-2", "blk", "x", key="k1"),   # same key: BLOCKED
            obx.message("b-3", "blk", "x", key="k2"),   # other key: STORED
        ])
        self.assertEqual([e["status"] for e in entries], [obx.REJECTED, obx.BLOCKED, obx.STORED])
        self.assertEqual(self.publish_ok(session, 2, [obx.message("b-4", "blk", "x", key="k1")])
                         [0]["status"], obx.BLOCKED)
        session = self.conn.hello()["session_id"]  # a new HELLO clears the block
        self.assertEqual(self.publish_ok(session, 1, [obx.message("b-4", "blk", "x", key="k1")])
                         [0]["status"], obx.STORED)

    def test_headers_and_binary_payloads_round_trip(self):
        session = self.conn.hello()["session_id"]
        payload = bytes(range(256))
        hdrs = [("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
                ("bin", b"\x00\xff\x80")]
        self.publish_ok(session, 1, [obx.message("rt-1", "rt", payload, key="kk", hdrs=hdrs)])
        stored = self.fetch_all("rt")
        self.assertEqual(len(stored), 1)
        self.assertEqual(stored[0]["msg_id"], b"rt-1")
        self.assertEqual(stored[0]["key"], b"kk")
        self.assertEqual(stored[0]["payload"], payload)
        self.assertEqual(stored[0]["headers"], [(n.encode(), v) for n, v in hdrs])
        self.assertGreater(stored[0]["timestamp_ms"], 1_600_000_000_000)


class TestSessionFailure(BrokerTest):
    def test_a_malformed_publish_fails_the_session_until_hello(self):
        session = self.conn.hello()["session_id"]
        self.publish_ok(session, 1, [obx.message("f-1", "fail", "x")])
        body = obx.publish_body(session, 2, [obx.message("f-2", "fail", "x")])
        self.conn.send(obx.PUBLISH, body[:-3])  # truncated inside the last message
        self.expect_error(self.conn.receive(), "truncated", 2)
        reply = self.conn.publish(session, 3, [obx.message("f-3", "fail", "x")])
        self.expect_error(reply, "session_failed", 3)
        session = self.conn.hello()["session_id"]
        self.publish_ok(session, 1, [obx.message("f-3", "fail", "x")])
        self.assertEqual([m["msg_id"] for m in self.fetch_all("fail")], [b"f-1", b"f-3"])

    def test_a_publish_malformed_before_its_messages_fails_the_session(self):
        session = self.conn.hello()["session_id"]
        self.conn.send(obx.PUBLISH, obx.u64(session) + obx.u64(1))  # no count
        self.expect_error(self.conn.receive(), "truncated", 1)
        reply = self.conn.publish(session, 2, [obx.message("g-1", "gfail", "x")])
        self.expect_error(reply, "session_failed", 2)

    def test_batch_ids_must_be_consecutive_within_a_session(self):
        session = self.conn.hello()["session_id"]
        self.publish_ok(session, 10, [obx.message("c-10", "consec", "x", key="k")])
        self.publish_ok(session, 11, [obx.message("c-11", "consec", "x", key="k")])
        reply = self.conn.publish(session, 13, [obx.message("c-13", "consec", "x", key="k")])
        self.expect_error(reply, "invalid_value", 13)
        reply = self.conn.publish(session, 12, [obx.message("c-12", "consec", "x", key="k")])
        self.expect_error(reply, "session_failed", 12)
        self.assertEqual([m["msg_id"] for m in self.fetch_all("consec")], [b"c-10", b"c-11"])

    def test_pipelined_replies_come_in_arrival_order(self):
        for attempt in range(3):
            session = self.conn.hello()["session_id"]
            good = obx.publish_body(session, 1, [obx.message("o%d-1" % attempt, "order", "x")])
            bad = obx.publish_body(session, 2, [obx.message("o%d-2" % attempt, "order", "x")])
            late = obx.publish_body(session, 3, [obx.message("o%d-3" % attempt, "order", "x")])
            self.conn.send(obx.PUBLISH, good)
            self.conn.send(obx.PUBLISH, bad[:-1])
            self.conn.send(obx.PUBLISH, late)
            self.conn.send(obx.PING, obx.u64(77))
            replies = [self.conn.receive() for _ in range(4)]
            self.assertEqual([c for c, _ in replies], [obx.ACK, obx.ERROR, obx.ERROR, obx.PONG])
            self.assertEqual([r.get("batch_id", r.get("request_id")) for _, r in replies[:3]],
                             [1, 2, 3])


class TestMalformed(BrokerTest):
    def test_each_framing_error_code(self):
        before = self.counter("malformed")
        cases = [
            ([obx.tag(), bytes([obx.PING])], "bad_frame_count"),
            ([b"XYZ" + bytes([obx.VERSION]), bytes([obx.PING]), obx.u64(1)], "bad_tag"),
            ([obx.tag(0x7E), bytes([obx.PING]), obx.u64(1)], "unsupported_version"),
            ([obx.tag(), bytes([0x7F]), b""], "unknown_command"),
            ([obx.tag(), bytes([obx.PING]), b"\x01\x02"], "truncated"),
        ]
        for frames, code in cases:
            self.conn.send_raw(frames)
            self.expect_error(self.conn.receive(), code)
        self.assertEqual(self.counter("malformed"), before + len(cases))

    def test_older_protocol_version_is_refused_politely(self):
        # A version 1 client can read ERROR only in a version 1 frame.
        self.conn.send(obx.HELLO, obx.u32(0) + obx.str16("v1 client"), version=1)
        body = self.expect_error(self.conn.receive(version=1), "unsupported_version")
        self.assertIn("version 1", body["message"])
        self.assertIn("version %d" % obx.VERSION, body["message"])

    def test_errors_echo_every_readable_request_id(self):
        self.conn.send(obx.STATS, obx.u64(4242) + b"\x00")
        self.expect_error(self.conn.receive(), "trailing_bytes", 4242)
        self.conn.send(obx.FETCH, obx.fetch_body(4343, "t" * 300))
        self.expect_error(self.conn.receive(), "limit_exceeded", 4343)
        self.conn.send(obx.COMMIT_OFFSET, obx.commit_body(4444, "t", "g", 1) + b"\x00")
        self.expect_error(self.conn.receive(), "trailing_bytes", 4444)
        self.conn.send(obx.FETCH, obx.fetch_body(4545, "t", flags=0x02))
        self.expect_error(self.conn.receive(), "invalid_value", 4545)
        self.conn.send(obx.FETCH, obx.fetch_body(4646, ""))
        self.expect_error(self.conn.receive(), "invalid_value", 4646)

    def test_replies_sent_to_the_broker_are_unexpected(self):
        for command, body in [(obx.PONG, obx.u64(5)),
                              (obx.WELCOME, obx.u64(1) + obx.u32(1) + obx.u32(1) + obx.str16("b")),
                              (obx.OFFSET_COMMITTED, obx.commit_body(6, "t", "g", 1)),
                              (obx.RESUMED, obx.u64(1) + obx.u32(0))]:
            self.conn.send(command, body)
            self.expect_error(self.conn.receive(), "unexpected_command")

    def test_a_client_error_is_not_answered(self):
        self.conn.send(obx.ERROR, obx.u64(1) + obx.u16(15) + obx.str16("client says hi"))
        self.assertIsNone(self.conn.receive_raw(timeout_ms=300))
        command, _ = self.conn.request(obx.PING, obx.u64(1))
        self.assertEqual(command, obx.PONG)


class TestConsume(BrokerTest):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        conn = cls.broker.connect()
        session = conn.hello()["session_id"]
        command, ack = conn.publish(session, 1, [obx.message("m-%d" % i, "cons", "p%d" % i,
                                                             key="k%d" % (i % 3))
                                                 for i in range(1, 41)])
        assert command == obx.ACK and len(ack["entries"]) == 40, ack
        conn.close()

    def test_fetch_pages_with_next_and_last_offset(self):
        command, page = self.conn.fetch(1, "cons", from_offset=1, max_messages=15)
        self.assertEqual(command, obx.MESSAGES)
        self.assertEqual(page["request_id"], 1)
        self.assertEqual([m["offset"] for m in page["messages"]], list(range(1, 16)))
        self.assertEqual(page["next_offset"], 16)
        self.assertEqual(page["last_offset"], 40)
        command, rest = self.conn.fetch(2, "cons", from_offset=page["next_offset"])
        self.assertEqual([m["offset"] for m in rest["messages"]], list(range(16, 41)))
        self.assertEqual(rest["next_offset"], 41)

    def test_from_offset_zero_reads_as_one(self):
        _, page = self.conn.fetch(3, "cons", from_offset=0, max_messages=1)
        self.assertEqual(page["messages"][0]["offset"], 1)

    def test_max_bytes_lets_the_first_message_through(self):
        _, page = self.conn.fetch(4, "cons", from_offset=5, max_bytes=1)
        self.assertEqual([m["offset"] for m in page["messages"]], [5])

    def test_long_poll_answers_when_a_message_is_stored(self):
        waiter = self.broker.connect()
        self.addCleanup(waiter.close)
        waiter.send(obx.FETCH, obx.fetch_body(5, "lp", from_offset=1, wait_ms=10000))
        self.assertIsNone(waiter.receive_raw(timeout_ms=200))  # nothing there yet
        session = self.conn.hello()["session_id"]
        self.publish_ok(session, 1, [obx.message("lp-1", "lp", "x")])
        command, reply = waiter.receive(timeout_ms=5000)
        self.assertEqual(command, obx.MESSAGES)
        self.assertEqual([m["msg_id"] for m in reply["messages"]], [b"lp-1"])

    def test_long_poll_times_out_empty(self):
        command, reply = self.conn.fetch(6, "nothing-here", from_offset=1, wait_ms=100)
        self.assertEqual(command, obx.MESSAGES)
        self.assertEqual(reply["messages"], [])
        self.assertEqual(reply["last_offset"], 0)

    def test_group_offsets_resume_after_the_committed_offset(self):
        command, reply = self.conn.request(obx.COMMIT_OFFSET, obx.commit_body(7, "cons", "g1", 12))
        self.assertEqual(command, obx.OFFSET_COMMITTED)
        self.assertEqual(reply, {"request_id": 7, "topic": b"cons", "group": b"g1", "offset": 12})
        _, page = self.conn.fetch(8, "cons", group="g1", use_group=True, max_messages=2)
        self.assertEqual([m["offset"] for m in page["messages"]], [13, 14])
        self.conn.request(obx.COMMIT_OFFSET, obx.commit_body(9, "cons", "g1", 3))  # rewind
        _, page = self.conn.fetch(10, "cons", group="g1", use_group=True, max_messages=1)
        self.assertEqual(page["messages"][0]["offset"], 4)

    def test_a_group_that_never_committed_starts_at_from_offset(self):
        _, page = self.conn.fetch(11, "cons", group="fresh", use_group=True, from_offset=30,
                                  max_messages=1)
        self.assertEqual(page["messages"][0]["offset"], 30)

    def test_commit_past_the_end_or_on_an_unknown_topic_is_refused(self):
        reply = self.conn.request(obx.COMMIT_OFFSET, obx.commit_body(12, "cons", "g2", 1000))
        self.expect_error(reply, "invalid_value", 12)
        reply = self.conn.request(obx.COMMIT_OFFSET, obx.commit_body(13, "no-such-topic", "g2", 1))
        self.expect_error(reply, "invalid_value", 13)
        _, page = self.conn.fetch(14, "cons", group="g2", use_group=True, max_messages=1)
        self.assertEqual(page["messages"][0]["offset"], 1)

    def test_commit_without_group_is_invalid(self):
        reply = self.conn.request(obx.COMMIT_OFFSET, obx.commit_body(15, "cons", "", 1))
        self.expect_error(reply, "invalid_value", 15)

    def test_stats_counts_and_lists_topics(self):
        stats = self.conn.stats(request_id=16)
        self.assertEqual(stats["request_id"], 16)
        for name in ["stored", "duplicates", "conflicts", "rejected", "dedup_entries",
                     "malformed", "sessions_opened"]:
            self.assertIn(name, stats["counters"])
        self.assertGreaterEqual(stats["counters"]["stored"], 40)
        self.assertEqual(stats["topics"]["cons"]["last_offset"], 40)


class TestStorageFailure(BrokerTest):
    broker_args = ("--max-database-size", "1m")

    def test_a_full_store_answers_storage_failure_and_stores_nothing(self):
        session = self.conn.hello()["session_id"]
        big = b"q" * 200_000
        batch_id = 0
        for i in range(40):
            batch_id += 1
            command, reply = self.conn.publish(session, batch_id,
                                               [obx.message("full-%d" % i, "full", big)])
            if command == obx.ERROR:
                self.expect_error((command, reply), "storage_failure", batch_id)
                break
            self.assertEqual(reply["entries"][0]["status"], obx.STORED)
        else:
            self.fail("a 1 MiB store took 8 MB")
        stored = len(self.fetch_all("full"))
        self.assertEqual(stored, batch_id - 1)


if __name__ == "__main__":
    unittest.main()
