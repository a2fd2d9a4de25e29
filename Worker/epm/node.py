"""The node's EVM agent: one process beside the Worker that makes the EVMs of every EPM on this node.

    python -m Worker.epm.node ROOT      # ROOT: the directory of the EPM directories (<run_dir>/epm)

An EPM is then any container with a long-running process: it holds no capability, no /dev/net/tun and
no agent of its own. For each EPM directory ``ROOT/<container>/`` that holds ``target.json`` (written by
the Worker once the container runs: its PID 1 as the host sees it, its id and host name), one thread
  1. opens a pidfd of that process and checks the process is still that container (its cgroup path
     names the container id), so a recycled PID is never entered;
  2. enters the container's network namespace (``setns`` on /proc/PID/ns/net: per thread, the rest of
     the process stays where it was) and opens its netlink socket there (Kernel);
  3. runs the agent loop (Worker/epm/agent.py) on the directory's desired file, reporting on its socket;
     the EVMs' namespace files live in ``ROOT/<container>/netns/`` on the host;
  4. when the container's process exits (the pidfd becomes readable), unmounts the EVMs' namespace
     files (the container's namespace, and every veth, tap and bridge in it, goes with the container)
     and ends, dropping its hold on the namespace.

Why one child process rather than threads inside the Worker: a thread stuck in a kernel call cannot be
interrupted, a process can. The watchdog ends this process when a kernel call outlives the desired
file's ``op_timeout``; the Worker starts a fresh one (Worker/epm/keeper.py), which rolls back half-made
EVMs and converges, while the Worker itself goes on. The process dies with the Worker (PR_SET_PDEATHSIG)
and holds a lock on ROOT, so two agents never serve the same EPMs.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import resource
import select
import signal
import socket
import sys
import threading
import time
from typing import Any

from . import names, nsfs
from .agent import EXIT_STUCK, Agent, bind_datagram, log
from .kernel import FatalError, Kernel

SCAN_SECONDS = 2.0  # the directory is read again at least this often (the Worker nudges NODE_SOCK)
RETRY_SECONDS = 2.0  # an EPM whose thread ended while its container lives is served again after this
LOCK_WAIT_SECONDS = 30.0
PR_SET_PDEATHSIG = 1


class Target:
    """Which process of which container an EPM directory names (``target.json``)."""

    def __init__(self, doc: dict[str, Any]) -> None:
        pid, cid, host = doc.get("pid"), doc.get("id"), doc.get("hostname", "")
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 1:
            raise ValueError("pid must be an integer > 1")
        if not isinstance(cid, str) or len(cid) != 64 or not all(c in "0123456789abcdef" for c in cid):
            raise ValueError("id must be a full container id")
        if not isinstance(host, str) or len(host) > 255:
            raise ValueError("hostname must be a short string")
        self.pid, self.id, self.hostname = pid, cid, host


def read_target(d: str) -> Target | None:
    try:
        with open(os.path.join(d, names.TARGET_FILE), "rb") as f:
            return Target(json.loads(f.read(4096)))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log(f"{os.path.basename(d)}: ignoring its target file: {exc}")
        return None


def open_container(t: Target) -> int | None:
    """A pidfd of the container's process, or None if it is gone (or the PID is now someone else's)."""
    try:
        fd = os.pidfd_open(t.pid)
    except ProcessLookupError:
        return None
    try:
        with open(f"/proc/{t.pid}/cgroup") as f:
            cgroup = f.read()
    except OSError:
        os.close(fd)
        return None
    if t.id not in cgroup:  # opened after the check: the pidfd pins this very process from now on
        os.close(fd)
        return None
    return fd


def unmount_all(netns_dir: str) -> int:
    """Unmount and remove every EVM namespace file in an EPM's directory (its container is gone)."""
    n = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(netns_dir):
            if names.seq_of(entry, names.NS_PREFIX) is not None:
                n += nsfs.detach(os.path.join(netns_dir, entry))
    return n


