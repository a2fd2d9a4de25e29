"""The ZeroMQ envelope: signed, fresh, never replayed, and authenticated before anything is parsed.

A message is a *hint* or a *report*, never the only copy of anything: MongoDB is the truth, and every
receiver can rebuild from it. Frames: ``[frame]`` on PUSH/PULL, ``[topic, frame]`` on PUB/SUB where
the topic is the node name followed by a NUL byte, so that subscribing to ``w1`` never matches ``w10``.

One frame::

    b"RSW2" | sender length (2 bytes, big-endian) | sender (ASCII) | MAC (32 bytes) | payload (JSON)

The MAC is HMAC-SHA256 over every byte but itself, with the key of (sender, receiver) from
Common/keys.py. A receiver reads the sender from the fixed header, takes the key it holds for that
sender (none: dropped), and compares the MAC over the raw bytes *before* it parses any JSON, so an
unauthenticated peer never reaches the parser. The payload is ``{"v", "kind", "to", "ts", "ctr",
"body"}``; then, in order, a frame is dropped when:

- it is not addressed to this receiver (``to``), so a frame cannot be replayed to another actor;
- its sender may not send that kind here (``ACCEPT``: least privilege), or a Worker's report names
  another node than the one whose key signed it;
- its body does not match the kind's schema;
- its ``ts`` is more than the replay window (``zmq.replay_window_seconds``) from the receiver's clock,
  either way;
- its counter ``ctr = [instance, seq]`` is not above the last one accepted from that sender instance.
  Each Sender object draws a random ``instance`` at start and counts ``seq`` from 1, so a restarted
  sender (or one of several gunicorn workers with the same role) is a new instance, accepted at once,
  without any ordering between clocks of different processes. The receiver keeps each instance's last
  ``seq`` for twice the window after its last accepted frame: a replayed frame is refused by its
  counter while its ``ts`` is fresh and by its ``ts`` afterwards.

Receiving sockets cap a frame with ZMQ_MAXMSGSIZE (``zmq.max_frame_bytes``; libzmq disconnects a peer
that sends more). Any exception while decoding one frame drops that frame, counted and logged at most
once per ``LOG_EVERY`` seconds; nothing escapes ``recv``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import queue
import re
import struct
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import zmq

from Common.evmstates import check_report_items
from Common.keys import Keyring, hollow_of, is_party, node_of
from Common.metrics import ZMQ_MESSAGES
from Common.states import TaskState

if TYPE_CHECKING:
    from Common.config import ZmqConfig

log = logging.getLogger(__name__)

VERSION = 2
MAGIC = b"RSW2"
MAC_BYTES = 32
MAX_FRAME_BYTES = 64 * 1024  # default of zmq.max_frame_bytes
REPLAY_WINDOW = 30.0  # default of zmq.replay_window_seconds
MAX_INSTANCES_PER_SENDER = 64  # live instances of one sender a receiver tracks; more are refused
LOG_EVERY = 10.0  # seconds between two log lines about dropped frames, per receiver
_INSTANCE = re.compile(r"^[0-9a-f]{16}$")
_ENVELOPE = {"v", "kind", "to", "ts", "ctr", "body"}

# What each sender may send to each receiver: receiver role -> sender role -> kinds. A Worker ("worker")
# only reports to Discovery, about its own node; only the control plane hints the JobManager (which
# acts on hints) and Discovery (a drain), and only the GlobalManager dispatches to Workers.
WORKER_REPORTS = frozenset({"heartbeat", "worker_up", "task_status", "task_applied", "migration_status",
                            "evm_status", "epm_removed"})
ACCEPT: dict[str, dict[str, frozenset[str]]] = {
    "discovery": {"worker": WORKER_REPORTS, "hollow": frozenset({"task_status", "heartbeats"}),
                  "frontend": frozenset({"hint"}),
                  "globalmanager": frozenset({"task_status"})},
    "jobmanager": {"frontend": frozenset({"hint"}), "discovery": frozenset({"hint"})},
    "worker": {"globalmanager": frozenset({"dispatch"})},
}


def role_of(party: str) -> str:
    if node_of(party) is not None:
        return "worker"
    return "hollow" if hollow_of(party) is not None else party


# kind -> {field: (types, required)}
SCHEMAS: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "hint": {"reason": ((str,), True), "job_id": ((str,), False), "node": ((str,), False)},
    "dispatch": {"reason": ((str,), True), "job_id": ((str,), False)},
    "heartbeat": {"node": ((str,), True), "at": ((int, float), True)},
    # a Worker (re)registered with its cores free: Discovery hints the JobManager (workers may not hint it)
    "worker_up": {"node": ((str,), True), "at": ((int, float), True)},
    "heartbeats": {"host": ((str,), True), "at": ((int, float), True)},  # a hollow host: all its nodes at once
    "task_applied": {
        "job_id": ((str,), True),
        "task": ((str,), True),
        "attempt": ((int,), True),
        "generation": ((int,), True),
        "ok": ((bool,), True),
        "node": ((str,), True),
        "reason": ((str,), False),
    },
    "migration_status": {
        "migration_id": ((str,), True),
        "state": ((str,), True),
        "node": ((str,), True),
        "at": ((int, float), True),
        "reason": ((str,), False),
        "checkpoint_id": ((str,), False),
        "container_id": ((str,), False),
        "timings": ((dict,), False),
        "addresses": ((dict,), False),  # the restored container's, as in task_status
    },
    "task_status": {
        "job_id": ((str,), True),
        "task": ((str,), True),
        "attempt": ((int,), True),
        "state": ((str,), True),
        "node": ((str,), True),
        "at": ((int, float), True),
        "container_id": ((str,), False),
        "exit_code": ((int,), False),
        "reason": ((str,), False),
        "log_tail": ((str,), False),
        "addresses": ((dict,), False),  # network name -> the container's IPv4 address there (RUNNING)
    },
    # An EPM agent's EVM outcomes, relayed by its Worker (Common.evmstates.check_report_items).
    "evm_status": {
        "job_id": ((str,), True),
        "epm": ((str,), True),
        "attempt": ((int,), True),
        "node": ((str,), True),
        "container": ((str,), True),
        "host": ((dict,), False),
        "items": ((list,), True),
    },
    # An EPM container is gone: its EVMs went with it.
    "epm_removed": {
        "job_id": ((str,), True),
        "epm": ((str,), True),
        "attempt": ((int,), True),
        "node": ((str,), True),
        "at": ((int, float), True),
        "reason": ((str,), False),
    },
}


class BadMessage(ValueError):
    """A frame that is not a valid, signed envelope; it is dropped and counted, never acted on."""


class Refused(BadMessage):
    """A valid, signed frame refused by freshness or replay: ``outcome`` is "stale" or "replayed"."""

    def __init__(self, outcome: str, kind: str, message: str) -> None:
        super().__init__(message)
        self.outcome, self.kind = outcome, kind


@dataclass(frozen=True)
class Envelope:
    kind: str
    body: dict[str, Any]
    sender: str
    to: str
    ts: float
    instance: str
    seq: int


def check_body(kind: str, body: Any) -> None:
    schema = SCHEMAS.get(kind)
    if schema is None:
        raise BadMessage(f"unknown kind {kind!r}")
    if not isinstance(body, dict):
        raise BadMessage("body must be an object")
    for name in body:
        if name not in schema:
            raise BadMessage(f"{kind}: unknown field {name!r}")
    for name, (types, required) in schema.items():
        if name not in body or body[name] is None:
            if required:
                raise BadMessage(f"{kind}: missing field {name!r}")
            continue
        value = body[name]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise BadMessage(f"{kind}: field {name!r} has the wrong type")
    if kind == "task_status":
        try:
            TaskState(body["state"])
        except ValueError:
            raise BadMessage(f"task_status: unknown state {body['state']!r}") from None
        if body["attempt"] < 0:
            raise BadMessage("task_status: attempt must be >= 0")
    if kind in ("task_status", "migration_status"):
        check_addresses(body.get("addresses") or {})
    if kind == "evm_status":
        try:
            check_report_items(body["items"])
        except ValueError as exc:
            raise BadMessage(f"evm_status: {exc}") from None
        host = body.get("host") or {}
        if not all(k in ("ip", "mac", "name") and isinstance(v, str) for k, v in host.items()):
            raise BadMessage("evm_status: host holds ip, mac and name strings")


def check_addresses(addresses: dict[str, Any]) -> None:
    """A task's addresses: at most 16 networks, each name mapped to an IPv4 address."""
    if len(addresses) > 16:
        raise BadMessage("addresses: at most 16 networks")
    for net, ip in addresses.items():
        if not isinstance(ip, str) or len(net) > 200:
            raise BadMessage("addresses map network names to IPv4 addresses")
        try:
            ipaddress.IPv4Address(ip)
        except ValueError:
            raise BadMessage(f"addresses: {ip!r} is not an IPv4 address") from None


