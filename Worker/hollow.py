"""Hollow workers (the idea behind Kubernetes' kubemark): many emulated nodes in one process.

Each hollow node registers an emulated capacity (``"hollow": true`` on its worker document) and plays
the life of every task placed on it through the real control plane: the GlobalManager's dispatch hint
wakes it, it reports ``STARTING`` and ``RUNNING`` to Discovery over ZeroMQ exactly as a real Worker
does, and after the task's duration ``COMPLETED`` (exit code 0) or ``FAILED`` (its exit code). It starts
no container. Discovery, the JobManager, the FrontEnd and MongoDB cannot tell it from a real node,
except by the ``hollow`` flag that every view shows.

How a hollow node knows a task's duration and exit code (``plan``), in this order:

1. the task's environment: ``RSWARM_HOLLOW_DURATION`` (seconds) and ``RSWARM_HOLLOW_EXIT_CODE``;
2. its command: the sum of every ``sleep N`` in it (``["sleep", "5"]``, ``"sleep 5"``,
   ``["sh", "-c", "echo hi; sleep 2; exit 3"]``), and the last ``exit K`` as its exit code;
3. otherwise 0 s and exit code 0.

So a workload written for real Workers (the StressClient's templates and traces run ``sleep D``)
behaves the same on hollow ones, without containers.

One process hosts N nodes and shares one MongoDB connection, one ZeroMQ sender to Discovery and one
subscriber to the GlobalManager (subscribed to the nodes' common name prefix). Heartbeats are the host's:
one ``heartbeats`` message per beat, which Discovery writes once (``WorkerStore.heartbeat_host``), and
every reader of the workers sees each node's heartbeat as the later of its own and its host's.
Level-triggered like the real Worker: a slow sweep re-reads every unfinished job placed on its nodes,
so a lost hint only delays a task, and after a restart the tasks already RUNNING are resumed (they end
at their recorded start + duration).
"""

from __future__ import annotations

import heapq
import logging
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import zmq

from Common.config import Config
from Common.keys import Keyring, worker_party
from Common.messaging import BadMessage, Sender, decode
from Common.states import TASK_TERMINAL, JobState, TaskState
from Common.store import Store
from Common.store.workers import DOWN, REMOVED

log = logging.getLogger(__name__)

_SLEEP = re.compile(r"(?:^|[\s;&|(])sleep\s+(\d+(?:\.\d*)?|\.\d+)")
_EXIT = re.compile(r"(?:^|[\s;&|(])exit\s+(\d{1,3})\b")
ACTIVE = [JobState.SCHEDULED.value, JobState.RUNNING.value, JobState.CANCELLING.value]  # jobs with live tasks


def plan(task: dict[str, Any]) -> tuple[float, int]:
    """(duration in seconds, exit code) of a task on a hollow node; see the module docstring."""
    env = task.get("environment") or {}
    duration: float | None = None
    code: int | None = None
    try:
        if "RSWARM_HOLLOW_DURATION" in env:
            duration = max(0.0, float(env["RSWARM_HOLLOW_DURATION"]))
        if "RSWARM_HOLLOW_EXIT_CODE" in env:
            code = int(env["RSWARM_HOLLOW_EXIT_CODE"]) & 0xFF
    except (TypeError, ValueError):
        pass
    cmd = task.get("command")
    text = " ".join(cmd) if isinstance(cmd, list) else (cmd or "")
    if duration is None:
        duration = sum(float(m) for m in _SLEEP.findall(text))
    if code is None:
        exits = _EXIT.findall(text)
        code = int(exits[-1]) & 0xFF if exits else 0
    return duration, code


def parse_spec(text: str) -> tuple[int, int, str]:
    """``N[:cores[:memory]]`` -> (N, cores, memory text); ValueError naming what is wrong."""
    from Common.resources import parse_memory

    parts = text.split(":")
    if not 1 <= len(parts) <= 3 or not parts[0].isdigit() or int(parts[0]) < 1:
        raise ValueError(f"--hollow: expected N[:cores[:memory]] with N >= 1, got {text!r}")
    n = int(parts[0])
    cores = 4
    if len(parts) > 1 and parts[1]:
        if not parts[1].isdigit() or not 1 <= int(parts[1]) <= 1024:
            raise ValueError(f"--hollow: cores must be 1..1024, got {parts[1]!r}")
        cores = int(parts[1])
    memory = parts[2] if len(parts) > 2 and parts[2] else "8g"
    try:
        parse_memory(memory)
    except ValueError as exc:
        raise ValueError(f"--hollow: memory: {exc}") from None
    if n > 100_000:
        raise ValueError(f"--hollow: at most 100000 nodes, got {n}")
    return n, cores, memory


@dataclass(order=True)
class _Due:
    at: float
    job_id: str
    task: str
    attempt: int
    node: str
    exit_code: int


