"""PID 1 of an EPM container: runs the agent and starts a fresh one whenever it dies.

The EVMs live in the container's namespaces and mounts, not in the agent, so a killed or stuck agent
loses nothing: its successor reconciles. Restarts back off (0.2 s doubling to 5 s); after ``MAX_QUICK``
deaths in a row, each within ``QUICK_SECONDS`` of its start, the supervisor gives up and exits non-zero
so the Worker sees the EPM fail with the agent's last words in its log. SIGTERM is passed on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

MAX_QUICK = 5
QUICK_SECONDS = 10.0
STOP_GRACE = 5.0


def main() -> int:
    stopping = threading.Event()
    child: list[subprocess.Popen[bytes]] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()
        if child and child[0].poll() is None:
            child[0].send_signal(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    module = f"{__package__}.agent" if __package__ else "agent"
    quick, backoff = 0, 0.2
    while not stopping.is_set():
        started = time.monotonic()
        child[:] = [subprocess.Popen([sys.executable, "-m", module])]
        code = child[0].wait()
        while True:  # as PID 1, reap whatever else ended
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
        if stopping.is_set():
            return 0
        lived = time.monotonic() - started
        quick = quick + 1 if lived < QUICK_SECONDS else 0
        print(f"epm-supervisor: agent exited with {code} after {lived:.1f}s", file=sys.stderr, flush=True)
        if quick >= MAX_QUICK:
            print(f"epm-supervisor: the agent died {quick} times in a row; giving up", file=sys.stderr, flush=True)
            return 1
        backoff = 0.2 if lived >= QUICK_SECONDS else min(5.0, backoff * 2)
        stopping.wait(backoff if quick > 1 else 0.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
