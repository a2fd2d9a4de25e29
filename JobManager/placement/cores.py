"""Which concrete cores a task gets on a node.

Rule: the lowest-numbered run of contiguous free core ids that is long enough (so a task's cpuset is a
single range such as "4-7" whenever the node has one); if no run is long enough, the lowest free ids.
"""

from __future__ import annotations


def pick_cores(free: list[int], n: int) -> list[int] | None:
    """``n`` cores out of the sorted ``free`` list, or None if there are fewer than ``n``."""
    if n > len(free):
        return None
    run_start = 0
    for i in range(1, len(free) + 1):
        if i == len(free) or free[i] != free[i - 1] + 1:
            if i - run_start >= n:
                return free[run_start : run_start + n]
            run_start = i
    return free[:n]


def largest_block(free: list[int]) -> int:
    """Length of the longest run of contiguous free core ids."""
    best = run = 0
    for i, core in enumerate(free):
        run = run + 1 if i and core == free[i - 1] + 1 else 1
        best = max(best, run)
    return best
