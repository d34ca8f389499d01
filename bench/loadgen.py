"""A lean MQTT 5 QoS 1 publisher for load generation: the benchmark's devices.

paho spends about 25 µs of Python per QoS 1 publish (a message object, its info, the lock, the
callback on the acknowledgement); on a two-core machine two paho publishers took 0.7 of a core
to offer ~14 500 msg/s, and so measured the load generator instead of the product. This one
writes pre-encoded PUBLISH packets straight to the socket, many per `send`, and reads the
PUBACKs in bulk: a few microseconds a message.

It is a load generator, not a client library: one connection, no TLS, no reconnect (a lost
broker ends the run with an error), MQTT 5 only. It keeps the protocol honest where the
measurement depends on it:

- no more messages in flight than the broker's Receive Maximum (from the CONNACK);
- every PUBACK is matched to its packet id; a failure reason ends the run;
- 0x10 "no matching subscribers" means nobody got the message: it is sent again (as the
  product's own publisher does), so that what was published is what reached a subscriber.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from collections import deque

from ingest.source import decode_varint

NO_MATCHING_SUBSCRIBERS = 0x10
RESEND_AFTER_S = 0.5
GIVE_UP_S = 30.0


class LoadGenError(RuntimeError):
    """The broker refused the connection or a message, or went away."""


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


class FastPublisher:
    """QoS 1 publishing over one MQTT 5 connection, pipelined up to the Receive Maximum."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        flags = 0x02  # clean start
        payload = _utf8(client_id)
        if username is not None:
            flags |= 0x80
            payload += _utf8(username)
        if password is not None:
            flags |= 0x40
            payload += _utf8(password)
        # keep-alive 0: the generator sends constantly, and has no thread to ping with
        variable = b"\x00\x04MQTT\x05" + bytes([flags]) + b"\x00\x00" + b"\x00"
        body = variable + payload
        self.sock.sendall(b"\x10" + _varint(len(body)) + body)
        self._buf = b""
        kind, data = self._read_packet()
        if kind != 0x20 or len(data) < 2:
            raise LoadGenError(f"expected CONNACK, got packet type {kind:#x}")
        if data[1] >= 0x80:
            raise LoadGenError(f"connection refused, reason {data[1]:#x}")
        self.window = _receive_maximum(data[2:])
        self.sock.setblocking(False)
        self._next_id = 0
        # packet id → (topic, payload, first "no matching subscribers" or None): for a resend
        self.inflight: dict[int, tuple[bytes, bytes, float | None]] = {}
        self._refused: deque[tuple[float, bytes, bytes, float]] = deque()  # due, message, first
        self.sent = 0
        self.acked = 0
        self.resent = 0

    # -- reading --------------------------------------------------------------------------------
    def _read_packet(self) -> tuple[int, bytes]:
        """One packet, blocking (used before the socket goes non-blocking)."""
        while True:
            parsed = _split(self._buf)
            if parsed is not None:
                kind, data, rest = parsed
                self._buf = rest
                return kind, data
            chunk = self.sock.recv(65536)
            if not chunk:
                raise LoadGenError("the broker closed the connection")
            self._buf += chunk

    def _pump(self, wait: float) -> None:
        """Read what the broker sent (waiting up to `wait` s for something) and settle acks."""
        readable, _, _ = select.select([self.sock], [], [], wait)
        if not readable:
            return
        try:
            chunk = self.sock.recv(1 << 20)
        except BlockingIOError:
            return
        if not chunk:
            raise LoadGenError("the broker closed the connection")
        buf = self._buf + chunk
        pos, end = 0, len(buf)
        now = time.monotonic()
        while end - pos >= 2:
            kind = buf[pos] & 0xF0
            decoded = decode_varint(buf, pos + 1)
            if decoded is None:
                break  # the length itself is incomplete
            length, start = decoded
            if end < start + length:
                break
            if kind == 0x40:  # PUBACK: packet id, then an optional reason code
                pid = (buf[start] << 8) | buf[start + 1]
                reason = buf[start + 2] if length > 2 else 0
                entry = self.inflight.pop(pid, None)
                if entry is None:
                    raise LoadGenError(f"PUBACK for unknown packet id {pid}")
                if reason == NO_MATCHING_SUBSCRIBERS:
                    topic, payload, first = entry
                    first = now if first is None else first
                    if now - first > GIVE_UP_S:
                        raise LoadGenError(f"no subscriber took a message for {GIVE_UP_S:.0f} s")
                    self._refused.append((now + RESEND_AFTER_S, topic, payload, first))
                elif reason >= 0x80:
                    raise LoadGenError(f"the broker refused a message, reason {reason:#x}")
                else:
                    self.acked += 1
            elif kind == 0xE0:
                raise LoadGenError("the broker sent DISCONNECT")
            pos = start + length
        self._buf = buf[pos:]

    # -- writing --------------------------------------------------------------------------------
    def _ids(self, count: int) -> list[int]:
        ids = []
        nid = self._next_id
        for _ in range(count):
            nid = nid % 65535 + 1
            ids.append(nid)
        self._next_id = nid
        return ids

    def publish_many(self, messages: list[tuple[bytes, bytes]]) -> None:
        """Send (topic, payload) pairs at QoS 1, blocking while the window is full."""
        i = 0
        while i < len(messages):
            self._resend_due()
            room = self.window - len(self.inflight)
            if room <= 0:
                self._pump(1.0)
                continue
            chunk = messages[i : i + room]
            out = []
            for pid, (topic, payload) in zip(self._ids(len(chunk)), chunk, strict=True):
                self.inflight[pid] = (topic, payload, None)
                out.append(_publish_packet(pid, topic, payload))
            self._send(b"".join(out))
            self.sent += len(chunk)
            i += len(chunk)
            self._pump(0.0)

    def _send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = self.sock.send(view)
            except BlockingIOError:
                n = 0
            if n:
                view = view[n:]
            else:  # the socket is full: serve acknowledgements meanwhile
                select.select([self.sock], [self.sock], [], 1.0)
                self._pump(0.0)

    def _resend_due(self) -> None:
        now = time.monotonic()
        while self._refused and self._refused[0][0] <= now:
            _, topic, payload, first = self._refused.popleft()
            pid = self._ids(1)[0]  # a new delivery: a new id, no DUP flag
            self.inflight[pid] = (topic, payload, first)
            self._send(_publish_packet(pid, topic, payload))
            self.resent += 1

    def flush(self, timeout: float = 120.0) -> None:
        """Wait until every message is acknowledged (resending the unclaimed)."""
        deadline = time.monotonic() + timeout
        while self.inflight or self._refused:
            if time.monotonic() > deadline:
                raise LoadGenError(
                    f"{len(self.inflight) + len(self._refused)} messages unacknowledged "
                    f"after {timeout:.0f} s"
                )
            self._resend_due()
            self._pump(0.1)

    def idle(self, seconds: float) -> None:
        """Serve acknowledgements for `seconds` (pacing to an offered rate)."""
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            self._resend_due()
            self._pump(min(left, 0.05))

    def close(self) -> None:
        try:
            self.sock.setblocking(True)
            self.sock.sendall(b"\xe0\x00")  # DISCONNECT, normal
        except OSError:
            pass
        self.sock.close()

    def __enter__(self) -> FastPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _publish_packet(pid: int, topic: bytes, payload: bytes) -> bytes:
    """A QoS 1 PUBLISH: fixed header, topic, packet id, no properties, payload."""
    rest = 2 + len(topic) + 2 + 1 + len(payload)
    return b"".join(
        (b"\x32", _varint(rest), struct.pack("!H", len(topic)), topic, struct.pack("!HB", pid, 0),
         payload)
    )  # fmt: skip


