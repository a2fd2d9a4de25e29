"""supervisord event listener: counts restarts and retries FATAL programs after a growing cool-down.

supervisord runs it as ``python -m Common.ops.supervise_events RUN_DIR`` with ``events=PROCESS_STATE,TICK_5``.
It speaks the listener protocol on stdin/stdout (``supervisor.childutils.listener``), so it logs to stderr.

* Every STARTING that does not come from STOPPED (an operator's or ``up``'s start) is a restart:
  from EXITED (it died after running), BACKOFF (it died while starting) or FATAL (our cool-down retry).
  Counts and the last unexpected exit are kept in ``<run_dir>/supervisor/restarts.json``, written
  atomically, so they survive a restart of this listener (supervisord buffers events meanwhile).
* supervisord gives up on a program that keeps dying within ``startsecs`` (FATAL). We do not: a FATAL
  program is started again after ``FATAL_COOLDOWN`` s, doubling up to ``FATAL_COOLDOWN_MAX``; the cool-down
  goes back to its start once the program has been RUNNING for a while. An operator's stop (STOPPED)
  cancels any pending retry.
* supervisord restarts at once a program that dies after ``startsecs``, however often. A program that so
  dies ``CRASH_LIMIT`` times within ``CRASH_WINDOW`` s is *held*: stopped, and started again after the
  same doubling cool-down.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from supervisor import childutils

from Common.ops.supervise import CRASH_LIMIT, CRASH_WINDOW, FATAL_COOLDOWN, FATAL_COOLDOWN_MAX, LISTENER

log = logging.getLogger("supervise_events")
STABLE_SECONDS = 60.0  # RUNNING this long resets the cool-down


class Book:
    """The restart counts and pending retries, persisted in one JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.data: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            self.data = {"processes": {}}
        self.data.setdefault("processes", {})

    def proc(self, name: str) -> dict[str, Any]:
        return self.data["processes"].setdefault(name, {"restarts": 0, "cooldown": FATAL_COOLDOWN})

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)


def handle(book: Book, event: str, fields: dict[str, str], rpc: Any, now: float) -> bool:
    """Apply one event; True when the book changed."""
    if event == "TICK_5":
        changed = False
        for name, p in book.data["processes"].items():
            held = p.get("held_until")
            if held is not None and now >= held:
                p["held_until"] = None
                p["restarts"] += 1  # its STARTING comes from STOPPED, which is not counted there
                log.warning("%s: hold over; starting it again (restart %d)", name, p["restarts"])
                _call(rpc.supervisor.startProcess, name)
                changed = True
            due = p.get("fatal_retry_at")
            if due is not None and now >= due:
                p["fatal_retry_at"] = None
                p["cooldown"] = min(p.get("cooldown", FATAL_COOLDOWN) * 2, FATAL_COOLDOWN_MAX)
                log.warning("%s: FATAL for a while; starting it again (next cool-down %.0f s)", name, p["cooldown"])
                _call(rpc.supervisor.startProcess, name)
                changed = True
            running_since = p.get("running_since")
            if running_since and now - running_since >= STABLE_SECONDS and p.get("cooldown") != FATAL_COOLDOWN:
                p["cooldown"] = FATAL_COOLDOWN
                changed = True
        return changed
    name = fields.get("processname", "")
    if not event.startswith("PROCESS_STATE_") or not name or name == LISTENER:
        return False
    p = book.proc(name)
    state = event.removeprefix("PROCESS_STATE_")
    p["state"] = state
    if state != "RUNNING":
        p["running_since"] = None
    held = p.get("held_until") is not None and now < p["held_until"]
    if held and state in ("STARTING", "RUNNING", "BACKOFF"):
        _call(rpc.supervisor.stopProcess, name)  # supervisord's immediate restart, while we hold it
        return True
    if state == "STARTING" and fields.get("from_state") != "STOPPED":
        p["restarts"] += 1
        log.info("%s: restart %d (from %s)", name, p["restarts"], fields.get("from_state"))
    elif state == "RUNNING":
        p["running_since"] = now
    elif state == "EXITED" and fields.get("expected") == "0":
        p["last_exit"] = {"at": now, "pid": int(fields.get("pid", 0) or 0)}
        log.warning("%s: pid %s exited unexpectedly", name, fields.get("pid"))
        p["crashes"] = [t for t in p.get("crashes", []) if now - t < CRASH_WINDOW] + [now]
        if len(p["crashes"]) >= CRASH_LIMIT:
            cooldown = p.get("cooldown", FATAL_COOLDOWN)
            p["held_until"], p["crashes"] = now + cooldown, []
            p["cooldown"] = min(cooldown * 2, FATAL_COOLDOWN_MAX)
            log.warning("%s: %d crashes within %.0f s; holding it for %.0f s", name, CRASH_LIMIT, CRASH_WINDOW,
                        cooldown)
            _call(rpc.supervisor.stopProcess, name)
    elif state == "FATAL":
        p["fatal_retry_at"] = now + p.get("cooldown", FATAL_COOLDOWN)
        log.warning("%s: FATAL (kept dying while starting); retrying in %.0f s", name, p["cooldown"])
    elif state == "STOPPED" and not held:
        p["fatal_retry_at"] = None  # stopped on purpose
    return True


def _call(method: Any, name: str) -> None:
    """startProcess / stopProcess without waiting; a fault (already started, not running) is logged: it
    must never stop the listener."""
    try:
        method(name, False)
    except Exception as exc:
        log.warning("%s: %s failed: %s", name, getattr(method, "_Method__name", "call"), exc)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s supervise_events: %(message)s")
    book = Book(Path(args[0]) / "supervisor" / "restarts.json")
    rpc = childutils.getRPCInterface(os.environ)
    while True:
        headers, payload = childutils.listener.wait(sys.stdin, sys.stdout)
        try:
            fields = childutils.get_headers(payload.split("\n", 1)[0]) if payload else {}
            if handle(book, headers.get("eventname", ""), fields, rpc, time.time()):
                book.save()
        except Exception:  # one bad event must not stop the counting
            log.exception("event %s not handled", headers.get("eventname"))
        childutils.listener.ok(sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
