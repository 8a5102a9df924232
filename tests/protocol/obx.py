"""A client of the outbox-broker wire protocol, written from docs/protocol.md alone.

It shares no code with the C++ implementation on purpose: the tests in this folder
check that the document is enough to build a working client, and that the broker
does what the document says, byte for byte.
"""

import os
import signal
import struct
import subprocess
import tempfile
import time

import zmq

VERSION = 2
MAGIC = b"OBX"

HELLO, WELCOME, PUBLISH, ACK, FETCH, MESSAGES = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
COMMIT_OFFSET, OFFSET_COMMITTED, PING, PONG, STATS, STATS_REPLY, ERROR = (
    0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D)
RESUME, RESUMED = 0x0E, 0x0F

STORED, DUPLICATE, CONFLICT, REJECTED, BLOCKED = 0, 1, 2, 3, 4

ERROR_CODES = {
    "bad_frame_count": 1,
    "bad_tag": 2,
    "unsupported_version": 3,
    "unknown_command": 4,
    "truncated": 5,
    "trailing_bytes": 6,
    "limit_exceeded": 7,
    "invalid_value": 8,
    "unexpected_command": 9,
    "no_session": 10,
    "session_failed": 11,
    "storage_failure": 12,
    "shutting_down": 13,
    "busy": 14,
    "internal": 15,
    "stale_epoch": 16,
}


def tag(version=VERSION):
    return MAGIC + bytes([version])


# ---- field encoders -------------------------------------------------------------

def u8(v):
    return struct.pack("<B", v)


def u16(v):
    return struct.pack("<H", v)


def u32(v):
    return struct.pack("<I", v)


def u64(v):
    return struct.pack("<Q", v)


def str16(v):
    if isinstance(v, str):
        v = v.encode()
    return u16(len(v)) + v


def bytes32(v):
    if isinstance(v, str):
        v = v.encode()
    return u32(len(v)) + v


def headers(pairs):
    out = u16(len(pairs))
    for name, value in pairs:
        out += str16(name) + bytes32(value)
    return out


# ---- field decoders -------------------------------------------------------------

class Reader:
    def __init__(self, body):
        self.body = body
        self.pos = 0

    def take(self, n):
        if self.pos + n > len(self.body):
            raise ValueError("truncated body")
        out = self.body[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self):
        return self.take(1)[0]

    def u16(self):
        return struct.unpack("<H", self.take(2))[0]

    def u32(self):
        return struct.unpack("<I", self.take(4))[0]

    def u64(self):
        return struct.unpack("<Q", self.take(8))[0]

    def i64(self):
        return struct.unpack("<q", self.take(8))[0]

    def str16(self):
        return self.take(self.u16())

    def bytes32(self):
        return self.take(self.u32())

    def headers(self):
        return [(self.str16(), self.bytes32()) for _ in range(self.u16())]

    def done(self):
        if self.pos != len(self.body):
            raise ValueError("%d trailing bytes" % (len(self.body) - self.pos))


# ---- request bodies ---------------------------------------------------------------

# HELLO flag bit 0: one of several sessions on the connection, one per origin.
HELLO_ONE_OF_SEVERAL = 1
# HELLO flag bit 1: the body ends with a hello_id that the answer names.
HELLO_WITH_ID = 2


def hello_body(producer="pyclient", origin="", epoch=0, flags=0, hello_id=None):
    body = u32(flags) + str16(producer) + str16(origin) + u64(epoch)
    return body + (u64(hello_id) if hello_id is not None else b"")


def message(msg_id, topic, payload, key="", hdrs=()):
    return str16(msg_id) + str16(topic) + str16(key) + headers(list(hdrs)) + bytes32(payload)


def publish_body(session_id, batch_id, messages):
    return u64(session_id) + u64(batch_id) + u32(len(messages)) + b"".join(messages)


def resume_body(session_id, previous_session_id, from_batch_id):
    return u64(session_id) + u64(previous_session_id) + u64(from_batch_id)


def fetch_body(request_id, topic, group="", from_offset=0, use_group=False, max_messages=0,
               max_bytes=0, wait_ms=0, flags=None):
    if flags is None:
        flags = 1 if use_group else 0
    return (u64(request_id) + str16(topic) + str16(group) + u64(from_offset) + u8(flags) +
            u32(max_messages) + u32(max_bytes) + u32(wait_ms))


def commit_body(request_id, topic, group, offset):
    return u64(request_id) + str16(topic) + str16(group) + u64(offset)


# ---- reply decoding ----------------------------------------------------------------

