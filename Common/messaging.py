"""The ZeroMQ envelope: versioned, signed JSON frames, validated on receipt.

A message is a *hint* or a *report*, never the only copy of anything: MongoDB is the truth, and every
receiver can rebuild from it. Frames: ``[payload]`` on PUSH/PULL, ``[topic, payload]`` on PUB/SUB where
the topic is the node name followed by a NUL byte, so that subscribing to ``w1`` never matches ``w10``.
The payload is JSON ``{"v", "kind", "sender", "ts", "body", "mac"}``; ``mac`` is an HMAC-SHA256 over
the rest with the API token, so a process that cannot read the token cannot forge a report.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import threading
import time
from typing import Any

import zmq

from Common.evmstates import check_report_items
from Common.metrics import ZMQ_MESSAGES
from Common.states import TaskState

log = logging.getLogger(__name__)

VERSION = 1
MAX_FRAME_BYTES = 64 * 1024

# kind -> {field: (types, required)}
SCHEMAS: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "hint": {"reason": ((str,), True), "job_id": ((str,), False), "node": ((str,), False)},
    "dispatch": {"reason": ((str,), True), "job_id": ((str,), False)},
    "heartbeat": {"node": ((str,), True), "at": ((int, float), True)},
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


def _mac(key: bytes, doc: dict[str, Any]) -> str:
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


def encode(kind: str, body: dict[str, Any], sender: str, key: bytes) -> bytes:
    check_body(kind, body)
    doc = {"v": VERSION, "kind": kind, "sender": sender, "ts": time.time(), "body": body}
    doc["mac"] = _mac(key, doc)
    return json.dumps(doc, separators=(",", ":")).encode()


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
    if kind == "evm_status":
        try:
            check_report_items(body["items"])
        except ValueError as exc:
            raise BadMessage(f"evm_status: {exc}") from None
        host = body.get("host") or {}
        if not all(k in ("ip", "mac", "name") and isinstance(v, str) for k, v in host.items()):
            raise BadMessage("evm_status: host holds ip, mac and name strings")


def decode(frame: bytes, key: bytes) -> tuple[str, dict[str, Any], str]:
    """(kind, body, sender) of a valid, correctly signed frame; BadMessage otherwise."""
    if len(frame) > MAX_FRAME_BYTES:
        raise BadMessage(f"frame of {len(frame)} bytes exceeds {MAX_FRAME_BYTES}")
    try:
        doc = json.loads(frame)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadMessage("frame is not JSON") from None
    if not isinstance(doc, dict) or set(doc) != {"v", "kind", "sender", "ts", "body", "mac"}:
        raise BadMessage("frame is not an envelope")
    if doc["v"] != VERSION:
        raise BadMessage(f"unsupported envelope version {doc['v']!r}")
    mac = doc.pop("mac")
    if not isinstance(mac, str) or not hmac.compare_digest(mac, _mac(key, doc)):
        raise BadMessage("bad signature")
    if not isinstance(doc["kind"], str) or not isinstance(doc["sender"], str):
        raise BadMessage("kind and sender must be strings")
    check_body(doc["kind"], doc["body"])
    return doc["kind"], doc["body"], doc["sender"]


def topic(node: str) -> bytes:
    return node.encode() + b"\x00"


def _socket(ctx: zmq.Context, kind: int) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    return sock


class Sender:
    """A PUSH (or PUB) socket owned by one background thread, safe to call from any thread.

    ``send`` never blocks the caller: when the queue is full the hint is dropped (the receiver's
    periodic sweep recovers it), which is the right trade for hints.
    """

    def __init__(self, endpoint: str, sender: str, key: bytes, pub: bool = False, bind: bool = False) -> None:
        self.endpoint, self.sender, self.key, self.pub = endpoint, sender, key, pub
        self._queue: queue.Queue[tuple[bytes | None, bytes, str] | None] = queue.Queue(maxsize=10000)
        self.dropped = 0
        self.sent = 0
        self._ready = threading.Event()
        self._bind = bind
        self._thread = threading.Thread(target=self._run, name=f"zmq-send-{endpoint}", daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def _run(self) -> None:
        ctx = zmq.Context.instance()
        sock = _socket(ctx, zmq.PUB if self.pub else zmq.PUSH)
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
            top, payload, kind = item
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
        payload = encode(kind, body, self.sender, self.key)
        try:
            self._queue.put_nowait((topic(node) if node is not None else None, payload, kind))
        except queue.Full:
            self.dropped += 1
            ZMQ_MESSAGES.labels("out", kind, "dropped").inc()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(2)


class Receiver:
    """A bound PULL socket or a connected SUB socket; yields validated messages, drops bad ones."""

    def __init__(self, endpoint: str, key: bytes, subscribe: str | None = None) -> None:
        ctx = zmq.Context.instance()
        self.key = key
        self.subscribe = subscribe
        if subscribe is None:
            self.sock = _socket(ctx, zmq.PULL)
            self.sock.bind(endpoint)
        else:
            self.sock = _socket(ctx, zmq.SUB)
            self.sock.setsockopt(zmq.SUBSCRIBE, topic(subscribe))
            self.sock.connect(endpoint)
        self.sock.setsockopt(zmq.RCVHWM, 100000)
        self.received = 0
        self.rejected = 0

    def recv(self, timeout: float) -> tuple[str, dict[str, Any], str] | None:
        """The next valid message, or None when ``timeout`` seconds pass without one."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.sock.poll(int(remaining * 1000)):
                return None
            frames = self.sock.recv_multipart(zmq.NOBLOCK)
            try:
                if self.subscribe is None:
                    if len(frames) != 1:
                        raise BadMessage(f"expected 1 frame, got {len(frames)}")
                    payload = frames[0]
                else:
                    if len(frames) != 2 or frames[0] != topic(self.subscribe):
                        raise BadMessage("wrong topic or frame count")
                    payload = frames[1]
                msg = decode(payload, self.key)
            except BadMessage as exc:
                self.rejected += 1
                ZMQ_MESSAGES.labels("in", "invalid", "rejected").inc()
                log.warning("dropped a message on %s: %s", self.sock.getsockopt(zmq.LAST_ENDPOINT), exc)
                continue
            self.received += 1
            ZMQ_MESSAGES.labels("in", msg[0], "accepted").inc()
            return msg

    def drain(self, timeout: float) -> list[tuple[str, dict[str, Any], str]]:
        """Wait up to ``timeout`` for one message, then take every other one already queued."""
        first = self.recv(timeout)
        if first is None:
            return []
        out = [first]
        while (msg := self.recv(0.001)) is not None:
            out.append(msg)
        return out

    def close(self) -> None:
        self.sock.close(0)