class DispatchListener:
    """A SUB socket on the GlobalManager's PUB, subscribed to a name prefix shared by this host's nodes.

    The envelope is checked by ``Common.messaging.decode`` (signature, shape) like every other message;
    only the topic check differs from ``Receiver``: any node of this host, not one name."""

    def __init__(self, endpoint: str, keys: Keyring, prefix: str, nodes: set[str], max_bytes: int) -> None:
        self.keys, self.prefix, self.nodes, self.max_bytes = keys, prefix.encode(), nodes, max_bytes
        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 100000)
        self.sock.setsockopt(zmq.SUBSCRIBE, self.prefix)
        self.sock.connect(endpoint)

    def recv(self, timeout: float) -> list[str]:
        """Job ids of the dispatch hints received within ``timeout`` (then every one already queued)."""
        out: list[str] = []
        wait = int(timeout * 1000)
        while self.sock.poll(wait):
            wait = 0
            frames = self.sock.recv_multipart(zmq.NOBLOCK)
            try:
                if len(frames) != 2 or not frames[0].endswith(b"\x00"):
                    raise BadMessage("wrong topic or frame count")
                node = frames[0][:-1].decode("utf-8", "strict")
                if node not in self.nodes:
                    raise BadMessage(f"topic {node!r} is not a node of this host")
                env = decode(frames[1], self.keys, worker_party(node), self.max_bytes)
                kind, body = env.kind, env.body
            except (BadMessage, UnicodeDecodeError) as exc:
                log.warning("dropped a dispatch frame: %s", exc)
                continue
            if kind == "dispatch" and body.get("job_id"):
                out.append(body["job_id"])
            if len(out) >= 10000:
                break
        return out

    def close(self) -> None:
        self.sock.close(0)


