"""The JobManager's subnet gate on hand-made inputs (pure: no MongoDB, no Docker)."""

from __future__ import annotations

import ipaddress

from Common.placement.subnets import Held, SubnetGate, held_subnets


def queued(job_id: str, subnet: str | None = None) -> dict:
    return {"_id": job_id, "network": {"subnet": subnet}}


def test_an_explicit_subnet_held_by_a_live_job_makes_the_new_job_wait_naming_the_holder() -> None:
    gate = SubnetGate("10.50.0.0/16", 24)
    held = [Held(ipaddress.IPv4Network("129.59.0.0/16"), "job-a")]
    waits = gate.check([queued("job-b", "129.59.0.0/16"), queued("job-c", "129.59.4.0/24"),
                        queued("job-d", "129.60.0.0/16")], held, 0)
    assert set(waits) == {"job-b", "job-c"}
    assert "job-a" in waits["job-b"] and "129.59.0.0/16" in waits["job-b"]


def test_two_queued_jobs_asking_for_one_subnet_are_let_through_one_at_a_time() -> None:
    waits = SubnetGate("10.50.0.0/16", 24).check([queued("a", "129.59.0.0/16"), queued("b", "129.59.0.0/16")], [], 0)
    assert list(waits) == ["b"]


def test_an_exhausted_pool_makes_pool_jobs_wait_and_counts_placed_jobs_without_a_network() -> None:
    gate = SubnetGate("10.50.0.0/22", 24)  # 4 subnets
    networks = [{"_id": "n1", "subnet": "10.50.0.0/24"}, {"_id": "n2", "subnet": "10.50.1.0/24"}]
    placed = [{"_id": "n1", "network": {}}, {"_id": "p1", "network": {}}]  # p1: placed, network not made yet
    held, pending = held_subnets(networks, placed)
    assert pending == 1
    waits = gate.check([queued("q1"), queued("q2"), queued("q3")], held, pending)
    assert list(waits) == ["q2", "q3"]
    assert "10.50.0.0/22" in waits["q2"] and "none free" in waits["q2"]


def test_an_explicit_subnet_inside_the_pool_takes_the_slots_it_overlaps() -> None:
    gate = SubnetGate("10.50.0.0/22", 24)
    waits = gate.check([queued("big", "10.50.0.0/23"), queued("q1"), queued("q2"), queued("q3")], [], 0)
    assert list(waits) == ["q3"]


def test_the_default_pool_holds_a_subnet_for_each_job_of_a_2048_core_deployment() -> None:
    from Common.config import Config

    g = Config().globalmanager
    assert SubnetGate(g.network_pool, g.network_prefix).slots >= 2048
