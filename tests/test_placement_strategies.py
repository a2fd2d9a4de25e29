"""Each placement strategy on small hand-made cases (pure: no MongoDB, no Docker)."""

from __future__ import annotations

import pytest

from Common.placement import (
    STRATEGIES,
    JobRequest,
    Node,
    RunningJob,
    RunningTask,
    SchedulerOptions,
    TaskRequest,
    never_fits,
    place,
)
from Common.placement.cores import pick_cores

G = 1024**3
M = 1024**2


def node(name: str, cores: int | list[int], mem: int = 64 * G, held: dict[int, str] | None = None) -> Node:
    ids = list(range(cores)) if isinstance(cores, int) else cores
    busy = set(held or {})
    return Node(name, [c for c in ids if c not in busy], mem, len(ids), mem, ids, dict(held or {}))


def job(job_id: str, *cores: int, mem: int = 64 * M, priority: int = 0, at: float = 0.0) -> JobRequest:
    return JobRequest(job_id, [TaskRequest(f"t{k}", c, mem) for k, c in enumerate(cores)], priority, at)


def nodes_of(plan, job_id: str) -> dict[str, str]:
    return {task: n for task, (n, _) in plan.placed[job_id].items()}


# ---- the prototype's failures -------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["first-fit-decreasing", "best-fit-decreasing"])
def test_tasks_of_one_then_four_cores_each_get_their_own_size(strategy: str) -> None:
    # The prototype sorted the tasks for FFD/BFD but applied the decisions to the unsorted tasks: the
    # 1-core task got the 4-core slot and the 4-core task crashed. Here every task gets its own size.
    plan = place([job("j", 1, 4)], [node("w1", 4), node("w2", 1)], strategy, now=0)
    got = plan.placed["j"]
    assert got["t0"] == ("w2", [0])
    assert got["t1"] == ("w1", [0, 1, 2, 3])


def test_best_fit_decreasing_is_selectable_and_differs_from_first_fit_decreasing() -> None:
    # The prototype could never select BFD (a typo). Here: 3 cores go to the tightest node under BFD.
    cluster = [node("w1", 8), node("w2", 3)]
    assert "best-fit-decreasing" in STRATEGIES
    assert nodes_of(place([job("j", 3)], cluster, "best-fit-decreasing", now=0), "j") == {"t0": "w2"}
    assert nodes_of(place([job("j", 3)], cluster, "first-fit-decreasing", now=0), "j") == {"t0": "w1"}


def test_memory_is_a_dimension_and_never_goes_negative() -> None:
    cluster = [node("w1", 8, mem=1 * G), node("w2", 8, mem=4 * G)]
    plan = place([job("a", 1, mem=3 * G), job("b", 1, mem=3 * G)], cluster, "first-fit", now=0)
    assert nodes_of(plan, "a") == {"t0": "w2"}  # w1 has the cores but not the memory
    assert "b" in plan.waiting
    assert "needs 1 core and 3g on one node" in plan.waiting["b"]
    assert "the most free memory is 1g on w1" in plan.waiting["b"]


# ---- first-fit and best-fit ----------------------------------------------------------------------
def test_first_fit_takes_the_first_node_by_name_best_fit_the_tightest() -> None:
    cluster = [node("w1", 8), node("w2", 2), node("w3", 3)]
    assert nodes_of(place([job("j", 2)], cluster, "first-fit", now=0), "j") == {"t0": "w1"}
    assert nodes_of(place([job("j", 2)], cluster, "best-fit", now=0), "j") == {"t0": "w2"}
    assert nodes_of(place([job("j", 3)], cluster, "best-fit", now=0), "j") == {"t0": "w3"}


def test_first_fit_is_first_come_first_served() -> None:
    plan = place([job("late", 4, at=2), job("early", 4, at=1)], [node("w1", 4)], "first-fit", now=0)
    assert list(plan.placed) == ["early"] and "late" in plan.waiting
    assert plan.order == ["early", "late"]


def test_decreasing_strategies_order_the_whole_batch_by_size() -> None:
    # FIFO first-fit puts the 2 first and strands the 4; decreasing places the 4 first, then the 2.
    cluster = [node("w1", 4), node("w2", 2)]
    jobs = [job("small", 2, at=1), job("big", 4, at=2)]
    ff = place(jobs, cluster, "first-fit", now=0)
    assert nodes_of(ff, "small") == {"t0": "w1"} and "big" not in ff.placed and "big" in ff.waiting
    for strategy in ("first-fit-decreasing", "best-fit-decreasing"):
        plan = place(jobs, cluster, strategy, now=0)
        assert nodes_of(plan, "big") == {"t0": "w1"} and nodes_of(plan, "small") == {"t0": "w2"}
        assert plan.order == ["big", "small"]


