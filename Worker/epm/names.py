"""Names and paths shared by the agent and the Worker side of the EPM link.

Every kernel object the agent makes carries a project prefix and the EVM's number within its job, so a
restarted agent finds its own objects (and only those) by name.
"""

from __future__ import annotations

import contextlib
import os
import socket

FORMAT = 1  # of the desired file and of the reports

DESIRED_FILE = "desired.json"  # written by the Worker (atomically), read by the agent
WORKER_SOCK = "worker.sock"  # datagram socket bound by the Worker: the agent's reports
AGENT_SOCK = "agent.sock"  # datagram socket bound by the agent: the Worker's "look again" nudges
TARGET_FILE = "target.json"  # written by the Worker once the container runs: {"pid", "id", "hostname"}
NETNS_SUBDIR = "netns"  # the EVMs' namespace files, under the EPM's directory on the host
NODE_SOCK = "node.sock"  # in the directory of all EPM directories: "a new EPM is there" nudges
NODE_LOCK = ".agent.lock"  # held by the one node agent serving that directory

NETNS_DIR = "/run/netns"  # the default of Kernel(netns_dir=...); the node agent gives each EPM its own
NS_PREFIX = "rswevm-"
VETH_PREFIX = "rswv"  # the EPM side of the EVM's veth pair (the EVM side is eth0 in its namespace)
TAP_PREFIX = "rswt"
BRIDGE_PREFIX = "rswb"
SHARED_BRIDGE = "rswbr0"  # lean device set: every EVM's veth is a port of this one bridge
EVM_IFNAME = "eth0"
VPC_BRIDGE_PREFIX = "rswp"  # a VPC's bridge in the EPM, by VNI (Worker/epm/vpc.py)
VXLAN_PREFIX = "rswx"  # a VPC's VXLAN device, by VNI
UPLINK_PREFIX = "rswu"  # full set: the port of the EVM's own bridge towards its VPC's bridge ...
VPC_PORT_PREFIX = "rswo"  # ... and its peer, the port of the VPC's bridge
DOOMED_GROUP = 0x72737701  # links being deleted together (one RTM_DELLINK for the whole group)

# EPM-side links get fixed interface indexes derived from the EVM number, so no lookup is needed to
# enslave or bring them up. Far above what the kernel hands out on its own.
INDEX_BASE = 1 << 30
MAX_SEQ = (2**31 - 1 - INDEX_BASE) // 2 - 1


def ns_name(seq: int) -> str:
    return f"{NS_PREFIX}{seq}"


def ns_path(seq: int, netns_dir: str = NETNS_DIR) -> str:
    return os.path.join(netns_dir, ns_name(seq))


def veth_name(seq: int) -> str:
    return f"{VETH_PREFIX}{seq}"


def tap_name(seq: int) -> str:
    return f"{TAP_PREFIX}{seq}"


def bridge_name(seq: int) -> str:
    return f"{BRIDGE_PREFIX}{seq}"


def uplink_name(seq: int) -> str:
    return f"{UPLINK_PREFIX}{seq}"


def vpc_port_name(seq: int) -> str:
    return f"{VPC_PORT_PREFIX}{seq}"


def bridge_index(seq: int) -> int:
    return INDEX_BASE + 2 * seq


def veth_index(seq: int) -> int:
    return INDEX_BASE + 2 * seq + 1


def seq_of(name: str, prefix: str) -> int | None:
    """The EVM number in one of our names, or None if the name is not one of ours."""
    if not name.startswith(prefix):
        return None
    rest = name[len(prefix):]
    if not rest.isdigit() or rest.startswith("0"):
        return None
    return int(rest)


def hint(path: str, what: bytes) -> None:
    """Send a one-byte "look again" datagram to a socket (a hint: if nobody listens, the reader's own polling
    finds the change)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        s.setblocking(False)
        with contextlib.suppress(OSError):
            s.sendto(what, path)