def _header(sender: str) -> bytes:
    raw = sender.encode("ascii")
    return MAGIC + struct.pack(">H", len(raw)) + raw


def encode(kind: str, body: dict[str, Any], sender: str, key: bytes, to: str, instance: str = "0" * 16,
           seq: int = 1, ts: float | None = None) -> bytes:
    """One signed frame. ``instance`` and ``seq`` are the replay counter (see the module docstring)."""
    check_body(kind, body)
    doc = {"v": VERSION, "kind": kind, "to": to, "ts": time.time() if ts is None else ts,
           "ctr": [instance, seq], "body": body}
    head, payload = _header(sender), json.dumps(doc, separators=(",", ":")).encode()
    return head + hmac.new(key, head + payload, hashlib.sha256).digest() + payload


def peek_sender(frame: bytes) -> str:
    """The sender named in a frame's fixed header (not yet authenticated); BadMessage if there is none."""
    if len(frame) < len(MAGIC) + 2 or not frame.startswith(MAGIC):
        raise BadMessage("not an RSW2 frame")
    (n,) = struct.unpack_from(">H", frame, len(MAGIC))
    start = len(MAGIC) + 2
    if n == 0 or n > 300 or len(frame) < start + n + MAC_BYTES:
        raise BadMessage("truncated header")
    try:
        sender = frame[start:start + n].decode("ascii")
    except UnicodeDecodeError:
        raise BadMessage("sender is not ASCII") from None
    if not is_party(sender):
        raise BadMessage("unknown sender")
    return sender


