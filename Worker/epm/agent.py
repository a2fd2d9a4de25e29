"""One EPM's agent loop: make the kernel hold exactly the EVMs the Worker's desired file lists.

It runs as one thread of the node's EVM agent (Worker/epm/node.py), inside the EPM's network namespace.

Level-triggered, like the Worker: each pass compares the desired set (the file, which mirrors MongoDB)
with what the kernel holds (our namespaces and links, found by name), removes what should not exist,
creates what is missing at the batch's rate, and reports every outcome. At start it rolls back any
half-made EVM a killed predecessor left, so a restarted agent converges. It re-reports an outcome when
the file shows MongoDB still lags behind (a lost datagram), at most every ``RESEND_SECONDS``.

Every kernel call is bounded: the node agent's watchdog ends the process when one takes longer than the
file's ``op_timeout`` (a kernel call cannot be interrupted, a process can); the Worker starts a fresh
node agent, which reconciles. The loop ends when the EPM's container process exits (``gone_fd``, a
pidfd, becomes readable) or when ``stopping`` is set.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import socket
import sys
import threading
import time
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from . import names
from .desired import BadDesired, Desired, load, stamp
from .kernel import BATCH_FULL, BATCH_LEAN, EvmError, FatalError, Kernel
from .pacing import Pacer, pacer_for
from .report import Reporter
from .vpc import VpcNet

RESEND_SECONDS = 10.0
STATUS_SECONDS = 1.0  # a changed status is said at most this often,
STATUS_IDLE_SECONDS = 3.0  # an unchanged one this often while draining (the Worker takes one older than 5 s as stale),
STATUS_QUIET_SECONDS = 30.0  # and otherwise this often
# The Worker nudges the agent's socket on every change, so polling is only the fallback: every second while
# draining, every QUIET_WAIT otherwise. A node agent serves hundreds of EPMs, one thread each; with all of them
# waking every second, their idle passes alone took a noticeable share of a core (BENCHMARKS.md).
IDLE_WAIT = 1.0
QUIET_WAIT = 10.0
CREATE_SLICE = 0.25  # seconds of creating before looking at the desired file again
EXIT_STUCK = 75


def log(msg: str) -> None:
    who = threading.current_thread().name
    print(f"{time.strftime('%H:%M:%S')} epm-agent[{os.getpid()}] {who}: {msg}", file=sys.stderr, flush=True)


def bind_datagram(path: str) -> socket.socket:
    """A non-blocking unix datagram socket bound at ``path`` (a stale socket file there is replaced)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    sock.bind(path)
    sock.setblocking(False)
    return sock


