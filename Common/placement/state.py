"""The cluster during one planning pass: free cores and memory per node, and the indexes over them.

Nodes are kept in name order (index i). Every change goes through ``take`` / ``give`` (or ``block`` /
``unblock`` for reservations), which keep whichever indexes have been built in step, so a strategy
asks "first node that fits" or "best node that fits" in O(log n) instead of scanning the workers.
Nothing here can go negative: ``take`` refuses what is not free.
"""

from __future__ import annotations

from Common.placement.cores import add_cores, largest_block, remove_cores
from Common.placement.index import BestFitBuckets, FirstFitTree
from Common.placement.model import Node


class OverCommit(RuntimeError):
    """A take of cores or memory that is not free: a bug in a strategy, never a normal outcome."""


class ClusterState:
    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = sorted(nodes, key=lambda n: n.name)
        self.names = [n.name for n in self.nodes]
        self.index = {name: i for i, name in enumerate(self.names)}
        self.free = [list(n.free) for n in self.nodes]
        self.nfree = [len(f) for f in self.free]
        self.mem = [n.mem_free for n in self.nodes]
        self.blocked = [False] * len(self.nodes)
        self._ff: FirstFitTree | None = None
        self._bf: BestFitBuckets | None = None
        self.holders: dict[tuple[int, int], str] = {}  # (node, core) -> "job:task" taken in this pass
        self.ports: list[dict[str, str]] = [dict(n.ports) for n in self.nodes]  # host port -> "job:task"

    def __len__(self) -> int:
        return len(self.nodes)

    # ---- the two questions strategies ask ------------------------------------------------------
    def _keys(self) -> tuple[list[int], list[int]]:
        cores = [-1 if b else c for c, b in zip(self.nfree, self.blocked, strict=True)]
        mem = [-1 if b else m for m, b in zip(self.mem, self.blocked, strict=True)]
        return cores, mem

    def first_fit(self, cores: int, mem: int) -> int | None:
        if self._ff is None:
            self._ff = FirstFitTree(*self._keys())
        return self._ff.first(cores, mem)

    def best_fit(self, cores: int, mem: int) -> int | None:
        if self._bf is None:
            self._bf = BestFitBuckets(*self._keys())
        return self._bf.best(cores, mem)

    # ---- changes -------------------------------------------------------------------------------
    def _key(self, i: int) -> tuple[int, int]:
        return (-1, -1) if self.blocked[i] else (self.nfree[i], self.mem[i])

    def _moved(self, i: int, old: tuple[int, int]) -> None:
        new = self._key(i)
        if self._ff is not None:
            self._ff.update(i, *new)
        if self._bf is not None:
            self._bf.remove(i, *old)
            self._bf.add(i, *new)

    def take(self, i: int, cores: list[int], mem: int, who: str | None = None) -> None:
        free = self.free[i]
        if mem > self.mem[i] or len(cores) > len(free) or not set(cores) <= set(free):
            raise OverCommit(f"{self.names[i]}: cores {cores} / {mem} bytes are not free")
        if who is not None:
            for c in cores:
                self.holders[(i, c)] = who
        old = self._key(i)
        self.free[i] = remove_cores(free, cores)
        self.nfree[i] = len(self.free[i])
        self.mem[i] -= mem
        self._moved(i, old)

    def give(self, i: int, cores: list[int], mem: int) -> None:
        old = self._key(i)
        self.free[i] = add_cores(self.free[i], cores)
        self.nfree[i] = len(self.free[i])
        self.mem[i] += mem
        self._moved(i, old)

    # ---- host ports: a per-node resource, kept beside the cores ------------------------------------
    def ports_free(self, i: int, ports: frozenset[str]) -> bool:
        return not ports or not any(p in self.ports[i] for p in ports)

    def take_ports(self, i: int, ports: frozenset[str], who: str) -> None:
        busy = [p for p in ports if p in self.ports[i]]
        if busy:
            raise OverCommit(f"{self.names[i]}: host ports {busy} are in use")
        for p in ports:
            self.ports[i][p] = who

    def give_ports(self, i: int, ports: frozenset[str]) -> None:
        for p in ports:
            self.ports[i].pop(p, None)

    def block(self, i: int) -> None:
        if not self.blocked[i]:
            old = self._key(i)
            self.blocked[i] = True
            self._moved(i, old)

    def unblock(self, i: int) -> None:
        if self.blocked[i]:
            old = self._key(i)
            self.blocked[i] = False
            self._moved(i, old)

    # ---- for reasons ---------------------------------------------------------------------------
    def summary(self) -> tuple[int | None, int | None]:
        """(node with the most free cores, node with the most free memory), lowest name on ties."""
        if self._ff is None:
            self._ff = FirstFitTree(*self._keys())
        return self._ff.argmax(), self._ff.argmax(memory=True)

    def holder(self, i: int, core: int) -> str:
        return self.holders.get((i, core)) or self.nodes[i].held.get(core) or "another task"

    def largest_block(self, i: int) -> int:
        return largest_block(self.free[i])

    def idle(self, i: int) -> bool:
        """Nothing of the snapshot runs on node i (it may have been given work in this pass)."""
        node = self.nodes[i]
        return len(node.free) == len(node.cores) and node.mem_free >= node.mem_total
