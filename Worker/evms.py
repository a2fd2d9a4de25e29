"""The Worker's EVM side: each EPM's directory, desired-EVM file and reports, kept in step with MongoDB.

For every EPM container on this node (a task whose document carries ``evms``) the Worker
  * runs the node's EVM agent (Worker/epm/node.py, kept alive by Worker/epm/keeper.py) from its first
    EPM on: one process for all EPMs of the node, which enters each EPM's network namespace; the EPM
    container holds no agent and no capability, and runs the image the task names (default:
    ``DEFAULT_IMAGE`` sleeping);
  * before creating the container: opens the EPM's directory, re-binds the EPM's EVM records to this
    attempt, and writes the desired file the agent starts from;
  * once it runs: writes ``target.json`` (its PID 1, id, host name) so the node agent serves it;
  * while it runs: rewrites the desired file when the EPM's versions in MongoDB move (its generation: EVMs
    added, deleted or relabelled; its report count: Discovery applied its agent's reports, so the recorded
    states the agent compares against moved; both polled for every job in one query every
    ``worker.evm_poll_seconds``), when its VPC plan changes (the job's EPM addresses are re-read in one
    query every ``worker.evm_resync_seconds``: an EPM that moves changes address without an EVM change),
    and at least every ``worker.evm_refresh_seconds`` (a safety net); and relays the agent's reports to
    Discovery in its signed envelope ("evm_status");
  * before removing a running EPM of the full device set: asks the agent to drain its EVMs first, in
    small batches. The kernel deletes a bridge in one RCU grace period while holding the global RTNL
    lock; removing the container with thousands of per-EVM bridges would stall every netlink user on
    the node (Docker included) for the whole teardown;
  * once its container is gone: tells Discovery ("epm_removed"), which closes the EPM's EVM records if
    the task is over for good, and removes the directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import select
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker

from Common.config import Config
from Common.evmspec import EPM_IMAGE
from Common.logs import Throttled
from Common.messaging import Sender
from Common.store import Store
from Common.store.evms import rates_on
from Common.store.jobs import container_name
from Worker import vpcs
from Worker.epm.keeper import Keeper
from Worker.epm_link import BadReport, EpmLink, desired_doc, parse_report, read_meta

log = logging.getLogger(__name__)

LABEL_EPM = "rswarm.epm"
# What an EPM task that names no image of its own runs: any long-running process will do, since the EVMs
# are made from outside. PID 1 of a container ignores SIGTERM without a handler, hence the trap (a stop
# would otherwise wait for the engine's grace period).
DEFAULT_IMAGE = "rswarm/task:1"
DEFAULT_COMMAND = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"]
RELAY_CHUNK = 100  # EVM outcomes per evm_status message,
RELAY_BYTES = 40_000  # and their size: well under the envelope's 64 KiB frame limit
DRAIN_MIN = 16  # full-set EPMs holding fewer EVMs are removed at once
# No IPv6 on the EPM's own devices (per-EVM bridges, taps, veth ends): with it, each of them adds an fe80::/64
# and an ff00::/8 route to the EPM's one IPv6 table, where routes to the same prefix form a list that every
# insertion walks, so creating the n-th EVM cost O(n). The EVMs' own namespaces keep IPv6.
EPM_SYSCTLS = {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"}
DRAIN_BASE_SECONDS = 15.0
DRAIN_PER_EVM_SECONDS = 0.05


@dataclass
class VpcPlan:
    """A job's VPC plan (Worker/vpcs.py) and what it was computed from."""
    gens: dict[str, int]
    addresses: dict[str, str]
    plan: dict[str, Any]
    changed_at: float  # monotonic time the plan last changed (EPM files older than that are rewritten)


@dataclass
class Tracked:
    link: EpmLink
    job_id: str
    epm: str
    attempt: int
    cfg: dict[str, Any]
    version: tuple[int, int] = (-1, -1)  # (gen, seen) of the EPM when its desired file was last written
    # Its records and rates as last read, with the version they were read at: a rewrite for a VPC plan change
    # alone (a sibling EPM got its address) needs no query.
    records: tuple[tuple[int, int], list[dict[str, Any]], dict[str, dict[str, Any]]] | None = None
    digest: str = ""
    written_at: float = 0.0
    status: dict[str, Any] = field(default_factory=dict)
    drain_until: float | None = None
    last_health: float = 0.0
    targeted: bool = False  # target.json written for this container's process
    running: bool = False  # its container was started by this Worker or seen running: target.json is due


