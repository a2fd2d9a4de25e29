"""Runs the node's EVM agent (Worker/epm/node.py) as a child process and starts a fresh one when it dies.

Used by the Worker (Worker/evms.py) and by the agent tests' harness. The EVMs live in the kernel (the
EPMs' namespaces and the namespace files under ROOT), not in the agent, so a killed or stuck agent loses
nothing: its successor rolls back half-made EVMs and converges. Restarts back off from 0.2 s doubling to
5 s while the agent keeps dying within ``QUICK_SECONDS`` of its start. The agent's stderr and one line
per exit ("agent exited with N after S s") go to ``ROOT/agent.log``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time

QUICK_SECONDS = 10.0
STOP_GRACE = 5.0
LOG_FILE = "agent.log"


class Keeper:
    def __init__(self, root: str, python: str = sys.executable, cwd: str | None = None) -> None:
        self.root, self.python = root, python
        self.cwd = cwd or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.restarts = 0

    @property
    def log_path(self) -> str:
        return os.path.join(self.root, LOG_FILE)

    def start(self) -> None:
        if self.thread is None:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            self.thread = threading.Thread(target=self._keep, name="evm-agent-keeper", daemon=True)
            self.thread.start()

    def pid(self) -> int | None:
        p = self.proc
        return p.pid if p is not None and p.poll() is None else None

    def _say(self, line: str) -> None:
        with open(self.log_path, "a") as f:
            f.write(f"{time.strftime('%H:%M:%S')} keeper: {line}\n")

    def _keep(self) -> None:
        backoff = 0.2
        while not self.stopping.is_set():
            started = time.monotonic()
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen([self.python, "-m", "Worker.epm.node", self.root], cwd=self.cwd,
                                             stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                             close_fds=True)
            if self.stopping.is_set():  # stop() came while it was being started
                self.proc.terminate()
            code = self.proc.wait()
            if self.stopping.is_set():
                return
            lived = time.monotonic() - started
            self.restarts += 1
            self._say(f"agent exited with {code} after {lived:.1f}s")
            backoff = 0.2 if lived >= QUICK_SECONDS else min(5.0, backoff * 2)
            self.stopping.wait(0.0 if self.restarts == 1 and lived >= QUICK_SECONDS else backoff)

    def stop(self) -> None:
        self.stopping.set()
        p = self.proc
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                p.wait()
        if self.thread is not None:
            self.thread.join(timeout=STOP_GRACE)
