"""The host end of an EPM's directory: the desired-EVM file the Worker writes and the agent's reports.

Each EPM container gets its own directory on the host (``<run_dir>/epm/<container name>/``), served by
the node's EVM agent (Worker/epm/node.py); the container itself sees none of it. The Worker replaces
``desired.json`` atomically (write a new file, rename it over) and nudges the agent's datagram socket;
the agent sends its reports to the Worker's datagram socket. Once the container runs, the Worker writes
``target.json`` (its process, id and host name) and nudges the node agent. The EVMs' namespace files are
bind mounts in ``netns/`` of the directory. The Worker attributes what arrives on a directory's socket to
that directory's EPM, whatever the datagram says.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
from pathlib import Path
from typing import Any

from Common.evmstates import check_report_items
from Worker.epm import names, nsfs

MAX_DATAGRAM = 256 * 1024
META_FILE = "epm.json"  # who this directory belongs to, for a restarted Worker


class BadReport(ValueError):
    pass


def parse_report(data: bytes) -> dict[str, Any]:
    """An agent datagram, checked: ``items`` (EVM outcomes) and/or ``status``."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadReport("not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != names.FORMAT:
        raise BadReport("not an agent report of format 1")
    attempt = doc.get("attempt")
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
        raise BadReport("attempt must be an integer >= 0")
    if "items" in doc:
        try:
            check_report_items(doc["items"])
        except ValueError as exc:
            raise BadReport(str(exc)) from None
    host = doc.get("host") or {}
    if not isinstance(host, dict) or not all(isinstance(v, str) and len(v) <= 255 for v in host.values()):
        raise BadReport("host must map to short strings")
    doc["host"] = {k: host[k] for k in ("ip", "mac", "name") if k in host}
    status = doc.get("status")
    if status is not None and not isinstance(status, dict):
        raise BadReport("status must be an object")
    return doc


class EpmLink:
    """One EPM's directory on the host."""

    def __init__(self, root: Path, container: str) -> None:
        self.container = container
        self.dir = root / container
        self.sock: socket.socket | None = None

    @property
    def worker_sock(self) -> Path:
        return self.dir / names.WORKER_SOCK

    def open(self, meta: dict[str, Any]) -> None:
        """Create the directory, record whose it is, and (re)bind the report socket."""
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self._write(META_FILE, meta)
        self.rebind()

    def rebind(self) -> None:
        if self.sock is not None:
            self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.worker_sock.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.bind(str(self.worker_sock))
        sock.setblocking(False)
        self.sock = sock

    def healthy(self) -> bool:
        """False when the socket file vanished (removed from inside the EPM): rebind."""
        return self.sock is not None and self.worker_sock.is_socket()

    def _write(self, name: str, doc: dict[str, Any]) -> None:
        data = json.dumps(doc, separators=(",", ":")).encode()
        tmp = self.dir / f".{name}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, self.dir / name)  # replaces a symlink planted by the EPM, never follows it

    def write_target(self, pid: int, cid: str, hostname: str) -> None:
        self._write(names.TARGET_FILE, {"pid": pid, "id": cid, "hostname": hostname})
        names.hint(str(self.dir.parent / names.NODE_SOCK), b"t")

    def has_target(self) -> bool:
        return (self.dir / names.TARGET_FILE).exists()

    def write_desired(self, doc: dict[str, Any]) -> None:
        self._write(names.DESIRED_FILE, doc)
        self.nudge()

    def nudge(self) -> None:
        """Tell the agent to look again (a hint: if nobody listens, its own polling finds the file)."""
        names.hint(str(self.dir / names.AGENT_SOCK), b"w")

    def receive(self, limit: int = 1000) -> list[bytes]:
        out: list[bytes] = []
        if self.sock is None:
            return out
        while len(out) < limit:
            try:
                out.append(self.sock.recv(MAX_DATAGRAM))
            except (BlockingIOError, InterruptedError):
                break
        return out

    def close(self, remove: bool = True) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if remove:
            unmount_namespaces(self.dir)
            shutil.rmtree(self.dir, ignore_errors=True)


def unmount_namespaces(d: Path) -> int:
    """Unmount the EVM namespace files of an EPM directory (the node agent does it when the container
    exits; this is for an agent that was not running then)."""
    n = 0
    ns_dir = d / names.NETNS_SUBDIR
    for entry in ns_dir.iterdir() if ns_dir.is_dir() else []:
        if names.seq_of(entry.name, names.NS_PREFIX) is not None:
            with contextlib.suppress(OSError):
                n += nsfs.detach(str(entry))
    return n


def read_meta(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads((path / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def desired_doc(job_id: str, epm: str, attempt: int, container: str, cfg: dict[str, Any],
                records: list[dict[str, Any]], rates: dict[str, dict[str, Any]], drain: bool,
                op_timeout: float, vpc: dict[str, Any] | None = None) -> dict[str, Any]:
    """The desired file's content for one EPM (see Worker/epm/desired.py for the format); ``vpc``: its
    ``local_ip`` and ``vpcs`` (Worker/vpcs.py)."""
    return {
        "format": names.FORMAT, "job_id": job_id, "epm": epm, "attempt": attempt, "container": container,
        "devices": cfg["devices"], "prefix": cfg["prefix"], "gateway": cfg["gateway"], "drain": drain,
        "op_timeout": op_timeout, "rates": rates,
        "evms": [[r["seq"], r["ip"], r["mac"], r["batch"], r["state"], bool(r.get("delete_requested")), r.get("vpc")]
                 for r in records],
        "local_ip": (vpc or {}).get("local_ip"), "vpcs": (vpc or {}).get("vpcs") or {},
    }