def decode(frames, version=VERSION):
    """Checks the reply's shape against the document and returns (command, dict)."""
    if len(frames) != 3:
        raise ValueError("reply has %d frames" % len(frames))
    if frames[0] != tag(version):
        raise ValueError("reply tag %r" % frames[0])
    if len(frames[1]) != 1:
        raise ValueError("command frame of %d bytes" % len(frames[1]))
    command = frames[1][0]
    r = Reader(frames[2])
    if command == WELCOME:
        out = {"session_id": r.u64(), "max_message_bytes": r.u32(),
               "max_batch_messages": r.u32(), "broker_name": r.str16()}
        # Limits appended in version 2 (see docs/protocol.md, WELCOME).
        out["limits"] = read_welcome_limits(r)
        # Only in answer to a HELLO with flag bit 1 (docs/protocol.md, HELLO ids).
        out["hello_id"] = r.u64() if r.pos < len(r.body) else None
    elif command == ACK:
        out = read_ack(r)
    elif command == RESUMED:
        out = {"previous_session_id": r.u64()}
        out["acks"] = [read_ack(r) for _ in range(r.u32())]
    elif command == MESSAGES:
        out = {"request_id": r.u64(), "topic": r.str16(), "next_offset": r.u64(),
               "last_offset": r.u64()}
        out["messages"] = [
            {"offset": r.u64(), "timestamp_ms": r.i64(), "msg_id": r.str16(), "key": r.str16(),
             "headers": r.headers(), "payload": r.bytes32()} for _ in range(r.u32())]
    elif command == OFFSET_COMMITTED:
        out = {"request_id": r.u64(), "topic": r.str16(), "group": r.str16(), "offset": r.u64()}
    elif command == PONG:
        out = {"nonce": r.u64()}
    elif command == STATS_REPLY:
        out = {"request_id": r.u64()}
        out["counters"] = dict((r.str16().decode(), r.u64()) for _ in range(r.u32()))
        out["topics"] = dict((r.str16().decode(), {"messages": r.u64(), "last_offset": r.u64()})
                             for _ in range(r.u32()))
    elif command == ERROR:
        out = {"request_id": r.u64(), "code": r.u16(), "message": r.str16().decode()}
    else:
        raise ValueError("unexpected reply command 0x%02x" % command)
    r.done()
    return command, out


def read_ack(r):
    batch_id = r.u64()
    entries = []
    for _ in range(r.u32()):
        entries.append({"status": r.u8(), "offset": r.u64(), "reason": r.str16()})
    return {"batch_id": batch_id, "entries": entries}


def read_welcome_limits(r):
    names = WELCOME_LIMIT_FIELDS
    return dict((name, r.u32()) for name in names)


# docs/protocol.md, WELCOME: the limits a client must respect, in this order.
WELCOME_LIMIT_FIELDS = ("max_body_bytes", "max_msg_id_bytes", "max_name_bytes", "max_key_bytes",
                        "max_headers", "max_header_name_bytes", "max_header_value_bytes",
                        "max_payload_bytes")


# ---- a connection -------------------------------------------------------------------

class Connection:
    def __init__(self, endpoint, timeout_ms=5000):
        self.context = zmq.Context.instance()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)
        self.timeout_ms = timeout_ms
        self.poller = zmq.Poller()
        self.poller.register(self.socket, zmq.POLLIN)

    def close(self):
        self.socket.close(0)

    def send_raw(self, frames):
        self.socket.send_multipart(frames)

    def send(self, command, body, version=VERSION):
        self.send_raw([tag(version), bytes([command]), body])

    def receive_raw(self, timeout_ms=None):
        events = dict(self.poller.poll(self.timeout_ms if timeout_ms is None else timeout_ms))
        if self.socket not in events:
            return None
        return self.socket.recv_multipart()

    def receive(self, timeout_ms=None, version=VERSION):
        frames = self.receive_raw(timeout_ms)
        if frames is None:
            raise TimeoutError("no reply within %d ms" % (timeout_ms or self.timeout_ms))
        return decode(frames, version)

    def request(self, command, body, timeout_ms=None):
        self.send(command, body)
        return self.receive(timeout_ms)

    def hello(self, **kwargs):
        command, reply = self.request(HELLO, hello_body(**kwargs))
        if command != WELCOME:
            raise AssertionError("HELLO answered %r" % (reply,))
        return reply

    def publish(self, session_id, batch_id, messages):
        return self.request(PUBLISH, publish_body(session_id, batch_id, messages))

    def resume(self, session_id, previous_session_id, from_batch_id):
        return self.request(RESUME, resume_body(session_id, previous_session_id, from_batch_id))

    def fetch(self, request_id, topic, timeout_ms=None, **kwargs):
        return self.request(FETCH, fetch_body(request_id, topic, **kwargs), timeout_ms)

    def stats(self, request_id=1):
        command, reply = self.request(STATS, u64(request_id))
        if command != STATS_REPLY:
            raise AssertionError("STATS answered %r" % (reply,))
        return reply


# ---- the broker under test --------------------------------------------------------

class Broker:
    """Starts outbox-broker on a free loopback port in a temporary directory."""

    def __init__(self, binary, extra_args=()):
        self.dir = tempfile.TemporaryDirectory(prefix="obx-protocol-")
        self.endpoint_file = os.path.join(self.dir.name, "endpoint")
        self.log = open(os.path.join(self.dir.name, "broker.log"), "wb")
        self.process = subprocess.Popen(
            [binary, "serve", "--db", os.path.join(self.dir.name, "broker.db"),
             "--bind", "tcp://127.0.0.1:*", "--endpoint-file", self.endpoint_file,
             *extra_args],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not os.path.exists(self.endpoint_file):
            if self.process.poll() is not None:
                raise RuntimeError("outbox-broker exited with %d: %s" %
                                   (self.process.returncode, self.log_text()))
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("outbox-broker wrote no endpoint file within 20 s")
            time.sleep(0.01)  # polling the file with a deadline, not synchronising on time
        with open(self.endpoint_file) as f:
            self.endpoint = f.read().strip()

    def log_text(self):
        self.log.flush()
        with open(os.path.join(self.dir.name, "broker.log"), "rb") as f:
            return f.read().decode(errors="replace")

    def connect(self, **kwargs):
        return Connection(self.endpoint, **kwargs)

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        self.dir.cleanup()
        return self.process.returncode
