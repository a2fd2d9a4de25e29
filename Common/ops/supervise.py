"""Supervision of a deployment's processes by supervisord (PyPI ``supervisor``), one per host and run dir.

``Management.py up`` writes ``<run_dir>/supervisor/supervisord.conf``, starts supervisord (which
daemonises and records its pid in ``<run_dir>/supervisor/supervisord.pid``) and then starts, queries and
stops the programs through supervisord's XML-RPC interface on a unix socket in that directory. The
directory is mode 0700 and the socket 0700: only the deployment's owner can talk to it, so there is no
password to keep (none in the config, none in argv); there is no inet listener at all.

Policy (docs/operations.md): ``autorestart=unexpected`` (anything but a clean exit 0 by the program
itself: a crash, a signal such as SIGKILL, a nonzero status); a process that dies after ``STARTSECS`` of running is
restarted at once; one that dies sooner goes to BACKOFF and is retried after 1, 2, 3, … s (supervisord's
linear backoff) up to ``STARTRETRIES`` times, then FATAL. The event listener (``Common.ops.supervise_events``)
counts every restart in ``<run_dir>/supervisor/restarts.json``, retries a FATAL program after a
cool-down that doubles from ``FATAL_COOLDOWN`` up to ``FATAL_COOLDOWN_MAX``, and holds (stops, then starts
after the same cool-down) a program that crashed ``CRASH_LIMIT`` times within ``CRASH_WINDOW`` even though
each run outlived ``startsecs``. So every crash loop backs off, and the system never gives up for good.

Secrets: the programs inherit supervisord's environment (the operator's RSWARM_API_TOKEN, if set); the
config file holds only non-secret settings; the token otherwise lives in the 0600 ``<run_dir>/api_token``.

``down`` asks supervisord to stop everything and exit, then sweeps: any process still carrying this
deployment's ``SUPERVISOR_SERVER_URL`` in its environment (supervisord sets it for every child, and
gunicorn workers inherit it) or running supervisord with this config is stopped. That covers a
supervisord that was itself SIGKILLed, whose children would otherwise run on as orphans.

Run as a module on a Worker host (over SSH): ``python -m Common.ops.supervise up|info|shutdown RUN_DIR``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.xmlrpc import SupervisorTransport

STARTSECS = 5  # a process must stay up this long to count as started (else BACKOFF)
STARTRETRIES = 5  # BACKOFF retries (1 s, 2 s, … 5 s apart) before FATAL
FATAL_COOLDOWN = 30.0  # the listener retries a FATAL program after this, doubling each time …
FATAL_COOLDOWN_MAX = 300.0  # … up to this
CRASH_LIMIT = 5  # this many unexpected exits after running (no BACKOFF then) …
CRASH_WINDOW = 120.0  # … within this many seconds: the listener holds the program for a cool-down
STOPWAITSECS = 10
LISTENER = "rswarm-events"  # the event listener's name in supervisord
ALIVE_STATES = ("STARTING", "RUNNING", "BACKOFF")  # supervisord is (re)starting or running it
RPC_TIMEOUT = 30.0


class SuperviseError(RuntimeError):
    pass


@dataclass
class Program:
    """One supervised process: its argv, the extra (non-secret) environment and its log file."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    directory: str = ""
    stopwaitsecs: int = STOPWAITSECS


# ---- the config file -----------------------------------------------------------------------------
def _quote(value: str, where: str) -> str:
    """A value for supervisord's ini file: '%' is its interpolation character; its environment parser
    takes no escapes, so a double quote or a newline cannot be represented and is refused."""
    if '"' in value or "\n" in value or "\r" in value:
        raise SuperviseError(f"{where}: a double quote or newline cannot be passed through supervisord: {value!r}")
    return value.replace("%", "%%")


def _env_line(env: dict[str, str], where: str) -> str:
    return ",".join(f'{k}="{_quote(v, f"{where} {k}")}"' for k, v in sorted(env.items()))


