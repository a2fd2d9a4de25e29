"""Host ports as a placement constraint (pure: no MongoDB, no Docker): two tasks publishing the same host
port never share a node; when no node with room has the port free, the job waits and says why."""

from __future__ import annotations

import pytest

from Common.placement import STRATEGIES, JobRequest, Node, TaskRequest, place
from Common.placement.snapshot import host_ports, node_from_worker

G = 1024**3
M = 1024**2
WEB = frozenset({"3000/tcp"})
UNPINNED = sorted(set(STRATEGIES) - {"manual"})


def node(name: str, cores: int, ports: dict[str, str] | None = None) -> Node:
    return Node(name, list(range(cores)), 64 * G, cores, 64 * G, list(range(cores)), {}, dict(ports or {}))


def web_job(job_id: str, at: float, ports: frozenset[str] = WEB, node_name: str | None = None) -> JobRequest:
    return JobRequest(job_id, [TaskRequest("web", 1, 64 * M, node=node_name, ports=ports)], 0, at)


@pytest.mark.parametrize("strategy", UNPINNED)
def test_two_jobs_publishing_one_host_port_go_to_different_nodes(strategy: str) -> None:
    plan = place([web_job("a", 1.0), web_job("b", 2.0)], [node("n1", 8), node("n2", 8)], strategy)
    assert set(plan.placed) == {"a", "b"}, plan.waiting
    assert plan.placed["a"]["web"][0] != plan.placed["b"]["web"][0]


@pytest.mark.parametrize("strategy", UNPINNED)
def test_the_second_user_of_a_host_port_waits_on_a_single_node_naming_the_port_and_its_holder(strategy: str) -> None:
    plan = place([web_job("a", 1.0), web_job("b", 2.0)], [node("n1", 8)], strategy)
    assert set(plan.placed) == {"a"}
    assert "3000/tcp" in plan.waiting["b"] and "a:web" in plan.waiting["b"], plan.waiting["b"]
    assert "b" not in plan.never  # it can run once the port is free


@pytest.mark.parametrize("strategy", UNPINNED)
def test_a_port_held_by_a_running_task_keeps_a_new_user_off_that_node(strategy: str) -> None:
    busy = node("n1", 8, {"3000/tcp": "job-old:web"})
    plan = place([web_job("b", 1.0)], [busy, node("n2", 8)], strategy)
    assert plan.placed["b"]["web"][0] == "n2"
    plan = place([web_job("b", 1.0)], [busy], strategy)
    assert "job-old:web" in plan.waiting["b"]


def test_other_ports_and_other_protocols_do_not_clash() -> None:
    busy = node("n1", 8, {"3000/tcp": "job-old:web"})
    plan = place([web_job("b", 1.0, frozenset({"3000/udp"})), web_job("c", 2.0, frozenset({"3001/tcp"}))],
                 [busy], "first-fit")
    assert set(plan.placed) == {"b", "c"}


def test_a_pinned_task_waits_for_its_port_on_its_node() -> None:
    busy = node("n1", 8, {"3000/tcp": "job-old:web"})
    plan = place([web_job("b", 1.0, node_name="n1")], [busy, node("n2", 8)], "manual")
    assert "b" in plan.waiting and "3000/tcp" in plan.waiting["b"]


def test_two_tasks_of_one_job_publishing_one_port_need_two_nodes() -> None:
    gang = JobRequest("g", [TaskRequest("a", 1, 64 * M, ports=WEB), TaskRequest("b", 1, 64 * M, ports=WEB)], 0, 1.0)
    plan = place([gang], [node("n1", 8), node("n2", 8)], "best-fit")
    assert {n for n, _ in plan.placed["g"].values()} == {"n1", "n2"}
    plan = place([gang], [node("n1", 8)], "best-fit")
    assert "g" in plan.never  # never on one node, whatever runs


def test_snapshot_reads_held_ports_from_allocations_and_tasks() -> None:
    doc = {"_id": "n1", "cores": [0, 1], "free_cores": [1], "mem_free": G, "mem_total": G,
           "allocations": {"job-x:web": {"cores": [0], "mem": 1, "token": "t", "ports": ["3000/tcp"]}}}
    assert node_from_worker(doc).ports == {"3000/tcp": "job-x:web"}
    assert host_ports({"ports": {"3000/tcp": 3000, "53/udp": 5353, "8080/tcp": None}}) == {"3000/tcp", "5353/udp"}
