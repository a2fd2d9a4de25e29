"""Which concrete cores a task gets on a node (the contiguous-core rule).

Rule, on the node's sorted free core ids split into maximal runs of consecutive ids:

1. if some run is long enough, take the lowest ids of the *shortest* such run (best fit among runs;
   ties: the lowest-numbered run), so the task's cpuset is one range such as "4-7" and long runs stay
   whole for wider tasks;
2. otherwise take whole runs, longest first (ties: lowest-numbered), the last one only in part, so the
   cpuset has as few pieces as possible.
"""

from __future__ import annotations


def runs(free: list[int]) -> list[tuple[int, int]]:
    """Maximal runs of consecutive ids in sorted ``free`` as (start index, length)."""
    out: list[tuple[int, int]] = []
    start = 0
    n = len(free)
    for i in range(1, n + 1):
        if i == n or free[i] != free[i - 1] + 1:
            out.append((start, i - start))
            start = i
    return out


def pick_cores(free: list[int], n: int) -> list[int] | None:
    """``n`` cores out of the sorted ``free`` list by the rule above, or None if there are fewer."""
    total = len(free)
    if n > total or n <= 0:
        return None if n > total else []
    if n == total:
        return list(free)
    if free[-1] - free[0] + 1 == total:  # one run: the common case on a fresh node
        return free[:n]
    best_start, best_len = -1, 0
    for start, length in runs(free):
        if length >= n and (best_start < 0 or length < best_len):
            best_start, best_len = start, length
            if length == n:
                break
    if best_start >= 0:
        return free[best_start : best_start + n]
    chosen: list[int] = []
    for start, length in sorted(runs(free), key=lambda r: (-r[1], r[0])):
        take = min(length, n - len(chosen))
        chosen.extend(free[start : start + take])
        if len(chosen) == n:
            break
    return sorted(chosen)


def largest_block(free: list[int]) -> int:
    """Length of the longest run of contiguous free core ids."""
    return max((length for _, length in runs(free)), default=0)


def remove_cores(free: list[int], cores: list[int]) -> list[int]:
    taken = set(cores)
    return [c for c in free if c not in taken]


def add_cores(free: list[int], cores: list[int]) -> list[int]:
    return sorted(free + list(cores))
