"""Indexes that answer "which node" without scanning every worker per task.

``FirstFitTree``: a segment tree over the nodes in name order holding, per subtree, the most free
cores and the most free memory of any node in it. The first node that fits (cores and memory) is found
by descending leftmost-first and skipping every subtree whose maxima are too small: O(log n) when one
dimension dominates, never worse than a scan.

``BestFitBuckets``: the nodes grouped by their number of free cores, each group sorted by (free
memory, node index). The best fit (fewest cores left over, then least memory left over, then name) is
the first group with at least the cores asked for that holds a node with enough memory: a bisection per
group tried, the groups themselves kept in a sorted list of non-empty counts.

A blocked node (reserved for another job) is kept out of both.
"""

from __future__ import annotations

from bisect import bisect_left, insort


class FirstFitTree:
    def __init__(self, cores: list[int], mem: list[int]) -> None:
        n = len(cores)
        size = 1
        while size < max(n, 1):
            size *= 2
        self.size = size
        self.mc = [-1] * (2 * size)
        self.mm = [-1] * (2 * size)
        self.mc[size : size + n] = cores
        self.mm[size : size + n] = mem
        for p in range(size - 1, 0, -1):
            self.mc[p] = max(self.mc[2 * p], self.mc[2 * p + 1])
            self.mm[p] = max(self.mm[2 * p], self.mm[2 * p + 1])

    def update(self, i: int, cores: int, mem: int) -> None:
        mc, mm = self.mc, self.mm
        p = self.size + i
        mc[p] = cores
        mm[p] = mem
        p >>= 1
        while p:
            a, b = 2 * p, 2 * p + 1
            c = mc[a] if mc[a] > mc[b] else mc[b]
            m = mm[a] if mm[a] > mm[b] else mm[b]
            if mc[p] == c and mm[p] == m:
                break
            mc[p] = c
            mm[p] = m
            p >>= 1

    def first(self, cores: int, mem: int) -> int | None:
        """The lowest node index with at least ``cores`` free cores and ``mem`` free memory."""
        mc, mm, size = self.mc, self.mm, self.size
        if mc[1] < cores or mm[1] < mem:
            return None
        stack = [1]
        while stack:
            p = stack.pop()
            if mc[p] < cores or mm[p] < mem:
                continue
            if p >= size:
                return p - size
            stack.append(2 * p + 1)
            stack.append(2 * p)
        return None


    def argmax(self, memory: bool = False) -> int | None:
        """The lowest node index with the most free cores (or memory); None if no node is open."""
        arr = self.mm if memory else self.mc
        if arr[1] < 0:
            return None
        p = 1
        while p < self.size:
            p = 2 * p if arr[2 * p] == arr[p] else 2 * p + 1
        return p - self.size


class BestFitBuckets:
    def __init__(self, cores: list[int], mem: list[int]) -> None:
        self.groups: dict[int, list[tuple[int, int]]] = {}
        for i, (c, m) in enumerate(zip(cores, mem, strict=True)):
            if c >= 0:
                self.groups.setdefault(c, []).append((m, i))
        for group in self.groups.values():
            group.sort()
        self.keys = sorted(self.groups)

    def remove(self, i: int, cores: int, mem: int) -> None:
        if cores < 0:
            return
        group = self.groups[cores]
        del group[bisect_left(group, (mem, i))]
        if not group:
            del self.groups[cores]
            del self.keys[bisect_left(self.keys, cores)]

    def add(self, i: int, cores: int, mem: int) -> None:
        if cores < 0:
            return
        group = self.groups.get(cores)
        if group is None:
            self.groups[cores] = [(mem, i)]
            insort(self.keys, cores)
        else:
            insort(group, (mem, i))

    def best(self, cores: int, mem: int) -> int | None:
        """The node left with the fewest free cores, then the least free memory, then the lowest index."""
        keys = self.keys
        probe = (mem, -1)
        for k in range(bisect_left(keys, cores), len(keys)):
            group = self.groups[keys[k]]
            j = bisect_left(group, probe)
            if j < len(group):
                return group[j][1]
        return None