# ---- gang ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", sorted(set(STRATEGIES) - {"manual"}))
def test_a_job_that_does_not_fit_whole_takes_nothing(strategy: str) -> None:
    cluster = [node("w1", 4), node("w2", 4)]
    plan = place([job("gang", 4, 4, 1, at=1), job("after", 4, 4, at=2)], cluster, strategy, now=0,
                 options=SchedulerOptions(reservation=False))
    assert "gang" in plan.waiting and "gang" not in plan.placed
    assert "its 3 tasks run together or not at all" in plan.waiting["gang"]
    assert sorted(nodes_of(plan, "after").values()) == ["w1", "w2"]  # what gang tried was given back


@pytest.mark.parametrize("strategy", ["first-fit-decreasing", "best-fit-decreasing"])
def test_a_job_blocked_by_a_gang_that_gave_back_gets_another_try(strategy: str) -> None:
    # Batch order: a.t0 (4 cores) takes w1; b (3) then fits nowhere; a.t1 (3) fits nowhere either, so
    # a gives w1 back - and b, which failed before that, is tried again and gets w1.
    plan = place([job("b", 3, at=0), job("a", 4, 3, at=1)], [node("w1", 4), node("w2", 2)], strategy, now=0)
    assert nodes_of(plan, "b") == {"t0": "w1"}
    assert "a" in plan.waiting and "a" not in plan.placed


# ---- the contiguous-core rule --------------------------------------------------------------------
def test_cores_come_from_the_shortest_run_that_holds_them() -> None:
    free = [0, 1, 3, 4, 5, 6, 8]
    assert pick_cores(free, 1) == [8]
    assert pick_cores(free, 2) == [0, 1]
    assert pick_cores(free, 3) == [3, 4, 5]
    assert pick_cores(free, 5) == [0, 3, 4, 5, 6]  # no run is long enough: longest runs first
    assert pick_cores(free, 8) is None


def test_placed_cpusets_are_ranges_when_the_node_allows() -> None:
    plan = place([job("j", 2, 4, 2)], [node("w1", 8)], "best-fit-decreasing", now=0)
    cores = {t: c for t, (_, c) in plan.placed["j"].items()}
    assert cores == {"t1": [0, 1, 2, 3], "t0": [4, 5], "t2": [6, 7]}


# ---- manual --------------------------------------------------------------------------------------
def pinned(job_id: str, node_name: str, cpuset: tuple[int, ...] | None, cores: int | None = None,
           mem: int = 64 * M) -> JobRequest:
    n = cores if cores is not None else len(cpuset or ())
    return JobRequest(job_id, [TaskRequest("t", n, mem, node_name, cpuset)])


def test_manual_places_exactly_where_asked() -> None:
    plan = place([pinned("j", "w2", (2, 3))], [node("w1", 4), node("w2", 4)], "manual", now=0)
    assert plan.placed["j"] == {"t": ("w2", [2, 3])}


def test_manual_conflict_with_a_claim_waits_naming_the_holder() -> None:
    cluster = [node("w1", 4, held={3: "job-a:t1"})]
    plan = place([pinned("j", "w1", (2, 3))], cluster, "manual", now=0)
    assert "j" in plan.waiting and "j" not in plan.never
    assert "core 3 there is held by job-a:t1" in plan.waiting["j"]


def test_manual_conflict_between_two_queued_jobs_waits_for_the_first() -> None:
    plan = place([pinned("a", "w1", (0, 1)), pinned("b", "w1", (1, 2))], [node("w1", 4)], "manual", now=0)
    assert plan.placed["a"] == {"t": ("w1", [0, 1])}
    assert "held by a:t" in plan.waiting["b"]


@pytest.mark.parametrize(("request_", "expect"), [
    (pinned("j", "w9", (0,)), "node w9, which is not ready"),
    (pinned("j", "w1", None, cores=6), "needs 6 cores"),
    (pinned("j", "w1", (0,), mem=8 * G), "needs 1 core and 8g on w1"),
    (JobRequest("j", [TaskRequest("a", 1, M, "w1", (1,)), TaskRequest("b", 1, M, "w1", (1,))]), "held by j:"),
    (job("j", 1), "the manual strategy places only tasks that name their node"),
])
def test_manual_that_can_never_hold_is_refused(request_: JobRequest, expect: str) -> None:
    reason = never_fits(request_, [node("w1", 4, mem=4 * G)], "manual")
    assert reason is not None and expect in reason