class HollowHost:
    def __init__(self, cfg: Config, store: Store, reports: Sender, names: list[str], cores: int,
                 memory: int, prefix: str, beats: Sender | None = None) -> None:
        self.cfg, self.store, self.reports = cfg, store, reports
        # Heartbeats on a socket of their own: behind thousands of queued reports (or dropped with them
        # when the queue is full) they would make Discovery declare live nodes dead.
        self.beats = beats or reports
        self.names = list(names)
        self.nodes = set(names)
        self.cores, self.memory, self.prefix = cores, memory, prefix
        self.stopping = threading.Event()
        self.started: dict[tuple[str, str, int], float] = {}  # task attempt -> when it ends (wall clock)
        # task attempt -> its terminal report, re-sent while MongoDB does not show it (a report can be
        # dropped when the queue to Discovery is full; a real Worker re-reports from its engine likewise)
        self.finished: dict[tuple[str, str, int], tuple[TaskState, dict[str, Any]]] = {}
        self.due: list[_Due] = []
        self.lock = threading.Lock()
        self.info = {"hollow": True, "host": socket.gethostname(), "pid": os.getpid(), "prefix": prefix}

    # ---- registration and heartbeats -----------------------------------------------------------
    def _known(self) -> dict[str, str | None]:
        """This host's nodes as MongoDB has them: name -> state."""
        return {d["_id"]: d.get("state") for d in self.store.workers.col.find({"info.prefix": self.prefix},
                                                                              {"state": 1})}

    def register(self, names: list[str] | None = None) -> None:
        """Nodes with no record are made in one write; the others re-register one by one (their free
        resources are recomputed from their allocations, as a real Worker's are)."""
        names = list(self.names if names is None else names)
        known = self._known()
        made = self.store.workers.insert_hollow([n for n in names if n not in known], list(range(self.cores)),
                                                self.memory, dict(self.info))
        for name in [n for n in names if n in known]:
            doc = self.store.workers.register(name, list(range(self.cores)), self.memory, dict(self.info),
                                              hollow=True)
            if doc.get("state") == REMOVED:
                log.warning("hollow node %s was removed from the cluster; it stops", name)
                self.nodes.discard(name)
        self.names = [n for n in self.names if n in self.nodes]
        log.info("registered %d hollow nodes (%d new; %d cores, %d bytes each)", len(names), made, self.cores,
                 self.memory)

    def rejoin(self) -> None:
        """Nodes marked DOWN while this host was silent (or whose record is gone) register again."""
        known = self._known()
        lost = [n for n in self.names if known.get(n) in (DOWN, None)]
        if lost:
            log.warning("%d hollow nodes were DOWN or missing; registering them again", len(lost))
            self.register(lost)

    def _heartbeat(self) -> None:
        """One message per beat for every node of this host; Discovery writes it once (the host's beat)."""
        while not self.stopping.is_set():
            self.beats.send("heartbeats", {"host": self.prefix, "at": time.time()})
            self.stopping.wait(self.cfg.worker.heartbeat_seconds)

    # ---- reports ---------------------------------------------------------------------------------
    def report(self, job_id: str, task: str, attempt: int, node: str, state: TaskState, at: float | None = None,
               **extra: Any) -> None:
        self.reports.send("task_status", {"job_id": job_id, "task": task, "attempt": attempt, "state": state.value,
                                          "node": node, "at": at or time.time(),
                                          **{k: v for k, v in extra.items() if v is not None}})

    # ---- the life of a task ----------------------------------------------------------------------
    def look(self, jobs: list[dict[str, Any]]) -> None:
        """Start what is placed here and not started, cancel what was cancelled (level-triggered)."""
        now = time.time()
        for job in jobs:
            if job.get("state") not in ACTIVE:
                continue
            for name, t in job["tasks"].items():
                node = t.get("node")
                if node not in self.nodes:
                    continue
                key = (job["_id"], name, t["attempt"])
                state = TaskState(t["state"])
                if state in TASK_TERMINAL:
                    self.started.pop(key, None)
                    self.finished.pop(key, None)
                    continue
                if key in self.finished:  # its end was reported, but is not recorded: say it again
                    end_state, extra = self.finished[key]
                    self.report(job["_id"], name, t["attempt"], node, end_state, **extra)
                    continue
                cid = f"hollow-{job['_id']}-{name}-{t['attempt']}"
                if job.get("cancel_requested"):
                    self.report(job["_id"], name, t["attempt"], node, TaskState.CANCELLED,
                                reason=job.get("cancel_reason") or "cancelled", container_id=cid)
                    self.started.pop(key, None)
                    self.finished.pop(key, None)
                    continue
                if key in self.started:
                    if state == TaskState.SCHEDULED or state == TaskState.STARTING:  # a report was lost
                        self.report(job["_id"], name, t["attempt"], node, TaskState.RUNNING, container_id=cid)
                    continue
                duration, code = plan(t)
                began = (t.get("state_times") or {}).get(TaskState.RUNNING.value) or now  # resumed after a restart
                if state == TaskState.SCHEDULED:
                    began = time.time()  # the emulated run starts exactly at the RUNNING time reported
                    self.report(job["_id"], name, t["attempt"], node, TaskState.STARTING, at=began, container_id=cid)
                    self.report(job["_id"], name, t["attempt"], node, TaskState.RUNNING, at=began, container_id=cid)
                end = began + duration
                self.started[key] = end
                with self.lock:
                    heapq.heappush(self.due, _Due(end, job["_id"], name, t["attempt"], node, code))

    def finish_due(self) -> float:
        """Report every task whose time is up; returns seconds until the next one (at most 1)."""
        now = time.time()
        with self.lock:
            while self.due and self.due[0].at <= now:
                d = heapq.heappop(self.due)
                if self.started.pop((d.job_id, d.task, d.attempt), None) is None:
                    continue  # cancelled meanwhile
                cid = f"hollow-{d.job_id}-{d.task}-{d.attempt}"
                if d.exit_code == 0:
                    end, extra = TaskState.COMPLETED, {"exit_code": 0, "container_id": cid}
                else:
                    end, extra = TaskState.FAILED, {"exit_code": d.exit_code, "container_id": cid,
                                                    "reason": f"exited with code {d.exit_code} (hollow)"}
                extra["at"] = d.at  # it ended when its time was up, whenever this report gets through
                self.finished[(d.job_id, d.task, d.attempt)] = (end, extra)
                self.report(d.job_id, d.task, d.attempt, d.node, end, **extra)
            return min(1.0, max(0.0, self.due[0].at - now)) if self.due else 1.0

    def sweep(self) -> None:
        """Every unfinished job placed on a node of this host (the safety net for lost hints), and nodes
        that must register again."""
        self.rejoin()
        jobs = list(self.store.jobs.col.find({"state": {"$in": ACTIVE},
                                              "nodes": {"$regex": f"^{re.escape(self.prefix)}"}}))
        active = {j["_id"] for j in jobs}
        with self.lock:
            for key in [k for k in self.finished if k[0] not in active]:
                del self.finished[key]  # its job has ended: the report was recorded
        self.look(jobs)

    def run(self, listener: DispatchListener | None) -> None:
        threading.Thread(target=self._heartbeat, name="hollow-heartbeat", daemon=True).start()
        self.register()
        next_sweep = 0.0
        while not self.stopping.is_set():
            wait = self.finish_due()
            try:
                if time.monotonic() >= next_sweep:
                    self.sweep()
                    next_sweep = time.monotonic() + self.cfg.worker.sweep_seconds
                ids = listener.recv(min(wait, 0.2)) if listener is not None else []
                if not ids and listener is None:
                    self.stopping.wait(min(wait, 0.2))
                if ids:  # one read per job: the embedded store compares $in lists element by element
                    self.look([j for j in (self.store.jobs.get(i) for i in dict.fromkeys(ids)) if j is not None])
            except Exception:
                log.exception("hollow pass failed; retrying at the next one")
                self.stopping.wait(0.5)

    def stop(self) -> None:
        self.stopping.set()
