"""min-slack, our own strategy: pack this pass's work onto as few idle nodes as possible.

1. **Admission.** Jobs with pinned tasks are placed first, whole, on their nodes. Then
   best-fit-decreasing runs over the rest of the batch; the jobs it places are the ones that run this
   pass (so min-slack never places fewer jobs than best-fit-decreasing), the others wait with its reasons.
2. **Construction.** The admitted tasks are packed again by Minimum Bin Slack (Gupta & Ho, 1999, in
   the MBS' form of Fleszar & Hindi, 2002): node after node (busy nodes first, fullest first, then
   idle nodes by name), seed the node with the largest task that fits, then add the subset of the
   remaining tasks that leaves the fewest cores free (an exact subset-sum over the task sizes; memory
   checked on the result). When tasks ask for memory, also by the bin-centric dot-product heuristic
   for vector packing (Panigrahy et al., 2011). The best of these and best-fit-decreasing is kept:
   fewest idle nodes used, then fewest nodes, then the most uneven fill (sum of squared fills, each
   node's fill being its used fraction of cores plus, with memory in play, of memory).
3. **Exchange search.** While more idle nodes are used than the lower bound max over dimensions of
   ⌈(demand - room on busy nodes) / node capacity⌉, in rounds: the least-filled opened nodes (up to
   two to empty, plus three) form a *pool*; a step swaps one or two tasks of another loaded node for one
   or two pool tasks that fit there and fill it at least as much, then re-packs the pool onto the pool's
   nodes (MBS, or dot-product if better); the swap is kept if the pool needs fewer nodes, or as many
   with a fill at least as uneven (and one time in ten anyway, to cross plateaus). A round ends when
   the pool needs a node fewer (next round) or the steps run out. At most ``search_iterations`` steps,
   and 200 per task of the batch; seeded, so the plan is deterministic.
4. **Cores.** Only then are concrete core ids chosen, per node, largest task first (cores.py rule).
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from itertools import combinations
from math import ceil

from Common.placement.cores import pick_cores
from Common.placement.model import JobRequest, Plan, TaskRequest
from Common.placement.pipeline import Pass, decreasing, place_batch_decreasing, place_job, record
from Common.placement.state import ClusterState
from Common.placement.strategies import Strategy, fifo

log = logging.getLogger(__name__)

Item = tuple[int, int]  # (cores, memory) of one task
DOT_PRODUCT_MAX_ITEMS = 2000  # its construction is quadratic in the batch


def subset_fill(counts: dict[int, int], values: list[int], room: int) -> list[int]:
    """The multiset of sizes (``counts[v]`` copies of each ``v`` in ``values``) with the largest sum <= room."""
    if room <= 0:
        return []
    mask = (1 << (room + 1)) - 1
    reach = 1
    stages: list[tuple[int, int]] = []
    for v in values:
        k = counts.get(v, 0)
        if k <= 0 or v > room:
            continue
        before = reach
        for _ in range(min(k, room // v)):
            reach = (reach | (reach << v)) & mask
        stages.append((v, before))
        if reach >> room & 1:
            break
    target = reach.bit_length() - 1
    chosen: list[int] = []
    for v, before in reversed(stages):
        j = 0
        while not (before >> (target - j * v)) & 1:
            j += 1
        chosen.extend([v] * j)
        target -= j * v
        if target == 0:
            break
    return chosen


class Packer:
    """Count-based packing of items onto nodes with given room (cores, memory); no core ids here.

    Sizes are compared normalised by each node's room, so memory counts as much as cores wherever it
    is asked for (with no memory asked, everything reduces to cores: the one-dimensional case).
    """

    def __init__(self, items: list[Item], room_c: dict[int, int], room_m: dict[int, int]) -> None:
        self.items = items
        self.room_c = room_c
        self.room_m = room_m
        self.two_d = any(m > 0 for _, m in items)

    def weight(self, content: list[int], node: int) -> float:
        """How full ``content`` makes ``node``: the sum over dimensions of the used fraction."""
        c = sum(self.items[i][0] for i in content) / max(self.room_c[node], 1)
        if not self.two_d:
            return c
        return c + sum(self.items[i][1] for i in content) / max(self.room_m[node], 1)

    def fill(self, bins: dict[int, list[int]]) -> float:
        return sum(self.weight(content, n) ** 2 for n, content in bins.items())

    def repack(self, pool: list[int], nodes: list[int]) -> dict[int, list[int]] | None:
        """The better of MBS and, with memory in play, the dot-product packing (fewest nodes, fullest)."""
        best = self.mbs(pool, nodes)
        if self.two_d:
            other = self.dot_product(pool, nodes)
            if other is not None and (best is None or (len(other), -self.fill(other)) < (len(best), -self.fill(best))):
                best = other
        return best

    def dot_product(self, pool: list[int], nodes: list[int]) -> dict[int, list[int]] | None:
        """Node after node, add the task whose (normalised) size best aligns with the room left: the
        bin-centric dot-product heuristic for vector packing (Panigrahy et al., 2011)."""
        items = self.items
        left = sorted(pool, key=lambda k: (-items[k][0], -items[k][1], k))
        bins: dict[int, list[int]] = {}
        for node in nodes:
            if not left:
                break
            cap_c, cap_m = max(self.room_c[node], 1), max(self.room_m[node], 1)
            rc, rm = self.room_c[node], self.room_m[node]
            content: list[int] = []
            while True:
                best, best_v = -1, -1.0
                for pos, k in enumerate(left):
                    c, m = items[k]
                    if c <= rc and m <= rm:
                        v = c * rc / (cap_c * cap_c) + m * rm / (cap_m * cap_m)
                        if v > best_v:
                            best, best_v = pos, v
                if best < 0:
                    break
                k = left.pop(best)
                content.append(k)
                rc -= items[k][0]
                rm -= items[k][1]
            if content:
                bins[node] = content
        return bins if not left else None

    def mbs(self, pool: list[int], nodes: list[int]) -> dict[int, list[int]] | None:
        """Minimum Bin Slack over ``nodes`` in order; None if some item of ``pool`` fits nowhere."""
        items = self.items
        by_size: dict[int, list[int]] = defaultdict(list)
        for it in sorted(pool, key=lambda k: items[k][1]):
            by_size[items[it][0]].append(it)
        sizes = sorted(by_size, reverse=True)
        left = len(pool)
        bins: dict[int, list[int]] = {}
        for node in nodes:
            if not left:
                break
            rc, rm = self.room_c[node], self.room_m[node]
            seed = next((s for s in sizes if s <= rc and by_size[s] and items[by_size[s][0]][1] <= rm), None)
            if seed is None:
                continue
            content = [by_size[seed].pop(0)]
            rc -= seed
            rm -= items[content[0]][1]
            counts = {s: len(v) for s, v in by_size.items() if v}
            want = subset_fill(counts, [s for s in sizes if counts.get(s)], rc)
            extra = [by_size[s][k] for s, k in _nth(want)]
            if sum(items[e][1] for e in extra) > rm:  # memory binds: fill greedily instead
                extra = []
                for s in sizes:
                    for it in by_size[s]:
                        if items[it][0] <= rc and items[it][1] <= rm:
                            extra.append(it)
                            rc -= items[it][0]
                            rm -= items[it][1]
            for e in extra:
                by_size[items[e][0]].remove(e)
            content.extend(extra)
            left -= len(content)
            bins[node] = content
        return bins if left == 0 else None


def _nth(sizes: list[int]) -> list[tuple[int, int]]:
    """[5, 5, 3] -> [(5, 0), (5, 1), (3, 0)]: which copy of each size."""
    seen: dict[int, int] = defaultdict(int)
    out = []
    for s in sizes:
        out.append((s, seen[s]))
        seen[s] += 1
    return out


class Solution:
    def __init__(self, packer: Packer, bins: dict[int, list[int]], idle: set[int]) -> None:
        self.packer = packer
        self.bins = {n: list(v) for n, v in bins.items() if v}
        self.idle = idle

    def cost(self) -> tuple[int, int, float]:
        return (sum(1 for n in self.bins if n in self.idle), len(self.bins), -self.packer.fill(self.bins))


POOL_EXTRA = 3  # the pool holds this many more nodes than it tries to empty
POOL_TARGET = 2  # ... and tries to empty at most this many at a time
STEPS_PER_TASK = 200  # the search takes at most this many steps per task of the batch (and search_iterations)


def swap_options(pool: list[int], items: list[Item]) -> list[tuple[int, int, tuple[int, ...]]]:
    """Every one or two pool tasks that could go into a partner: (cores, memory, pool positions)."""
    out = [(items[i][0], items[i][1], (q,)) for q, i in enumerate(pool)]
    out += [(items[pool[q]][0] + items[pool[r]][0], items[pool[q]][1] + items[pool[r]][1], (q, r))
            for q, r in combinations(range(len(pool)), 2)]
    return out


def exchange_search(sol: Solution, lower_bound: int, budget: int, rng: random.Random) -> Solution:
    """Step 3 of the module docstring: empty opened idle nodes by swaps with the other loaded nodes.

    Rounds: a round takes the least-filled opened nodes as the pool and swaps until the pool needs a
    node fewer (a new round starts from the result) or the steps run out.
    """
    packer, items = sol.packer, sol.packer.items
    bins = {n: list(c) for n, c in sol.bins.items()}
    load_c = {n: sum(items[i][0] for i in c) for n, c in bins.items()}
    load_m = {n: sum(items[i][1] for i in c) for n, c in bins.items()}
    steps = 0
    while steps < budget:
        opened = [n for n in bins if n in sol.idle]
        excess = len(opened) - lower_bound
        if excess <= 0:
            break
        opened.sort(key=lambda n: (packer.weight(bins[n], n), n))
        pool_nodes = sorted(opened[: min(excess, POOL_TARGET) + POOL_EXTRA])
        partners = sorted(n for n in bins if n not in pool_nodes)
        if not partners:
            break
        pool = [i for n in pool_nodes for i in bins[n]]
        cur = packer.repack(pool, pool_nodes) or {n: bins[n] for n in pool_nodes}
        start = len(cur)
        cur_score = (len(cur), -packer.fill(cur))
        options = swap_options(pool, items)
        while steps < budget and len(cur) >= start:
            steps += 1
            b = partners[rng.randrange(len(partners))]
            mine = bins[b]
            outs = [(k,) for k in range(len(mine))] + list(combinations(range(len(mine)), 2))
            out = outs[rng.randrange(len(outs))]
            out_c = sum(items[mine[k]][0] for k in out)
            out_m = sum(items[mine[k]][1] for k in out)
            room_c = packer.room_c[b] - load_c[b] + out_c
            room_m = packer.room_m[b] - load_m[b] + out_m
            # A swap may not make the partner emptier: (cores, memory) in, weighed by its room, >= out.
            wc, wm = 1 / max(packer.room_c[b], 1), (1 / max(packer.room_m[b], 1) if packer.two_d else 0.0)
            out_w = out_c * wc + out_m * wm
            ins = [q for c, m, q in options if c <= room_c and m <= room_m and c * wc + m * wm >= out_w]
            if not ins:
                continue
            into = ins[rng.randrange(len(ins))]
            new_pool = [pool[q] for q in range(len(pool)) if q not in into] + [mine[k] for k in out]
            repacked = packer.repack(new_pool, pool_nodes)
            if repacked is None:
                continue
            new_score = (len(repacked), -packer.fill(repacked))
            if new_score <= cur_score or (new_score[0] == cur_score[0] and rng.random() < 0.1):
                bins[b] = [mine[k] for k in range(len(mine)) if k not in out] + [pool[q] for q in into]
                load_c[b] = sum(items[i][0] for i in bins[b])
                load_m[b] = sum(items[i][1] for i in bins[b])
                pool, cur, cur_score = new_pool, repacked, new_score
                options = swap_options(pool, items)
        for n in pool_nodes:
            bins.pop(n, None)
            load_c.pop(n, None)
            load_m.pop(n, None)
        bins.update(cur)
        for n, content in cur.items():
            load_c[n] = sum(items[i][0] for i in content)
            load_m[n] = sum(items[i][1] for i in content)
        if len(cur) >= start:
            break  # the round ran out of steps without emptying a node
    return Solution(packer, bins, sol.idle)


def lower_bound_idle(items: list[Item], room_c: dict[int, int], room_m: dict[int, int], idle: set[int]) -> int:
    """Idle nodes needed at least: per dimension, what busy nodes cannot hold over the largest idle node."""
    if not idle:
        return 0
    need_c = sum(i[0] for i in items) - sum(c for n, c in room_c.items() if n not in idle)
    need_m = sum(i[1] for i in items) - sum(m for n, m in room_m.items() if n not in idle)
    big_c = max(room_c[n] for n in idle)
    big_m = max(room_m[n] for n in idle)
    return max(0, ceil(need_c / big_c) if big_c > 0 else 0, ceil(need_m / big_m) if big_m > 0 else 0)


def fits(sol: Solution) -> bool:
    """Every node holds at most its room in cores and memory, and every item exactly once."""
    items, packer = sol.packer.items, sol.packer
    seen = sorted(i for content in sol.bins.values() for i in content)
    return seen == list(range(len(items))) and all(
        sum(items[i][0] for i in c) <= packer.room_c[n] and sum(items[i][1] for i in c) <= packer.room_m[n]
        for n, c in sol.bins.items())


class MinSlack(Strategy):
    name = "min-slack"
    summary = ("best-fit-decreasing admission, then minimum-bin-slack packing and an exchange search onto as few "
               "idle nodes as possible")

    def plan(self, jobs: list[JobRequest], p: Pass) -> Plan:
        plan = Plan()
        state = p.state
        ordered = fifo(jobs)
        # Pinned jobs and jobs publishing host ports are placed whole first: the re-packing below counts
        # cores and memory only, and must not put two users of one host port on one node.
        for job in (j for j in ordered if j.pinned or j.publishes):
            plan.order.append(job.job_id)
            record(plan, job.job_id, place_job(job, state, state.best_fit, decreasing(job.tasks)))
        batch = [j for j in ordered if not j.pinned and not j.publishes]
        outcomes, order = place_batch_decreasing(batch, state, state.best_fit)
        plan.order.extend(order)
        admitted: list[tuple[str, TaskRequest, int]] = []  # (job, task, node index chosen by BFD)
        by_id = {j.job_id: j for j in batch}
        for job_id in order:
            outcome = outcomes[job_id]
            if isinstance(outcome, str):
                plan.waiting[job_id] = outcome
                continue
            for task in by_id[job_id].tasks:
                node, chosen = outcome[task.name]
                i = state.index[node]
                state.give(i, chosen, task.mem)
                admitted.append((job_id, task, i))
        if not admitted:
            return plan
        bins = self.improve(state, admitted, p)
        for i in sorted(bins):
            for k in sorted(bins[i], key=lambda k: (-admitted[k][1].cores, -admitted[k][1].mem, k)):
                job_id, task, _ = admitted[k]
                chosen = pick_cores(state.free[i], task.cores)
                assert chosen is not None
                state.take(i, chosen, task.mem, f"{job_id}:{task.name}")
                plan.placed.setdefault(job_id, {})[task.name] = (state.names[i], chosen)
        return plan

    @staticmethod
    def improve(state: ClusterState, admitted: list[tuple[str, TaskRequest, int]], p: Pass) -> dict[int, list[int]]:
        items = [(t.cores, t.mem) for _, t, _ in admitted]
        open_nodes = [i for i in range(len(state)) if not state.blocked[i]]
        room_c = {i: state.nfree[i] for i in open_nodes}
        room_m = {i: state.mem[i] for i in open_nodes}
        idle = {i for i in open_nodes if state.nfree[i] == state.nodes[i].capacity_cores
                and state.mem[i] >= state.nodes[i].mem_total}
        packer = Packer(items, room_c, room_m)
        bfd: dict[int, list[int]] = defaultdict(list)
        for k, (_, _, i) in enumerate(admitted):
            bfd[i].append(k)
        best = Solution(packer, bfd, idle)
        # MBS visits busy nodes first (fullest first), then idle nodes by name.
        busy = sorted((i for i in open_nodes if i not in idle), key=lambda i: (room_c[i], i))
        everything = list(range(len(items)))
        built = [packer.mbs(everything, busy + sorted(idle))]
        if packer.two_d and len(items) <= DOT_PRODUCT_MAX_ITEMS:
            built.append(packer.dot_product(everything, busy + sorted(idle)))
        for bins in built:
            if bins is not None and Solution(packer, bins, idle).cost() < best.cost():
                best = Solution(packer, bins, idle)
        bound = lower_bound_idle(items, room_c, room_m, idle)
        rng = random.Random(len(items))  # noqa: S311 - a search, not a secret: seeded so plans repeat
        budget = min(p.options.search_iterations, STEPS_PER_TASK * len(items))
        found = exchange_search(best, bound, budget, rng)
        if not fits(found):  # a bug in the search must cost packing quality, never an over-commit
            log.error("min-slack: the search returned an over-full node; using its starting point")
            found = best if fits(best) else Solution(packer, bfd, idle)
        return found.bins