class Supervisor:
    """supervisord of one run directory: its config, its daemon and its XML-RPC interface."""

    def __init__(self, run_path: Path, python: str = sys.executable) -> None:
        self.run_path = Path(run_path)
        self.dir = self.run_path / "supervisor"
        self.conf = self.dir / "supervisord.conf"
        self.sock = self.dir / "supervisor.sock"
        self.pidfile = self.dir / "supervisord.pid"
        self.restarts_file = self.dir / "restarts.json"
        self.log_dir = self.run_path / "logs"
        self.python = python

    @property
    def url(self) -> str:
        return f"unix://{self.sock}"

    # ---- config ----------------------------------------------------------------------------------
    def render(self, programs: Iterable[Program], identifier: str, directory: str) -> str:
        lines = [
            "; written by Management.py: do not edit (it is rewritten on every `up`)",
            "[unix_http_server]", f"file={_quote(str(self.sock), 'socket')}", "chmod=0700", "",
            "[supervisord]", f"logfile={_quote(str(self.log_dir / 'supervisord.log'), 'log')}",
            "logfile_maxbytes=20MB", "logfile_backups=2", "loglevel=info",
            f"pidfile={_quote(str(self.pidfile), 'pidfile')}", f"childlogdir={_quote(str(self.log_dir), 'log')}",
            f"directory={_quote(directory, 'directory')}", f"identifier={_quote(identifier, 'identifier')}",
            "nodaemon=false", "umask=022", "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
            "[supervisorctl]", f"serverurl={_quote(self.url, 'socket')}", "",
        ]
        for p in programs:
            lines += [
                f"[program:{p.name}]",
                f"command={_quote(shlex.join(p.argv), p.name)}",
                f"directory={_quote(p.directory or directory, p.name)}",
                "autostart=false",  # Management.py starts them in dependency order
                # Restart whatever did not end cleanly by itself (a crash, a signal, a nonzero exit); an
                # actor that exits 0 on its own (a Worker whose node was removed) stays stopped.
                "autorestart=unexpected", "exitcodes=0",
                f"startsecs={STARTSECS}", f"startretries={STARTRETRIES}",
                "stopsignal=TERM", f"stopwaitsecs={p.stopwaitsecs}",
                "stopasgroup=true", "killasgroup=true",  # gunicorn's workers go with their master
                "redirect_stderr=true",
                f"stdout_logfile={_quote(str(self.log_dir / f'{p.name}.log'), p.name)}",
                "stdout_logfile_maxbytes=50MB", "stdout_logfile_backups=2",
            ]
            if p.env:
                lines.append(f"environment={_env_line(p.env, p.name)}")
            lines.append("")
        listener = shlex.join([self.python, "-m", "Common.ops.supervise_events", str(self.run_path)])
        lines += [
            f"[eventlistener:{LISTENER}]",
            f"command={_quote(listener, LISTENER)}",
            f"directory={_quote(directory, LISTENER)}",
            "events=PROCESS_STATE,TICK_5",
            "autostart=true", "autorestart=true", "startsecs=1",
            "stdout_logfile=NONE",  # stdout is the event protocol
            f"stderr_logfile={_quote(str(self.log_dir / f'{LISTENER}.log'), LISTENER)}",
            "stderr_logfile_maxbytes=5MB", "stderr_logfile_backups=1",
            f"environment={_env_line({'PYTHONPATH': directory}, LISTENER)}",
            "",
        ]
        return "\n".join(lines)

    def write_config(self, text: str) -> bool:
        """Write the config (0600 in a 0700 directory); True when it changed."""
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            if self.conf.read_text() == text:
                return False
        except OSError:
            pass
        tmp = self.conf.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, self.conf)
        return True

    # ---- the daemon ------------------------------------------------------------------------------
    def rpc(self, timeout: float = RPC_TIMEOUT) -> Any:
        transport = SupervisorTransport(None, None, self.url)
        sock_path = str(self.sock)

        class _Conn(http.client.HTTPConnection):
            def connect(self) -> None:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(timeout)
                self.sock.connect(sock_path)

        transport._get_connection = lambda: _Conn("localhost")  # type: ignore[attr-defined]
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def answers(self) -> bool:
        if not self.sock.exists():
            return False
        try:
            return self.rpc(5).supervisor.getState()["statename"] == "RUNNING"
        except (OSError, xmlrpc.client.Error, http.client.HTTPException):
            return False

    def daemon_pid(self) -> int | None:
        """supervisord's pid, from its pid file, checked against its command line (never a recycled pid)."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _is_ours_supervisord(pid, self.conf) else None

    def start_daemon(self, env: dict[str, str], timeout: float = 60.0) -> None:
        """Start supervisord (it daemonises: its first process exits once the daemon has forked)."""
        if self.answers():
            return
        self.sweep()  # a SIGKILLed supervisord's children, if any
        for stale in (self.sock, self.restarts_file):  # counts are per supervisord lifetime
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        proc = subprocess.run([self.python, "-m", "supervisor.supervisord", "-c", str(self.conf)], env=env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
                              cwd=str(self.run_path))
        if proc.returncode != 0:
            raise SuperviseError(f"supervisord did not start: {proc.stderr.strip() or proc.stdout.strip()}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.answers():
                return
            time.sleep(0.1)
        raise SuperviseError(f"supervisord did not answer on {self.sock} within {timeout:.0f}s; "
                             f"see {self.log_dir / 'supervisord.log'}")

    def update(self) -> list[str]:
        """Apply a rewritten config to a running supervisord (as ``supervisorctl update``): groups added
        are added, changed ones are stopped and re-added (not started), removed ones stopped and removed."""
        s = self.rpc().supervisor
        added, changed, removed = s.reloadConfig()[0]
        for name in (*changed, *removed):
            with contextlib.suppress(xmlrpc.client.Fault):
                s.stopProcessGroup(name, True)
            s.removeProcessGroup(name)
        for name in (*changed, *added):
            s.addProcessGroup(name)
            if name == LISTENER:
                s.startProcessGroup(name, False)
        return [*added, *changed, *removed]

    # ---- programs --------------------------------------------------------------------------------
    def info(self) -> dict[str, dict[str, Any]]:
        """Every program's supervisord record, by name (empty when supervisord does not answer)."""
        try:
            rows = self.rpc(10).supervisor.getAllProcessInfo()
        except (OSError, xmlrpc.client.Error, http.client.HTTPException):
            return {}
        return {r["name"]: r for r in rows}

    def start(self, name: str) -> None:
        try:
            self.rpc().supervisor.startProcess(name, False)
        except xmlrpc.client.Fault as exc:
            if "ALREADY_STARTED" not in exc.faultString:
                raise SuperviseError(f"cannot start {name}: {exc.faultString}") from None

    def stop(self, name: str) -> bool:
        """Stop one program (SIGTERM to its group, SIGKILL after its stopwaitsecs); True if it ran."""
        try:
            self.rpc(STOPWAITSECS + 30).supervisor.stopProcess(name, True)
        except xmlrpc.client.Fault as exc:
            if "NOT_RUNNING" in exc.faultString or "BAD_NAME" in exc.faultString:
                return False
            raise SuperviseError(f"cannot stop {name}: {exc.faultString}") from None
        except (OSError, http.client.HTTPException):
            return False
        return True

    def restarts(self) -> dict[str, dict[str, Any]]:
        """The listener's counts: {program: {"restarts": n, "last_exit": …, "fatal_retry_at": …}}."""
        try:
            return json.loads(self.restarts_file.read_text()).get("processes", {})
        except (OSError, ValueError):
            return {}

    def status(self) -> dict[str, dict[str, Any]]:
        """Per program: state, pid, uptime (s), restarts, last exit status; the listener left out."""
        counts = self.restarts()
        out = {}
        now = time.time()
        for name, r in self.info().items():
            if name == LISTENER:
                continue
            running = r["statename"] == "RUNNING"
            held = counts.get(name, {}).get("held_until")
            held = held if held and held > now and r["statename"] in ("STOPPED", "STOPPING") else None
            out[name] = {"state": "HELD" if held else r["statename"], "pid": r["pid"] or None,
                         "held_until": held, "fatal_retry_at": counts.get(name, {}).get("fatal_retry_at"),
                         "uptime": (r["now"] - r["start"]) if running and r["start"] else None,
                         "restarts": counts.get(name, {}).get("restarts", 0),
                         "exitstatus": r["exitstatus"], "spawnerr": r["spawnerr"] or None}
        return out

    def pid(self, name: str) -> int | None:
        r = self.info().get(name)
        return r["pid"] if r and r["statename"] in ALIVE_STATES and r["pid"] else None

    # ---- shutdown --------------------------------------------------------------------------------
    def shutdown(self, order: Iterable[str] = (), timeout: float = 60.0) -> None:
        """Stop ``order`` one by one (the rest with supervisord's own shutdown), wait for supervisord to
        exit, then sweep whatever of this deployment is still running."""
        if self.answers():
            for name in order:
                self.stop(name)
            pid = self.daemon_pid()
            with contextlib.suppress(OSError, xmlrpc.client.Error, http.client.HTTPException):
                self.rpc().supervisor.shutdown()
            deadline = time.monotonic() + timeout
            while pid is not None and _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
        self.sweep()
        for f in (self.sock, self.pidfile):
            with contextlib.suppress(FileNotFoundError):
                f.unlink()

    def members(self) -> list[int]:
        """Pids of every process of this deployment: supervisord with our config and anything carrying our
        SUPERVISOR_SERVER_URL (every program, gunicorn's workers, the listener)."""
        marker = f"SUPERVISOR_SERVER_URL={self.url}".encode()
        me = os.getpid()
        out = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            pid = int(entry.name)
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0") or _is_ours_supervisord(pid, self.conf):
                    out.append(pid)
            except OSError:
                continue
        return out

    def unsupervised(self) -> dict[str, int]:
        """With supervisord gone: the programs it left running, by name (SUPERVISOR_PROCESS_NAME, which it
        sets for each child), each as the top process of its tree (a gunicorn master, not its workers)."""
        pids = set(self.members())
        out: dict[str, int] = {}
        for pid in sorted(pids):
            try:
                raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                env = dict(e.split(b"=", 1) for e in raw if b"=" in e)
                ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            name = env.get(b"SUPERVISOR_PROCESS_NAME", b"").decode()
            if name and name != LISTENER and ppid not in pids and name not in out and _alive(pid):
                out[name] = pid
        return out

    def sweep(self, timeout: float = 15.0) -> list[int]:
        """SIGTERM every member, then SIGKILL whatever is left after ``timeout``; returns their pids."""
        pids = self.members()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)
        for pid in pids:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        while any(_alive(p) for p in pids) and time.monotonic() < deadline + 10:
            time.sleep(0.05)
        return pids