def test_pinned_tasks_are_honoured_by_every_strategy() -> None:
    for strategy in STRATEGIES:
        plan = place([pinned("j", "w2", (1,)), job("k", 2)], [node("w1", 4), node("w2", 4)], strategy, now=0)
        assert plan.placed["j"] == {"t": ("w2", [1])}, strategy


# ---- priority ------------------------------------------------------------------------------------
def test_priority_higher_first_then_first_come_first_served() -> None:
    jobs = [job("low-old", 2, priority=1, at=1), job("high-new", 2, priority=5, at=3),
            job("high-old", 2, priority=5, at=2), job("mid", 2, priority=3, at=0)]
    plan = place(jobs, [node("w1", 4)], "priority", now=10, options=SchedulerOptions(aging_seconds=0))
    assert plan.order == ["high-old", "high-new", "mid", "low-old"]
    assert set(plan.placed) == {"high-old", "high-new"}


def test_priority_ages_a_waiting_job_past_newer_higher_ones() -> None:
    jobs = [job("old", 4, priority=0, at=0), job("new", 4, priority=3, at=590)]
    opts = SchedulerOptions(aging_seconds=100)
    plan = place(jobs, [node("w1", 4)], "priority", now=600, options=opts)
    assert plan.effective_priority == {"old": 6, "new": 3}
    assert list(plan.placed) == ["old"]


def test_priority_head_job_reserves_its_nodes_so_later_jobs_backfill_elsewhere() -> None:
    # w1 has 2 of 4 cores free, w2 has 1 of 4; the head needs 4 on one node.
    cluster = [node("w1", 4, held={0: "x:t", 1: "x:t"}), node("w2", 4, held={0: "y:t", 1: "y:t", 2: "y:t"})]
    plan = place([job("big", 4, priority=5, at=0), job("small", 1, priority=1, at=1),
                  job("small2", 1, priority=1, at=2)], cluster, "priority", now=0)
    assert plan.reserved == {"big": ["w1"]}
    assert nodes_of(plan, "small") == {"t0": "w2"}  # not on the reserved w1
    assert "small2" in plan.waiting and "reserved for big" in plan.waiting["small2"]
    assert "first in line, it reserves w1" in plan.waiting["big"]


def _simulate(strategy: str, ticks: int, **options: float | bool) -> int | None:
    """Two 4-core nodes kept busy by a stream of 1-core jobs that each run 3 ticks, plus one 4-core job
    submitted at tick 0. Returns the tick the big job is placed at, or None if it starves."""
    # Start full, the cores' jobs ending at staggered ticks, so cores come free one or two at a time.
    running: dict[str, tuple[str, list[int], int]] = {  # job -> (node, cores, ends at)
        f"init{k}": (f"w{k // 4 + 1}", [k % 4], 1 + k % 3) for k in range(8)}
    queue = [job("big", 4, priority=0, at=0.0)]
    seq = 0
    for tick in range(ticks):
        for job_id, (_, _, end) in list(running.items()):
            if end <= tick:
                del running[job_id]
        for _ in range(3):  # new small jobs, of higher priority than the big one, every tick
            seq += 1
            queue.append(job(f"s{seq:05d}", 1, priority=2, at=float(tick) + seq / 1e6))
        held = {name: {c: j for j, (n, cs, _) in running.items() if n == name for c in cs} for name in ("w1", "w2")}
        cluster = [node(name, 4, held=held[name]) for name in ("w1", "w2")]
        opts = SchedulerOptions(**{"aging_seconds": 2.0, **options})  # type: ignore[arg-type]
        plan = place(queue, cluster, strategy, now=float(tick), options=opts)
        if "big" in plan.placed:
            return tick
        for job_id, placement in plan.placed.items():
            (n, cores), = placement.values()
            running[job_id] = (n, cores, tick + 3)
        queue = [j for j in queue if j.job_id not in plan.placed]
    return None


def test_priority_is_starvation_free_where_first_fit_starves() -> None:
    assert _simulate("first-fit", 60) is None  # the small jobs take every core as it comes free
    placed_at = _simulate("priority", 60)
    # Aging makes the big job first in line within a few ticks; its reserved node then drains within
    # one small job's run time (3 ticks), as nothing new is placed there.
    assert placed_at is not None and placed_at <= 10


