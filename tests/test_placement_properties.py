"""Properties of every placement strategy over random clusters and job mixes (hypothesis; pure)."""

from __future__ import annotations

from collections import defaultdict

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from Common.placement import (
    STRATEGIES,
    JobRequest,
    Node,
    Plan,
    RunningJob,
    RunningTask,
    SchedulerOptions,
    TaskRequest,
    place,
)

UNIT = 256 * 1024**2
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def clusters(draw: st.DrawFn) -> list[Node]:
    nodes = []
    for k in range(draw(st.integers(1, 6))):
        ids = sorted(draw(st.sets(st.integers(0, 23), min_size=1, max_size=16)))
        busy = draw(st.sets(st.sampled_from(ids), max_size=len(ids)))
        mem_total = draw(st.integers(1, 64)) * UNIT
        mem_free = draw(st.integers(0, mem_total // UNIT)) * UNIT
        nodes.append(Node(f"w{k}", [c for c in ids if c not in busy], mem_free, len(ids), mem_total, ids,
                          {c: f"old:{c}" for c in busy}))
    return nodes


@st.composite
def queues(draw: st.DrawFn, cluster: list[Node], pinning: bool = True) -> list[JobRequest]:
    jobs = []
    for j in range(draw(st.integers(1, 8))):
        tasks = []
        for t in range(draw(st.integers(1, 4))):
            cores = draw(st.integers(1, 8))
            node = cpuset = None
            if pinning and draw(st.integers(0, 4)) == 0:
                target = draw(st.sampled_from(cluster))
                node = target.name if draw(st.booleans()) else "ghost"
                if draw(st.booleans()) and len(target.cores) >= cores:
                    cpuset = tuple(sorted(draw(st.permutations(target.cores))[:cores]))
            tasks.append(TaskRequest(f"t{t}", cores, draw(st.integers(1, 8)) * UNIT, node, cpuset))
        jobs.append(JobRequest(f"j{j}", tasks, draw(st.integers(0, 3)), float(j)))
    return jobs


def check(plan: Plan, jobs: list[JobRequest], cluster: list[Node]) -> None:
    """No core twice, everything within capacity in every dimension, gang all-or-nothing, pins kept."""
    nodes = {n.name: n for n in cluster}
    ids = {j.job_id for j in jobs}
    preempting = {p.job_id for p in plan.preemptions}
    assert set(plan.placed) | set(plan.waiting) | preempting == ids
    assert not set(plan.placed) & set(plan.waiting) and not preempting & (set(plan.placed) | set(plan.waiting))
    assert sorted(plan.order) == sorted(ids)
    assert all(isinstance(r, str) and r for r in plan.waiting.values())
    cores_on: dict[str, list[int]] = defaultdict(list)
    mem_on: dict[str, int] = defaultdict(int)
    for job in jobs:
        if job.job_id not in plan.placed:
            continue
        placement = plan.placed[job.job_id]
        assert set(placement) == {t.name for t in job.tasks}  # gang: every task or none
        for task in job.tasks:
            node, cores = placement[task.name]
            assert len(cores) == task.cores == len(set(cores))
            assert set(cores) <= set(nodes[node].free)
            if task.node is not None:
                assert node == task.node
            if task.cpuset is not None:
                assert sorted(cores) == sorted(task.cpuset)
            cores_on[node].extend(cores)
            mem_on[node] += task.mem
    for node, cores in cores_on.items():
        assert len(cores) == len(set(cores)), f"a core of {node} is given twice"
        assert mem_on[node] <= nodes[node].mem_free, f"{node}'s memory is over-committed"


@SETTINGS
@given(data=st.data(), strategy=st.sampled_from(sorted(STRATEGIES)))
def test_every_plan_respects_cores_memory_gang_and_pins(data: st.DataObject, strategy: str) -> None:
    cluster = data.draw(clusters())
    jobs = data.draw(queues(cluster))
    before = [(n.name, list(n.free), n.mem_free) for n in cluster]
    plan = place(jobs, cluster, strategy, now=100.0)
    check(plan, jobs, cluster)
    assert [(n.name, n.free, n.mem_free) for n in cluster] == before  # the snapshot is not modified
    assert place(jobs, cluster, strategy, now=100.0) == plan  # pure: same input, same plan


@SETTINGS
@given(data=st.data())
def test_preemption_frees_only_victims_and_never_overcommits(data: st.DataObject) -> None:
    cluster = data.draw(clusters())
    # Every held core belongs to a running job of priority 0-2, one task per held core run.
    running = []
    for n in cluster:
        for c in sorted(n.held):
            running.append(RunningJob(f"r{n.name}-{c}", data.draw(st.integers(0, 2)), float(c),
                                      [RunningTask(n.name, (c,), 0)]))
    jobs = data.draw(queues(cluster, pinning=False))
    plan = place(jobs, cluster, "priority", now=0.0, running=running, options=SchedulerOptions(preemption=True))
    check(plan, jobs, cluster)
    by_id = {r.job_id: r for r in running}
    for p in plan.preemptions:
        preemptor = next(j for j in jobs if j.job_id == p.job_id)
        freed = {(t.node, c) for v in p.victims for t in by_id[v].tasks for c in t.cores}
        assert all(by_id[v].priority < preemptor.priority for v in p.victims)
        placed_cores = {(n, c) for n, cores in (p.placement[t.name] for t in preemptor.tasks) for c in cores}
        free_now = {(n.name, c) for n in cluster for c in n.free}
        taken_by_plan = {(n, c) for pl in plan.placed.values() for n, cores in pl.values() for c in cores}
        assert placed_cores <= (free_now - taken_by_plan) | freed


# ---- the decreasing strategies are the textbook algorithms on one-dimensional inputs ------------------
def textbook(items: list[int], bins: int, capacity: int, decreasing: bool, best: bool) -> dict[int, int]:
    """Item index -> bin index (items that fit no bin are left out): FF/BF/FFD/BFD as in the books."""
    order = sorted(range(len(items)), key=lambda i: -items[i]) if decreasing else range(len(items))
    room = [capacity] * bins
    out = {}
    for i in order:
        fits = [b for b in range(bins) if room[b] >= items[i]]
        if fits:
            b = min(fits, key=lambda b: (room[b], b)) if best else fits[0]
            room[b] -= items[i]
            out[i] = b
    return out


ONE_D = {"first-fit": (False, False), "best-fit": (False, True),
         "first-fit-decreasing": (True, False), "best-fit-decreasing": (True, True)}


@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(1, 20), bins=st.integers(1, 8), data=st.data(), strategy=st.sampled_from(sorted(ONE_D)))
def test_one_dimensional_inputs_give_the_textbook_packing(capacity: int, bins: int, data: st.DataObject,
                                                          strategy: str) -> None:
    items = data.draw(st.lists(st.integers(1, capacity), min_size=1, max_size=40))
    cluster = [Node(f"b{k:02d}", list(range(capacity)), 0) for k in range(bins)]
    jobs = [JobRequest(f"i{k:03d}", [TaskRequest("t", size, 0)], submitted=float(k)) for k, size in enumerate(items)]
    plan = place(jobs, cluster, strategy, now=0.0)
    got = {k: int(plan.placed[f"i{k:03d}"]["t"][0][1:]) for k in range(len(items)) if f"i{k:03d}" in plan.placed}
    assert got == textbook(items, bins, capacity, *ONE_D[strategy])


@settings(max_examples=200, deadline=None)
@given(capacity=st.integers(1, 20), bins=st.integers(1, 8), data=st.data(),
       strategy=st.sampled_from(["first-fit-decreasing", "best-fit-decreasing"]))
def test_one_job_of_many_tasks_is_packed_like_the_textbook_or_waits_whole(capacity: int, bins: int,
                                                                         data: st.DataObject, strategy: str) -> None:
    items = data.draw(st.lists(st.integers(1, capacity), min_size=1, max_size=20))
    cluster = [Node(f"b{k:02d}", list(range(capacity)), 0) for k in range(bins)]
    plan = place([JobRequest("j", [TaskRequest(f"t{k:03d}", s, 0) for k, s in enumerate(items)])], cluster,
                 strategy, now=0.0)
    expect = textbook(items, bins, capacity, *ONE_D[strategy])
    if len(expect) < len(items):
        assert "j" in plan.waiting  # the textbook leaves some item out; a gang waits whole
    else:
        assert {int(t[1:]): int(n[1:]) for t, (n, _) in plan.placed["j"].items()} == expect


@settings(max_examples=100, deadline=None)
@given(capacity=st.integers(2, 30), data=st.data())
def test_min_slack_places_what_best_fit_decreasing_does_on_no_more_idle_nodes(capacity: int,
                                                                             data: st.DataObject) -> None:
    items = data.draw(st.lists(st.integers(1, capacity), min_size=1, max_size=40))
    cluster = [Node(f"b{k:02d}", list(range(capacity)), 0) for k in range(len(items))]
    jobs = [JobRequest(f"i{k:03d}", [TaskRequest("t", s, 0)], submitted=float(k)) for k, s in enumerate(items)]
    bfd = place(jobs, cluster, "best-fit-decreasing", now=0.0)
    ms = place(jobs, cluster, "min-slack", now=0.0)
    check(ms, jobs, cluster)
    assert set(ms.placed) == set(bfd.placed)

    def used(plan: Plan) -> int:
        return len({n for p in plan.placed.values() for n, _ in p.values()})

    assert used(ms) <= used(bfd)
    assert used(ms) >= -(-sum(items) // capacity)  # never below the lower bound: the check is real