class Runner:
    """One EPM's thread."""

    def __init__(self, node: Node, d: str) -> None:
        self.node, self.dir, self.name = node, d, os.path.basename(d)
        self.agent: Agent | None = None
        self.thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self.ended_at: float | None = None

    def run(self) -> None:
        try:
            self._run()
        except FatalError as exc:  # this thread is stranded in an EVM's namespace: start afresh
            log(f"fatal: {exc}")
            os._exit(3)
        except Exception as exc:
            log(f"ended by {type(exc).__name__}: {exc}; served again in {RETRY_SECONDS:g}s")
        finally:
            self.ended_at = time.monotonic()

    def _run(self) -> None:
        target = read_target(self.dir)
        if target is None:
            return
        netns_dir = os.path.join(self.dir, names.NETNS_SUBDIR)
        pidfd = open_container(target)
        if pidfd is None:
            log(f"its container process {target.pid} is gone; removing its EVMs' namespace files")
            unmount_all(netns_dir)
            return
        try:
            ns = os.open(f"/proc/{target.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                nsfs.setns_net(ns)  # this thread only; it ends with the EPM, so it never goes back
            finally:
                os.close(ns)
            kernel = Kernel(netns_dir, target.hostname)
            try:
                self.agent = Agent(self.dir, kernel, gone_fd=pidfd)
                if self.node.stopping.is_set():
                    return
                self.agent.run()
            finally:
                kernel.close()
            if _exited(pidfd):
                n = unmount_all(netns_dir)
                log(f"its container exited; {n} EVM namespace files removed")
        finally:
            os.close(pidfd)


def _exited(pidfd: int) -> bool:
    p = select.poll()
    p.register(pidfd, select.POLLIN)
    return bool(p.poll(0))


def raise_fd_limit() -> None:
    """Several descriptors per EPM (its netlink, report and wake sockets, pidfd): take the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Node:
    def __init__(self, root: str) -> None:
        self.root = root
        self.runners: dict[str, Runner] = {}
        self.stopping = threading.Event()
        self.sock = self._bind()

    def _bind(self) -> socket.socket:
        return bind_datagram(os.path.join(self.root, names.NODE_SOCK))

    def scan(self) -> None:
        now = time.monotonic()
        try:
            entries = os.listdir(self.root)
        except FileNotFoundError:
            return
        for name in entries:
            d = os.path.join(self.root, name)
            r = self.runners.get(name)
            if r is not None and (r.ended_at is None or now - r.ended_at < RETRY_SECONDS):
                continue
            if not os.path.exists(os.path.join(d, names.TARGET_FILE)):
                continue
            r = self.runners[name] = Runner(self, d)
            r.thread.start()
        for name in [n for n, r in self.runners.items() if r.ended_at is not None and n not in entries]:
            del self.runners[name]

    def run(self) -> None:
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        while not self.stopping.is_set():
            self.scan()
            poller.poll(SCAN_SECONDS * 1000)
            while True:
                try:
                    self.sock.recv(64)
                except (BlockingIOError, OSError):
                    break
        for r in list(self.runners.values()):
            if r.agent is not None:
                r.agent.interrupt()
        for r in list(self.runners.values()):
            r.thread.join(timeout=5.0)

    def watchdog(self) -> None:
        """Ends the process when one kernel call (of any EPM) outlives its EPM's op_timeout."""
        while not self.stopping.wait(1.0):
            now = time.monotonic()
            for r in list(self.runners.values()):
                a = r.agent
                if a is None or r.ended_at is not None:
                    continue
                busy = a.kernel.busy
                limit = a.desired.op_timeout if a.desired else 20.0
                if busy is not None and now - busy[1] > limit:
                    log(f"{r.name}: kernel call '{busy[0]}' has taken over {limit:g}s; exiting so that a "
                        "fresh agent reconciles")
                    if a.reporter is not None:
                        with contextlib.suppress(Exception):
                            a.reporter.status(stuck=busy[0])
                    os._exit(EXIT_STUCK)


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _lock(root: str) -> int:
    """Hold ROOT's lock (a predecessor still running is waited for, within LOCK_WAIT_SECONDS)."""
    fd = os.open(os.path.join(root, names.NODE_LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"another EVM agent holds {root}") from None
            time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m Worker.epm.node ROOT", file=sys.stderr)
        return 2
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before the death signal was armed
        return 1
    raise_fd_limit()
    root = os.path.abspath(args[0])
    os.makedirs(root, mode=0o700, exist_ok=True)
    try:
        _lock(root)
    except TimeoutError as exc:
        log(str(exc))
        return 1
    node = Node(root)
    signal.signal(signal.SIGTERM, lambda *_: node.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: node.stopping.set())
    threading.Thread(target=node.watchdog, name="watchdog", daemon=True).start()
    log(f"serving the EPMs under {root}")
    node.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