def is_epm(t: dict[str, Any]) -> bool:
    return bool(t.get("evms"))


class EvmSync:
    def __init__(self, cfg: Config, store: Store, api: docker.APIClient, reports: Sender, node: str,
                 wake: Callable[[], None]) -> None:
        self.cfg, self.store, self.api, self.reports, self.node, self.wake = cfg, store, api, reports, node, wake
        self.root = cfg.run_path / "epm"
        self.tracked: dict[str, Tracked] = {}  # by container name
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.kick = threading.Event()
        self._links_version = 0  # moves whenever an EPM's report socket comes or goes (the relay's poll set)
        self._swept = False
        self._threads: list[threading.Thread] = []
        self.keeper = Keeper(str(self.root))
        self._plans: dict[str, VpcPlan] = {}  # by job
        # By job: its batches' rates (EvmStore.batch_rates). Batches never change once inserted, so this is read
        # again only when a record names a batch missing here (a VM-set addition), not for every desired file.
        self._rates: dict[str, dict[str, dict[str, Any]]] = {}
        self._addresses: dict[str, dict[str, str]] = {}  # job -> its EPMs' overlay addresses
        self._addresses_at = -float("inf")

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for target, name in ((self._relay, "evm-relay"), (self._syncer, "evm-sync")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self.stopping.set()
        self.kick.set()
        self.keeper.stop()

    # ---- before the container is created -----------------------------------------------------
    def container_options(self, job: dict[str, Any], name: str, t: dict[str, Any]) -> dict[str, Any] | None:
        """What an EPM container needs beyond a task's (None for other tasks).

        No capability, device or mount: the node agent makes the EVMs from outside the container. The
        image is the task's; ``rswarm/epm`` (what a job gets when it names none) means ``DEFAULT_IMAGE``.
        """
        if not is_epm(t):
            return None
        self.track(job["_id"], name, t)
        image = t.get("image") or EPM_IMAGE
        if image == EPM_IMAGE or image.startswith(EPM_IMAGE + ":"):
            image, command = DEFAULT_IMAGE, t.get("command") or DEFAULT_COMMAND
        else:
            command = t.get("command")
        return {
            "image": image,
            "command": command,
            "binds": {},
            "cap_add": None,
            "devices": None,
            "sysctls": EPM_SYSCTLS,
            "labels": {LABEL_EPM: "1"},
            "environment": {},
        }

    def track(self, job_id: str, epm: str, t: dict[str, Any]) -> Tracked:
        cname = container_name(job_id, epm, t["attempt"])
        with self.lock:
            if not self.stopping.is_set():
                self.keeper.start()  # the node's EVM agent, from this node's first EPM on (idempotent)
            tr = self.tracked.get(cname)
            if tr is None:
                link = EpmLink(self.root, cname)
                link.open({"job_id": job_id, "epm": epm, "attempt": t["attempt"], "node": self.node})
                tr = Tracked(link, job_id, epm, t["attempt"], t["evms"])
                self.tracked[cname] = tr
                self._links_version += 1
        if t["attempt"] > 0:
            moved = self.store.evms.adopt(job_id, epm, t["attempt"])
            if moved:
                log.info("%s/%s: %d EVMs re-bound to attempt %d", job_id, epm, moved, t["attempt"])
        self.write(tr, force=True)
        return tr

    # ---- the desired file ---------------------------------------------------------------------
    def write(self, tr: Tracked, force: bool = False, version: tuple[int, int] | None = None,
              read: list[dict[str, Any]] | None = None) -> None:
        """Write the EPM's desired file (only if its content changed, unless ``force``). ``version``: the EPM's
        (gen, seen), read before this call; its records are read again unless they were read at that very
        version (None: always read). ``read``: its records, already read after ``version``."""
        if version is not None and tr.records is not None and tr.records[0] == version:
            records, rates = tr.records[1], tr.records[2]
        else:
            records = self.store.evms.for_epm(tr.job_id, tr.epm) if read is None else read
            rates = rates_on(self._batch_rates(tr.job_id, {r["batch"] for r in records}), tr.epm)
            tr.records = (version, records, rates) if version is not None else None
        vpc = self._plan(tr.job_id).plan.get(tr.epm)
        doc = desired_doc(tr.job_id, tr.epm, tr.attempt, tr.link.container, tr.cfg, records, rates,
                          tr.drain_until is not None, self.cfg.worker.evm_op_timeout_seconds, vpc)
        digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
        tr.written_at = time.monotonic()
        if force or digest != tr.digest:
            tr.link.write_desired(doc)
            tr.digest = digest

    def _batch_rates(self, job_id: str, batches: set[str]) -> dict[str, dict[str, Any]]:
        """The job's batch rates, read again only if ``batches`` (those its records name) are not all known."""
        known = self._rates.get(job_id)
        if known is None or not batches <= known.keys():
            known = self._rates[job_id] = self.store.evms.batch_rates(job_id)
        return known

    def _plan(self, job_id: str) -> VpcPlan:
        """The job's VPC plan, read from MongoDB if this Worker holds none yet (its first EPM of the job)."""
        cached = self._plans.get(job_id)
        if cached is not None:
            return cached
        gens = self.store.evms.versions([job_id]).get(job_id, ({}, {}))[0]
        return self._update_plan(job_id, gens, self._read_addresses([job_id]).get(job_id, {}))

    def _read_addresses(self, job_ids: list[str]) -> dict[str, dict[str, str]]:
        docs = self.store.jobs.col.find({"_id": {"$in": job_ids}}, {"tasks": 1})
        found = {d["_id"]: vpcs.epm_addresses(d) for d in docs}
        self._addresses.update({j: found.get(j, {}) for j in job_ids})
        return found

    def _update_plan(self, job_id: str, gens: dict[str, int], addresses: dict[str, str]) -> VpcPlan:
        """Recompute the job's plan when what it depends on moved: its EVM set (``gens``) or its EPMs' addresses."""
        cached = self._plans.get(job_id)
        if cached is not None and cached.gens == gens and cached.addresses == addresses:
            return cached
        plan = vpcs.plan(job_id, self.store.evms.vpc_members(job_id), addresses)
        changed_at = cached.changed_at if cached is not None and cached.plan == plan else time.monotonic()
        self._plans[job_id] = VpcPlan(dict(gens), dict(addresses), plan, changed_at)
        return self._plans[job_id]

    def _syncer(self) -> None:
        failures = Throttled(log)  # every 0.5 s: MongoDB away must not write a traceback per pass
        while not self.stopping.is_set():
            self.kick.wait(self.cfg.worker.evm_poll_seconds)
            self.kick.clear()
            try:
                self.sync_once()
            except Exception as exc:
                failures.failed(exc, "EVM sync pass failed; retrying")
            else:
                failures.ok()

    def sync_once(self) -> None:
        """One pass: a query for every job's EPM versions, one for their addresses when due, and desired files
        rewritten only for the EPMs whose records, or VPC plan, moved (one more query per job for their
        records, and its batch rates only when a record names a batch not read yet)."""
        with self.lock:
            tracked = list(self.tracked.values())
        if not tracked:
            return
        for tr in tracked:
            if tr.running and not tr.targeted:
                self._target(tr)
        jobs = sorted({tr.job_id for tr in tracked})
        versions = self.store.evms.versions(jobs)
        now = time.monotonic()
        if now - self._addresses_at >= self.cfg.worker.evm_resync_seconds:
            self._addresses_at = now
            self._read_addresses(jobs)
        elif missing := [j for j in jobs if j not in self._addresses]:
            self._read_addresses(missing)
        for job_id in jobs:
            self._update_plan(job_id, versions.get(job_id, ({}, {}))[0], self._addresses.get(job_id, {}))
        for gone in set(self._plans) - set(jobs):
            self._plans.pop(gone, None)
            self._rates.pop(gone, None)
            self._addresses.pop(gone, None)
        due: dict[str, list[tuple[Tracked, tuple[int, int] | None]]] = {}
        for tr in tracked:
            gens, seen = versions.get(tr.job_id, ({}, {}))
            version = (gens.get(tr.epm, 0), seen.get(tr.epm, 0))
            stale = now - tr.written_at >= self.cfg.worker.evm_refresh_seconds
            if version != tr.version or stale or self._plans[tr.job_id].changed_at > tr.written_at:
                due.setdefault(tr.job_id, []).append((tr, None if stale else version))
                tr.version = version
        for job_id, items in due.items():
            # One read of the records for all of a job's due EPMs, not one per EPM
            # (an EPM's version moves with each report of its agent, so at 1,000 EPMs most are due often)
            unread = sorted({tr.epm for tr, v in items
                             if v is None or tr.records is None or tr.records[0] != v})
            records = self.store.evms.for_epms(job_id, unread) if unread else {}
            for tr, v in items:
                self.write(tr, version=v, read=records.get(tr.epm))

    def _target(self, tr: Tracked) -> None:
        """Tell the node agent which process to enter, once the container runs."""
        try:
            attrs = self.api.inspect_container(tr.link.container)
        except docker.errors.NotFound:
            return
        state = attrs.get("State") or {}
        pid = int(state.get("Pid") or 0)
        if state.get("Running") and pid > 1:
            tr.link.write_target(pid, attrs["Id"], (attrs.get("Config") or {}).get("Hostname") or "")
            tr.targeted = True

    # ---- the agents' reports ------------------------------------------------------------------
    def _relay(self) -> None:
        # One poll set, rebuilt only when the set of sockets changed (an EPM tracked or finished, a socket bound
        # again), not on every datagram: a node holding hundreds of EPMs gets a status datagram from each of
        # them every few seconds. poll, not select: 1,000 EPMs are more than select's 1,024 descriptors.
        poller = select.poll()
        by_fd: dict[int, Tracked] = {}
        built_for = -1
        next_health = 0.0
        while not self.stopping.is_set():
            with self.lock:
                if built_for != self._links_version:
                    built_for = self._links_version
                    poller = select.poll()
                    by_fd = {tr.link.sock.fileno(): tr for tr in self.tracked.values() if tr.link.sock is not None}
                    for fd in by_fd:
                        poller.register(fd, select.POLLIN)
            if not by_fd:
                self.stopping.wait(0.2)
                continue
            try:
                ready = poller.poll(200)
            except (OSError, ValueError):
                built_for = -1
                continue
            for fd, events in ready:
                tr = by_fd.get(fd)
                if tr is None or events & select.POLLNVAL:  # a socket closed under us: take the new list
                    built_for = -1
                    continue
                for data in tr.link.receive():
                    self._relay_one(tr, data)
            if time.monotonic() >= next_health:
                next_health = time.monotonic() + 1.0
                self._check_health(list(by_fd.values()))

    def _relay_one(self, tr: Tracked, data: bytes) -> None:
        try:
            doc = parse_report(data)
        except BadReport as exc:
            log.warning("EPM %s sent a bad report: %s", tr.link.container, exc)
            return
        if doc["attempt"] != tr.attempt:
            return
        chunk: list[list[Any]] = []
        size = 0
        for item in doc.get("items") or []:
            chunk.append(item)
            size += len(json.dumps(item))
            if len(chunk) >= RELAY_CHUNK or size >= RELAY_BYTES:
                self._send_items(tr, doc["host"], chunk)
                chunk, size = [], 0
        if chunk:
            self._send_items(tr, doc["host"], chunk)
        if doc.get("status") is not None:
            tr.status = {**doc["status"], "at": time.monotonic()}
            if tr.drain_until is not None and tr.status.get("drained"):
                self.wake()

    def _send_items(self, tr: Tracked, host: dict[str, str], items: list[list[Any]]) -> None:
        self.reports.send("evm_status", {"job_id": tr.job_id, "epm": tr.epm, "attempt": tr.attempt, "node": self.node,
                                         "container": tr.link.container, "host": host, "items": items})

    def _check_health(self, tracked: list[Tracked]) -> None:
        now = time.monotonic()
        for tr in tracked:
            if now - tr.last_health >= 2.0:
                tr.last_health = now
                if not tr.link.healthy():
                    log.warning("EPM %s: its report socket vanished; binding it again", tr.link.container)
                    with contextlib.suppress(OSError):
                        tr.link.rebind()
                    with self.lock:
                        self._links_version += 1

    # ---- the Worker's reconcile pass -----------------------------------------------------------
    def hold_removal(self, container: str) -> bool:
        """True while a running EPM drains its EVMs before its container may be removed."""
        with self.lock:
            tr = self.tracked.get(container)
        if tr is None or tr.cfg.get("devices") != "full":
            return False
        present = int(tr.status.get("present") or 0)
        if tr.drain_until is None:
            if present < DRAIN_MIN:
                return False
            tr.drain_until = time.monotonic() + DRAIN_BASE_SECONDS + present * DRAIN_PER_EVM_SECONDS
            log.info("EPM %s: draining %d EVMs before it is removed", container, present)
            self.write(tr, force=True)
            return True
        fresh = time.monotonic() - float(tr.status.get("at", 0.0)) < 5.0
        if fresh and tr.status.get("drained"):
            return False
        if time.monotonic() > tr.drain_until:
            log.warning("EPM %s: drain did not finish in time; removing it anyway", container)
            return False
        return True

    def started(self, container: str) -> None:
        """The Worker started this container: if it is an EPM, its target.json is written at the next sync pass
        (only then: inspecting every EPM still waiting for its start, every pass, cost the engine and the Worker)."""
        self._mark_running([container])

    def _mark_running(self, containers: Iterable[str]) -> None:
        due = False
        with self.lock:
            for cname in containers:
                tr = self.tracked.get(cname)
                if tr is not None and not tr.targeted:
                    tr.running = due = True
        if due:
            self.kick.set()  # the sync thread writes target.json at once

    def observe(self, epm_containers: dict[str, tuple[str, str, int, dict[str, Any]]], running: set[str]) -> None:
        """Called each Worker pass with this node's EPM containers: name -> (job, task, attempt, task doc), and
        the names of those the engine listed as running.

        Tracks those not tracked yet (a restarted Worker) and finishes those whose container is gone.
        """
        for cname, (job_id, epm, attempt, t) in epm_containers.items():
            if cname not in self.tracked and is_epm(t) and t.get("attempt") == attempt:
                self.track(job_id, epm, t)
        self._mark_running(running)
        with self.lock:
            gone = [tr for name, tr in self.tracked.items() if name not in epm_containers and tr.written_at
                    and time.monotonic() - tr.written_at > 1.0]
        for tr in gone:
            if self._container_exists(tr.link.container):
                continue  # created a moment ago; the engine's list did not show it yet
            self.finish(tr.link.container, tr.job_id, tr.epm, tr.attempt)
        if not self._swept:
            self._swept = True
            self._sweep_dirs(set(epm_containers))

    def _container_exists(self, name: str) -> bool:
        try:
            self.api.inspect_container(name)
            return True
        except docker.errors.NotFound:
            return False

    def finish(self, cname: str, job_id: str, epm: str, attempt: int) -> None:
        self.reports.send("epm_removed", {"job_id": job_id, "epm": epm, "attempt": attempt, "node": self.node,
                                          "at": time.time(), "reason": "its EPM container was removed"})
        with self.lock:
            tr = self.tracked.pop(cname, None)
            self._links_version += 1
        if tr is not None:
            tr.link.close()
        else:
            EpmLink(self.root, cname).close()
        log.info("EPM %s is gone; its directory removed", cname)

    def _sweep_dirs(self, alive: set[str]) -> None:
        """Directories of EPMs that vanished while this Worker was down."""
        for d in self.root.iterdir() if self.root.exists() else []:
            if not d.is_dir() or d.name in alive or d.name in self.tracked:
                continue
            meta = read_meta(d)
            if meta and not self._container_exists(d.name):
                self.finish(d.name, meta.get("job_id", ""), meta.get("epm", ""), int(meta.get("attempt", 0)))


def epm_root(cfg: Config) -> Path:
    return cfg.run_path / "epm"