def decode(frame: bytes, keys: Keyring, to: str, max_bytes: int = MAX_FRAME_BYTES) -> Envelope:
    """The envelope of a frame signed with the key ``keys`` holds for (its sender, ``to``), addressed to
    ``to``; BadMessage otherwise. Stateless: freshness and replay are the Receiver's (``ReplayGuard``)."""
    if len(frame) > max_bytes:
        raise BadMessage(f"frame of {len(frame)} bytes exceeds {max_bytes}")
    sender = peek_sender(frame)
    key = keys.key(sender, to)
    if key is None:
        raise BadMessage(f"no key for frames from {sender} to {to}")
    head = len(MAGIC) + 2 + len(sender)
    mac, payload = frame[head:head + MAC_BYTES], frame[head + MAC_BYTES:]
    if not hmac.compare_digest(mac, hmac.new(key, frame[:head] + payload, hashlib.sha256).digest()):
        raise BadMessage("bad signature")
    # Authenticated from here on; still checked, since a bug must not kill the receiver either.
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, deep nesting, a 5,000-digit number
        raise BadMessage(f"payload is not JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or set(doc) != _ENVELOPE:
        raise BadMessage("payload is not an envelope")
    if doc["v"] != VERSION:
        raise BadMessage(f"unsupported envelope version {doc['v']!r}")
    if doc["to"] != to:
        raise BadMessage(f"addressed to {doc['to']!r}, not {to!r}")
    kind, ts, ctr = doc["kind"], doc["ts"], doc["ctr"]
    if not isinstance(kind, str):
        raise BadMessage("kind must be a string")
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
        raise BadMessage("ts must be a number")
    if (not isinstance(ctr, list) or len(ctr) != 2 or not isinstance(ctr[0], str) or not _INSTANCE.match(ctr[0])
            or isinstance(ctr[1], bool) or not isinstance(ctr[1], int) or ctr[1] < 1):
        raise BadMessage("ctr must be [16 hex digits, seq >= 1]")
    authorize(to, sender, kind, doc["body"])
    check_body(kind, doc["body"])
    return Envelope(kind, doc["body"], sender, to, float(ts), ctr[0], ctr[1])


def authorize(to: str, sender: str, kind: str, body: Any) -> None:
    """Least privilege: may ``sender`` send ``kind`` to ``to``? A Worker reports only about its own node."""
    if kind not in ACCEPT.get(role_of(to), {}).get(role_of(sender), frozenset()):
        raise BadMessage(f"{sender} may not send {kind!r} to {to}")
    node = node_of(sender)
    if node is not None and (not isinstance(body, dict) or body.get("node") != node):
        raise BadMessage(f"{sender} reports about another node")
    prefix = hollow_of(sender)  # a hollow host reports only about its own nodes
    if prefix is not None and not (isinstance(body, dict) and (body.get("host") == prefix or (
            isinstance(body.get("node"), str) and body["node"].startswith(prefix)))):
        raise BadMessage(f"{sender} reports about a node that is not its own")


class ReplayGuard:
    """Per receiver: drops frames outside the window and frames whose counter is not new.

    State is one entry per sender instance, kept for ``2 * window`` after its last accepted frame (a
    frame accepted at receiver time t has ts >= t - window, so after t + 2 * window it is stale anyway).
    """

    def __init__(self, window: float = REPLAY_WINDOW) -> None:
        self.window = window
        self._last: dict[tuple[str, str], tuple[int, float]] = {}  # (sender, instance) -> (seq, monotonic)
        self._per_sender: dict[str, int] = {}
        self._evict_at = 0.0

    def admit(self, env: Envelope, now: float | None = None, mono: float | None = None) -> None:
        """Record ``env`` as accepted, or raise Refused (stale or replayed) without recording anything."""
        now = time.time() if now is None else now
        mono = time.monotonic() if mono is None else mono
        if mono >= self._evict_at:
            self._evict(mono)
        if env.ts < now - self.window:
            raise Refused("stale", env.kind,
                          f"frame from {env.sender} is {now - env.ts:.0f}s old (window {self.window:.0f}s)")
        if env.ts > now + self.window:
            raise Refused("stale", env.kind, f"frame from {env.sender} is {env.ts - now:.0f}s ahead of this clock")
        key = (env.sender, env.instance)
        last = self._last.get(key)
        if last is not None and env.seq <= last[0]:
            raise Refused("replayed", env.kind, f"replayed frame from {env.sender} (seq {env.seq} <= {last[0]})")
        if last is None:
            if self._per_sender.get(env.sender, 0) >= MAX_INSTANCES_PER_SENDER:
                raise Refused("replayed", env.kind, f"{env.sender} has too many live instances")
            self._per_sender[env.sender] = self._per_sender.get(env.sender, 0) + 1
        self._last[key] = (env.seq, mono)

    def _evict(self, mono: float) -> None:
        for key, (_seq, at) in list(self._last.items()):
            if at < mono - 2 * self.window:
                del self._last[key]
                self._per_sender[key[0]] -= 1
                if not self._per_sender[key[0]]:
                    del self._per_sender[key[0]]
        self._evict_at = mono + self.window / 2


def topic(node: str) -> bytes:
    return node.encode() + b"\x00"


def _socket(ctx: zmq.Context, kind: int, max_bytes: int) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    # Inbound frames larger than this make libzmq drop the peer before the frame is ever buffered.
    sock.setsockopt(zmq.MAXMSGSIZE, max_bytes)
    return sock


def _limits(limits: ZmqConfig | None) -> tuple[int, float]:
    if limits is None:
        return MAX_FRAME_BYTES, REPLAY_WINDOW
    return limits.max_frame_bytes, limits.replay_window_seconds


class Sender:
    """A PUSH (or PUB) socket owned by one background thread, safe to call from any thread.

    ``send`` checks the body and never blocks the caller: when the queue is full the hint is dropped
    (the receiver's periodic sweep recovers it), which is the right trade for hints. Frames are signed
    in the socket's thread, so the counter goes out in the order it was drawn.
    ``to`` is the receiver's party name; a PUB sender addresses each frame to ``worker-<node>``.
    """

    def __init__(self, endpoint: str, sender: str, keys: Keyring, to: str | None = None, pub: bool = False,
                 bind: bool = False, limits: ZmqConfig | None = None) -> None:
        if not is_party(sender):
            raise ValueError(f"unknown sender {sender!r}")
        self.endpoint, self.sender, self.keys, self.to, self.pub = endpoint, sender, keys, to, pub
        self.max_bytes, _ = _limits(limits)
        self.instance = os.urandom(8).hex()
        self._seq = 0
        self._queue: queue.Queue[tuple[bytes | None, str, dict[str, Any], str, bytes] | None] = \
            queue.Queue(maxsize=10000)
        self.dropped = 0
        self.sent = 0
        self._ready = threading.Event()
        self._bind = bind
        self._thread = threading.Thread(target=self._run, name=f"zmq-send-{endpoint}", daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def _run(self) -> None:
        ctx = zmq.Context.instance()
        sock = _socket(ctx, zmq.PUB if self.pub else zmq.PUSH, self.max_bytes)
        sock.setsockopt(zmq.SNDHWM, 10000)
        if self._bind:
            sock.bind(self.endpoint)
        else:
            sock.connect(self.endpoint)
        self._ready.set()
        while True:
            item = self._queue.get()
            if item is None:
                break
            top, kind, body, to, key = item
            self._seq += 1
            try:
                payload = encode(kind, body, self.sender, key, to, self.instance, self._seq)
            except Exception:  # e.g. a value JSON cannot carry: drop this one, keep the thread alive
                self.dropped += 1
                ZMQ_MESSAGES.labels("out", kind, "dropped").inc()
                log.exception("could not encode a %s frame; dropped", kind)
                continue
            if len(payload) > self.max_bytes:  # the receiver would drop the connection: never send it
                self.dropped += 1
                ZMQ_MESSAGES.labels("out", kind, "oversized").inc()
                log.warning("not sending a %s frame of %d bytes (limit %d)", kind, len(payload), self.max_bytes)
                continue
            try:
                if top is None:
                    sock.send(payload, zmq.NOBLOCK)
                else:
                    sock.send_multipart([top, payload], zmq.NOBLOCK)
                self.sent += 1
                ZMQ_MESSAGES.labels("out", kind, "sent").inc()
            except zmq.Again:
                self.dropped += 1
                ZMQ_MESSAGES.labels("out", kind, "dropped").inc()
        sock.close(0)

    def send(self, kind: str, body: dict[str, Any], node: str | None = None) -> None:
        check_body(kind, body)
        to = f"worker-{node}" if node is not None else self.to
        key = self.keys.key(self.sender, to) if to is not None else None
        if key is None:
            raise ValueError(f"{self.sender} holds no key for frames to {to}")
        try:
            self._queue.put_nowait((topic(node) if node is not None else None, kind, body, to, key))
        except queue.Full:
            self.dropped += 1
            ZMQ_MESSAGES.labels("out", kind, "dropped").inc()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(2)


class _DropLog:
    """Counts dropped frames and logs at most one line per LOG_EVERY seconds, with the count since."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.pending = 0
        self.next_at = 0.0

    def __call__(self, why: str) -> None:
        self.pending += 1
        now = time.monotonic()
        if now >= self.next_at:
            more = f" (and {self.pending - 1} more since the last report)" if self.pending > 1 else ""
            log.warning("dropped a frame on %s: %s%s", self.where, why, more)
            self.pending = 0
            self.next_at = now + LOG_EVERY


class Receiver:
    """A bound PULL socket or a connected SUB socket; yields checked messages, drops bad ones.

    ``name`` is this receiver's party (``discovery``, ``jobmanager``; a SUB socket is ``worker-<node>``
    of the node it subscribes for). ``recv`` never raises.
    """

    def __init__(self, endpoint: str, keys: Keyring, name: str | None = None, subscribe: str | None = None,
                 limits: ZmqConfig | None = None) -> None:
        ctx = zmq.Context.instance()
        self.keys = keys
        self.subscribe = subscribe
        self.name = name if name is not None else f"worker-{subscribe}"
        if not is_party(self.name) or (subscribe is not None and self.name != f"worker-{subscribe}"):
            raise ValueError(f"bad receiver name {self.name!r}")
        self.max_bytes, window = _limits(limits)
        self.guard = ReplayGuard(window)
        self._drop = _DropLog(f"{self.name} ({endpoint})")
        if subscribe is None:
            self.sock = _socket(ctx, zmq.PULL, self.max_bytes)
            self.sock.bind(endpoint)
        else:
            self.sock = _socket(ctx, zmq.SUB, self.max_bytes)
            self.sock.setsockopt(zmq.SUBSCRIBE, topic(subscribe))
            self.sock.connect(endpoint)
        self.sock.setsockopt(zmq.RCVHWM, 100000)
        self.received = 0
        self.rejected = 0

    def _one(self, frames: list[bytes]) -> Envelope:
        if self.subscribe is None:
            if len(frames) != 1:
                raise BadMessage(f"expected 1 frame, got {len(frames)}")
            payload = frames[0]
        else:
            if len(frames) != 2 or frames[0] != topic(self.subscribe):
                raise BadMessage("wrong topic or frame count")
            payload = frames[1]
        env = decode(payload, self.keys, self.name, self.max_bytes)
        self.guard.admit(env)
        return env

    def recv(self, timeout: float) -> tuple[str, dict[str, Any], str] | None:
        """The next valid message as (kind, body, sender), or None when ``timeout`` seconds pass without
        one. Never raises: a frame that fails in any way is dropped."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0 or not self.sock.poll(int(remaining * 1000)):
                    return None
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError as exc:  # e.g. EAGAIN after a poll, or a socket being closed
                self._drop(f"socket error {exc}")
                time.sleep(min(max(remaining, 0.0), 0.1))
                continue
            try:
                env = self._one(frames)
            except Exception as exc:  # one frame, whatever is wrong with it (even a bug), is dropped
                outcome, kind = (exc.outcome, exc.kind) if isinstance(exc, Refused) else ("rejected", "invalid")
                self.rejected += 1
                ZMQ_MESSAGES.labels("in", kind, outcome).inc()
                self._drop(f"{outcome}: {type(exc).__name__}: {str(exc)[:200]}")
                continue
            self.received += 1
            ZMQ_MESSAGES.labels("in", env.kind, "accepted").inc()
            return env.kind, env.body, env.sender

    def drain(self, timeout: float, limit: int | None = None) -> list[tuple[str, dict[str, Any], str]]:
        """Wait up to ``timeout`` for one message, then take the others already queued, at most ``limit``
        in all (a long backlog is taken in slices, so the caller's own pace is kept)."""
        first = self.recv(timeout)
        if first is None:
            return []
        out = [first]
        while (limit is None or len(out) < limit) and (msg := self.recv(0.001)) is not None:
            out.append(msg)
        return out

    def close(self) -> None:
        self.sock.close(0)