def _alive(pid: int) -> bool:
    """Running, not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _is_ours_supervisord(pid: int, conf: Path) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return str(conf).encode() in argv and any(b"supervisord" in a for a in argv)


def main(argv: list[str] | None = None) -> int:
    """On a Worker host, over SSH (the config was shipped to RUN_DIR/supervisor/supervisord.conf):
    ``up RUN_DIR PROGRAM…`` starts supervisord if needed, applies the config and starts the programs;
    ``info RUN_DIR`` prints the status; ``shutdown RUN_DIR`` stops everything. Each prints JSON."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or args[0] not in ("up", "info", "shutdown"):
        print("usage: python -m Common.ops.supervise up|info|shutdown RUN_DIR [PROGRAM…]", file=sys.stderr)
        return 2
    sup = Supervisor(Path(args[1]))
    try:
        if args[0] == "up":
            if sup.answers():
                sup.update()
            else:
                sup.start_daemon(dict(os.environ))
            for name in args[2:]:
                if sup.pid(name) is None:
                    sup.start(name)
        elif args[0] == "shutdown":
            sup.shutdown()
    except (SuperviseError, OSError, xmlrpc.client.Error) as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    print(json.dumps({"supervisord": sup.answers(), "pid": sup.daemon_pid(), "processes": sup.status()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
