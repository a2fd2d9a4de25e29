"""The namespace system calls the agent needs, in-process through libc (no ``ip`` and no fork).

Network namespaces are per thread: ``unshare(CLONE_NEWNET)`` moves only the calling thread, which is
why paths go through /proc/thread-self and every switch away is undone in a ``finally``.
"""

from __future__ import annotations

import ctypes
import errno
import os

CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MNT_DETACH = 2
THREAD_NS = "/proc/thread-self/ns/net"

_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare_net() -> None:
    """Move the calling thread into a new, empty network namespace."""
    _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")


def setns_net(fd: int) -> None:
    _check(_libc.setns(fd, CLONE_NEWNET), "setns")


def bind_mount(source: str, target: str) -> None:
    _check(_libc.mount(source.encode(), target.encode(), b"none", MS_BIND, None), f"mount --bind {target}")


def detach(path: str) -> bool:
    """Unmount (lazily) and remove a namespace file. False if there was nothing to remove."""
    rc = _libc.umount2(path.encode(), MNT_DETACH)
    if rc != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):  # EINVAL: not a mount point (a half-made namespace)
            raise OSError(err, f"umount {path}: {os.strerror(err)}")
    try:
        os.unlink(path)
    except FileNotFoundError:
        return rc == 0
    return True