class Agent:
    def __init__(self, state_dir: str, kernel: Kernel, gone_fd: int | None = None) -> None:
        self.dir = state_dir
        self.kernel = kernel
        self.gone_fd = gone_fd  # readable once the EPM's container process has exited
        self.path = os.path.join(state_dir, names.DESIRED_FILE)
        self.desired: Desired | None = None
        self.stamp: tuple[int, int, int] | None = None
        self.present: dict[int, float | None] = {}  # EVM number -> when it became READY (None: found at start)
        self.failed: dict[int, str] = {}  # not retried by this process
        self.sent: dict[int, tuple[str, float]] = {}  # last report per EVM: (state, monotonic time)
        self.pacers: dict[str, Pacer] = {}
        self.reporter: Reporter | None = None
        self.next_due = -math.inf
        self.queued = 0
        self.last_status = 0.0
        self.last_resend = -math.inf
        self.resent_for: tuple[int, int, int] | None = None
        self.last_status_fields: dict[str, Any] = {}
        self.stopping = threading.Event()
        self.wake = self._bind_wake()
        self._poll = select.poll()
        self._poll.register(self.wake, select.POLLIN)
        self._registered: set[int] = set()
        self.vpc: VpcNet | None = None  # taken over at the first desired file that names VPCs
        self.vpc_dirty = True  # the VPC devices and plugs are to be made what the desired file says
        self.vpc_full: set[int] = set()  # VNIs whose bridge ran out of ports (said once)

    def _bind_wake(self) -> socket.socket:
        return bind_datagram(os.path.join(self.dir, names.AGENT_SOCK))

    def interrupt(self) -> None:
        """End the loop now, not at the end of its current wait (up to ``QUIET_WAIT``)."""
        self.stopping.set()
        names.hint(os.path.join(self.dir, names.AGENT_SOCK), b"s")

    # ---- the desired file ---------------------------------------------------------------------
    def refresh(self) -> bool:
        """Re-read the desired file if the Worker replaced it. True if a (valid) new one was loaded."""
        now_stamp = stamp(self.path)
        if now_stamp is None or now_stamp == self.stamp:
            return False
        self.stamp = now_stamp
        try:
            self.desired = load(self.path)
        except BadDesired as exc:
            log(f"ignoring the desired file: {exc}")
            return False
        if self.reporter is not None:
            self.reporter.attempt = self.desired.attempt
        self.vpc_dirty = True
        return True

    def wait(self, seconds: float) -> None:
        # poll, not select: the node agent holds several descriptors per EPM, far beyond select's 1,024
        if self.gone_fd is not None and self.gone_fd not in self._registered:
            self._poll.register(self.gone_fd, select.POLLIN)
            self._registered.add(self.gone_fd)
        ready = self._poll.poll(max(0.0, seconds) * 1000)
        if self.gone_fd is not None and any(fd == self.gone_fd for fd, _ in ready):
            self.stopping.set()
        while True:  # take every pending nudge
            try:
                self.wake.recv(64)
            except (BlockingIOError, OSError):
                break

    # ---- reporting ----------------------------------------------------------------------------
    def report(self, seq: int, state: str, times: dict[str, float], ms: float | None = None,
               error: str | None = None) -> None:
        assert self.reporter is not None
        self.reporter.add(seq, state, times, ms, error)
        self.sent[seq] = (state, time.monotonic())

    def _due(self, seq: int, state: str) -> bool:
        last = self.sent.get(seq)
        return last is None or last[0] != state or time.monotonic() - last[1] >= RESEND_SECONDS

    # ---- start-up -----------------------------------------------------------------------------
    def start(self) -> None:
        while not self.stopping.is_set() and not self.refresh():
            self.wait(IDLE_WAIT)
        if self.stopping.is_set():
            return
        d = self.desired
        assert d is not None
        self.reporter = Reporter(self.dir, d.attempt, self.kernel.host_info())
        scan = self.kernel.scan()
        complete = {s for s, f in scan.evms.items() if f.complete(d.devices, scan.shared_bridge, scan.vpc_bridges)}
        broken = sorted(set(scan.evms) - complete)
        if broken:
            log(f"rolling back {len(broken)} half-made EVMs left by an earlier agent")
            for i in range(0, len(broken), self._batch(d)):
                try:
                    self.kernel.destroy(broken[i:i + self._batch(d)], scan)
                except Exception as exc:  # what is left fails its creation, which rolls it back again
                    log(f"rolling back failed: {exc}")
        self.present = dict.fromkeys(complete)
        log(f"started: {d.job_id}/{d.epm} attempt {d.attempt}, {len(complete)} EVMs already present, "
            f"{len(d.keep())} wanted ({d.devices} devices)")

    @staticmethod
    def _batch(d: Desired) -> int:
        return BATCH_FULL if d.devices == "full" else BATCH_LEAN

    # ---- one pass -----------------------------------------------------------------------------
    def step(self) -> None:
        d = self.desired
        assert d is not None
        keep = d.keep()
        self._delete(d, keep)
        if self.stopping.is_set():
            return
        self._apply_vpcs(d, keep)
        self._create(d, keep)
        now = time.monotonic()
        # _resend walks every EVM held: on each new desired file (what shows MongoDB lagging), else once a second
        if self.stamp != self.resent_for or now - self.last_resend >= STATUS_SECONDS:
            self.last_resend, self.resent_for = now, self.stamp
            self._resend(d)
        fields = {"present": len(self.present), "queued": self.queued, "failed": len(self.failed),
                  "drained": d.drain and not self.present}
        since = now - self.last_status
        quiet = STATUS_IDLE_SECONDS if d.drain else STATUS_QUIET_SECONDS
        if since >= quiet or (since >= STATUS_SECONDS and fields != self.last_status_fields):
            self.last_status, self.last_status_fields = now, fields
            assert self.reporter is not None
            self.reporter.status(**fields)

    def _delete(self, d: Desired, keep: dict[int, Any]) -> None:
        doomed = sorted(s for s in self.present if s not in keep)
        size = self._batch(d)
        for i in range(0, len(doomed), size):
            batch = doomed[i:i + size]
            t0 = time.monotonic()
            try:
                self.kernel.destroy(batch)
            except FatalError:
                raise
            except Exception as exc:  # left as they are: the next pass tries again
                log(f"deleting EVMs {batch[0]}..{batch[-1]} failed: {type(exc).__name__}: {exc}")
                return
            at, ms = time.time(), (time.monotonic() - t0) * 1000 / len(batch)
            if self.vpc is not None:
                self.vpc.forget(batch)
                self.vpc_dirty = True
            for seq in batch:
                del self.present[seq]
                if not d.drain:  # a drained EPM is going away: its EVMs' records are closed by the Worker
                    self.report(seq, "DELETED", {"DELETED": at}, ms)
            assert self.reporter is not None
            self.reporter.flush()
            if self.stopping.is_set():
                return
        for seq in d.deleting():
            if seq not in self.present and d.evms[seq].recorded != "DELETED" and self._due(seq, "DELETED"):
                self.report(seq, "DELETED", {"DELETED": time.time()})
        if d.devices == "lean" and not self.present and not keep:
            self.kernel.drop_shared_bridge()

    def _apply_vpcs(self, d: Desired, keep: dict[int, Any]) -> None:
        """VPC bridges, VXLAN devices and their forwarding entries, and each present EVM's plug (vpc.py)."""
        if not self.vpc_dirty or (self.vpc is None and not d.vpcs):
            return
        try:
            if self.vpc is None:
                vpc = VpcNet(self.kernel)
                vpc.start(d.local_ip)  # VXLAN devices are made afresh, from the file, by apply
                self.kernel.evm_mtu = vpc.mtu
                self.vpc = vpc
            self.vpc.apply(d.vpcs, {s: w.vpc for s, w in keep.items()}, set(self.present), d.devices)
        except FatalError:
            raise
        except Exception as exc:  # tried again on the next pass
            log(f"VPC devices: {type(exc).__name__}: {exc}")
            return
        self.vpc_dirty = False

    def _create(self, d: Desired, keep: dict[int, Any]) -> None:
        queue = [w for s, w in keep.items() if s not in self.present and s not in self.failed]
        self.queued = len(queue)
        self.next_due = -math.inf
        slice_end = time.monotonic() + CREATE_SLICE
        done = 0
        for w in queue:
            now = time.monotonic()
            pacer = self.pacers.get(w.batch)
            if pacer is None:
                pacer = self.pacers[w.batch] = pacer_for(d.rates.get(w.batch), now)
            due = pacer.next_start(now)
            if due > now:
                self.next_due = due
                break
            if now > slice_end or self.stopping.is_set():
                self.next_due = now
                break
            pacer.take(now)
            self._create_one(d, w)
            done += 1
            self.queued -= 1
        self._accept(queue[done:])

    def _create_one(self, d: Desired, w: Any) -> None:
        started = time.time()
        # DEPLOYING: when this agent took the EVM on; already said if it had to wait (see _accept).
        first = {} if w.seq in self.sent else {"DEPLOYING": started}
        vpc = self.vpc
        vni = d.vni(w.seq) if vpc is not None else None
        try:
            master = None
            if vni is not None and vpc is not None and vpc.full(vni):
                self._report_full(vni)
                vni = None  # made unplugged (a lean one on the shared bridge)
            if vpc is not None and vni is not None and d.devices == "lean":
                with self.kernel._op("VPC bridge"):
                    master = vpc.bridge(vni)  # a lean EVM is made straight into its VPC's bridge
            self.kernel.create(w.seq, w.ip, w.mac, d.prefix, d.gateway, d.devices, master)
            if vpc is not None and vni is not None:
                if master is not None:
                    vpc.record(w.seq, vni)
                else:
                    self._plug(vpc, w.seq, vni, d.devices)
        except (EvmError, NetlinkError) as exc:
            self.failed[w.seq] = str(exc)
            ended = time.time()
            self.report(w.seq, "ERROR", {**first, "ERROR": ended}, (ended - started) * 1000, str(exc))
            log(f"EVM {w.seq} failed: {exc}")
        else:
            ended = time.time()
            self.present[w.seq] = ended
            self.report(w.seq, "READY", {**first, "READY": ended}, (ended - started) * 1000)

    def _report_full(self, vni: int) -> None:
        if vni not in self.vpc_full:
            self.vpc_full.add(vni)
            log(f"the bridge of VNI {vni} has no port left: further EVMs of that VPC stay unplugged")

    def _plug(self, vpc: VpcNet, seq: int, vni: int, devices: str) -> None:
        try:
            with self.kernel._op(f"plug EVM {seq}"):
                vpc.plug(seq, vni, devices)
        except NetlinkError as exc:  # the EVM exists; its plug is made again by the next VPC pass
            log(f"plugging EVM {seq} into VNI {vni} failed: {exc}")
            self.vpc_dirty = True

    def _accept(self, waiting: list[Any]) -> None:
        """EVMs this agent holds in its queue (paced, or behind others) are DEPLOYING, said once."""
        now = time.time()
        for w in waiting:
            if w.seq not in self.sent and w.recorded == "PENDING":
                self.report(w.seq, "DEPLOYING", {"DEPLOYING": now})

    def _resend(self, d: Desired) -> None:
        """Say again what MongoDB has not recorded yet (its report was lost), at most every RESEND_SECONDS."""
        for seq, ready_at in self.present.items():
            w = d.evms.get(seq)
            if w is not None and w.recorded != "READY" and not w.delete and self._due(seq, "READY"):
                self.report(seq, "READY", {"READY": ready_at or time.time()})
        for seq, error in self.failed.items():
            w = d.evms.get(seq)
            if w is not None and w.recorded not in ("ERROR", "DELETED") and self._due(seq, "ERROR"):
                self.report(seq, "ERROR", {"ERROR": time.time()}, None, error)

    # ---- the loop -----------------------------------------------------------------------------
    def run(self) -> None:
        self.start()
        while not self.stopping.is_set():
            self.refresh()
            self.step()
            assert self.reporter is not None
            if self.reporter.due() or self.queued == 0:
                self.reporter.flush()
            now = time.monotonic()
            idle = IDLE_WAIT if self.desired is not None and self.desired.drain else QUIET_WAIT
            pause = min(idle, max(0.0, self.next_due - now)) if self.queued else idle
            self.wait(pause)
        if self.reporter is not None:
            self.reporter.close()
        self.wake.close()
