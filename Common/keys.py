"""ZeroMQ signing keys: how each is derived from the master token, and which process holds which.

The master token is the run directory's ``api_token`` (or ``RSWARM_API_TOKEN``). It never leaves the
control-plane host. Every ZeroMQ key is an HMAC-SHA256 of it, with a label that says what it is for:

    control-plane key  = HMAC(master, "rswarm/zmq/control-plane")
    node key of N      = HMAC(master, "rswarm/zmq/node/" + N)       shipped to node N only (0600 file)
    report key of N    = HMAC(node key of N, "report")               Worker N -> Discovery
    dispatch key of N  = HMAC(node key of N, "dispatch")             GlobalManager -> Worker N
    hollow key of P    = HMAC(master, "rswarm/zmq/hollow/" + P)     hollow host P -> Discovery

Parties are named like the envelope's ``sender`` and ``to``: the control-plane actors by role
(``frontend``, ``globalmanager``, ``discovery``, ``jobmanager``), a Worker as ``worker-<node>``, and a
hollow host (Worker/hollow.py: many emulated nodes named ``<prefix>NNNNN`` in one process, a load
stand-in that runs beside the control plane and holds the master) as ``hollow-<prefix>``.
The control plane holds the master (its actors need it anyway: the FrontEnd and GlobalManager check the
API token, the JobManager calls the GlobalManager with it, Discovery derives every node's report key),
so it holds every key. A Worker holds only its own node key, so it can sign its own reports and check
dispatches addressed to itself, and nothing else: it cannot sign as the control plane nor as another node.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from pathlib import Path

CONTROL_PLANE = frozenset({"frontend", "globalmanager", "discovery", "jobmanager"})
WORKER_PREFIX = "worker-"
HOLLOW_PREFIX = "hollow-"
# A node name as Common.jobspec.NODE_NAME accepts it.
_CACHE_MAX = 4096
_NODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$")


def _hmac(key: bytes, label: str) -> bytes:
    return hmac.new(key, label.encode(), hashlib.sha256).digest()


def node_of(party: str) -> str | None:
    """The node of a ``worker-<node>`` party, else None."""
    if party.startswith(WORKER_PREFIX) and _NODE.match(party[len(WORKER_PREFIX):]):
        return party[len(WORKER_PREFIX):]
    return None


def hollow_of(party: str) -> str | None:
    """The node-name prefix of a ``hollow-<prefix>`` party (a hollow host), else None."""
    if party.startswith(HOLLOW_PREFIX) and _NODE.match(party[len(HOLLOW_PREFIX):]):
        return party[len(HOLLOW_PREFIX):]
    return None


def is_party(name: str) -> bool:
    return name in CONTROL_PLANE or node_of(name) is not None or hollow_of(name) is not None


def worker_party(node: str) -> str:
    return WORKER_PREFIX + node


def node_key(master: str, node: str) -> bytes:
    """Node ``node``'s key, derived on the control plane from the master token."""
    return _hmac(master.encode(), f"rswarm/zmq/node/{node}")


class Keyring:
    """The ZeroMQ keys one process holds: every key (from the master token), or one node's."""

    def __init__(self, master: str | None = None, node: str | None = None, key_of_node: bytes | None = None):
        if master is None and (node is None or key_of_node is None):
            raise ValueError("a keyring holds the master token, or one node's name and key")
        self._master = master
        self._node, self._key_of_node = node, key_of_node
        self._cache: dict[tuple[str, str], bytes | None] = {}

    @classmethod
    def control_plane(cls, master: str) -> Keyring:
        return cls(master=master)

    @classmethod
    def worker(cls, node: str, key_of_node: bytes) -> Keyring:
        return cls(node=node, key_of_node=key_of_node)

    def _node_key(self, node: str) -> bytes | None:
        if self._master is not None:
            return node_key(self._master, node)
        return self._key_of_node if node == self._node else None

    def key(self, sender: str, to: str) -> bytes | None:
        """The key of frames from ``sender`` to ``to`` if this keyring holds it, else None.

        control plane -> control plane: the control-plane key; worker-N -> control plane: N's report key;
        globalmanager -> worker-N: N's dispatch key; anything else (a worker to a worker, another
        control-plane actor to a worker) has no key, so no such frame can be signed or accepted.
        """
        pair = (sender, to)
        if pair not in self._cache:
            if len(self._cache) >= _CACHE_MAX:  # sender names come from unauthenticated frames: stay bounded
                self._cache.clear()
            self._cache[pair] = self._derive(sender, to)
        return self._cache[pair]

    def _derive(self, sender: str, to: str) -> bytes | None:
        s_node, t_node = node_of(sender), node_of(to)
        if sender in CONTROL_PLANE and to in CONTROL_PLANE:
            return _hmac(self._master.encode(), "rswarm/zmq/control-plane") if self._master is not None else None
        if s_node is not None and to in CONTROL_PLANE:
            k = self._node_key(s_node)
            return _hmac(k, "report") if k is not None else None
        if sender == "globalmanager" and t_node is not None:
            k = self._node_key(t_node)
            return _hmac(k, "dispatch") if k is not None else None
        prefix = hollow_of(sender)
        if prefix is not None and to == "discovery" and self._master is not None:
            return _hmac(self._master.encode(), f"rswarm/zmq/hollow/{prefix}")
        return None


# ---- the node key file ------------------------------------------------------------------------------
def key_file_name(node: str) -> str:
    return f"worker-{node}.key"


def key_file(run_dir: Path, node: str) -> Path:
    """Where a Worker finds its node key: in its own run directory."""
    return run_dir / key_file_name(node)


def key_file_text(master: str, node: str) -> str:
    return node_key(master, node).hex() + "\n"


def write_key_file(run_dir: Path, node: str, master: str) -> Path:
    """Write (or replace, after a rotation) node ``node``'s key file, mode 0600 from its creation."""
    path = key_file(run_dir, node)
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key_file_text(master, node))
    os.replace(tmp, path)
    return path


def read_key_file(run_dir: Path, node: str) -> bytes | None:
    """Node ``node``'s key from its file; None when there is none; ValueError when it is malformed."""
    try:
        text = key_file(run_dir, node).read_text().strip()
    except FileNotFoundError:
        return None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"{key_file(run_dir, node)}: not a hex key") from None
    if len(key) != 32:
        raise ValueError(f"{key_file(run_dir, node)}: a node key is 32 bytes")
    return key


def worker_keyring(run_dir: Path, node: str, master: str) -> Keyring:
    """A Worker's keyring: its node key file; failing that (a Worker started by hand on the control-plane
    host), the key derived from the master token it was given. ValueError when it has neither."""
    key = read_key_file(run_dir, node)
    if key is None and master:
        key = node_key(master, node)
    if key is None:
        raise ValueError(f"no node key: {key_file(run_dir, node)} is missing (Management.py up writes it)")
    return Keyring.worker(node, key)