def _split(buf: bytes) -> tuple[int, bytes, bytes] | None:
    """The first whole packet of `buf` (type, body, the rest), or None."""
    decoded = decode_varint(buf, 1) if buf else None
    if decoded is None:
        return None
    length, at = decoded
    if len(buf) < at + length:
        return None
    return buf[0] & 0xF0, buf[at : at + length], buf[at + length :]


def _receive_maximum(props: bytes) -> int:
    """Receive Maximum (property 0x21) from CONNACK properties; 65 535 when absent."""
    decoded = decode_varint(props, 0)
    if decoded is None:
        return 65535
    length, at = decoded
    end = at + length
    while at < end:
        prop = props[at]
        at += 1
        if prop == 0x21:
            return int(struct.unpack_from("!H", props, at)[0])
        if prop in (0x24, 0x25, 0x28, 0x29, 0x2A):  # one byte
            at += 1
        elif prop in (0x13, 0x22):  # two bytes
            at += 2
        elif prop in (0x11, 0x27):  # four bytes
            at += 4
        elif prop in (0x12, 0x15, 0x16, 0x1A, 0x1C, 0x1F):  # string or binary
            (n,) = struct.unpack_from("!H", props, at)
            at += 2 + n
        elif prop == 0x26:  # user property: two strings
            for _ in range(2):
                (n,) = struct.unpack_from("!H", props, at)
                at += 2 + n
        else:
            break  # unknown: stop at what we understand
    return 65535