@pytest.mark.parametrize("missing", [{"aging_seconds": 0.0}, {"reservation": False}])
def test_priority_needs_both_aging_and_the_reservation(missing: dict[str, float | bool]) -> None:
    # Without aging the big job (lower priority) is never first in line; without the reservation it
    # is first in line but the small jobs behind it take the cores it waits for.
    assert _simulate("priority", 60, **missing) is None


# ---- min-slack -----------------------------------------------------------------------------------
def test_min_slack_packs_where_first_fit_decreasing_opens_an_extra_node() -> None:
    # Capacity 10, items 5 4 4 3 2 2: FFD needs 3 nodes ({5,4}, {4,3,2}, {2}), the optimum is 2.
    cluster = [node(f"w{k}", 10) for k in range(4)]
    jobs = [job(f"i{k}", c, at=k) for k, c in enumerate([5, 4, 4, 3, 2, 2])]
    ffd = {n for p in place(jobs, cluster, "first-fit-decreasing", now=0).placed.values() for n, _ in p.values()}
    ms = place(jobs, cluster, "min-slack", now=0)
    assert len(ms.placed) == 6 and not ms.waiting
    used = {n for p in ms.placed.values() for n, _ in p.values()}
    assert len(ffd) == 3 and len(used) == 2


def test_min_slack_fills_busy_nodes_before_opening_idle_ones() -> None:
    cluster = [node("w1", 8), node("w2", 8, held={k: "x:t" for k in range(5)})]
    plan = place([job("j", 3)], cluster, "min-slack", now=0)
    assert plan.placed["j"] == {"t0": ("w2", [5, 6, 7])}


# ---- never fits ----------------------------------------------------------------------------------
def test_a_job_bigger_than_any_node_is_refused_with_the_reason() -> None:
    reason = never_fits(job("j", 6), [node("w1", 4), node("w2", 4)], "first-fit")
    assert reason == ("task t0 needs 6 cores and 64m on one node; the most free cores is 4 on w1 "
                      "(largest contiguous block 4)")
    assert never_fits(job("j", 4, 4), [node("w1", 4), node("w2", 4)], "first-fit") is None


def test_queued_job_that_cannot_fit_the_idle_cluster_is_marked_never() -> None:
    plan = place([job("j", 4, 4, 4)], [node("w1", 4), node("w2", 4)], "best-fit", now=0)
    assert plan.never == {"j"}
    assert plan.waiting["j"].startswith("can never fit the current cluster (re-evaluated when workers join)")


def test_reason_says_what_is_missing_on_the_node_that_comes_closest() -> None:
    cluster = [node("w1", 4, held={0: "a:t", 1: "a:t"}), node("w2", 4, held={0: "b:t", 1: "b:t", 2: "b:t"})]
    plan = place([job("j", 4)], cluster, "first-fit", now=0)
    assert plan.waiting["j"] == ("task t0 needs 4 cores and 64m on one node; the most free cores is 2 on w1 "
                                 "(largest contiguous block 2)")


# ---- preemption ----------------------------------------------------------------------------------
def _busy_cluster() -> tuple[list[Node], list[RunningJob]]:
    held = {0: "low-old:t", 1: "low-old:t", 2: "low-new:t", 3: "low-new:t"}
    running = [RunningJob("low-old", 1, 100.0, [RunningTask("w1", (0, 1), 64 * M)]),
               RunningJob("low-new", 1, 200.0, [RunningTask("w1", (2, 3), 64 * M)])]
    return [node("w1", 4, mem=64 * G, held=held)], running


def test_preemption_is_off_by_default() -> None:
    cluster, running = _busy_cluster()
    plan = place([job("urgent", 2, priority=9)], cluster, "priority", now=300, running=running)
    assert plan.preemptions == [] and "urgent" in plan.waiting


def test_preemption_evicts_the_fewest_cheapest_lower_priority_jobs() -> None:
    cluster, running = _busy_cluster()
    opts = SchedulerOptions(preemption=True)
    plan = place([job("urgent", 2, priority=9)], cluster, "priority", now=300, running=running, options=opts)
    (p,) = plan.preemptions
    assert p.job_id == "urgent" and p.victims == ["low-new"]  # one is enough: the most recently started
    assert p.placement == {"t0": ("w1", [2, 3])}
    assert "urgent" not in plan.waiting


def test_preemption_never_evicts_equal_or_higher_priority() -> None:
    cluster, running = _busy_cluster()
    plan = place([job("same", 2, priority=1)], cluster, "priority", now=300, running=running,
                 options=SchedulerOptions(preemption=True))
    assert plan.preemptions == [] and "same" in plan.waiting
