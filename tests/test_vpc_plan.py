"""The Worker's VPC plan (Worker/vpcs.py) and the desired file's VPC part (Worker/epm/desired.py): pure
functions, checked on their own; the traffic itself is tested in test_evm_vpc.py and test_cluster.py."""

from __future__ import annotations

import pytest

from Worker import vpcs
from Worker.epm.desired import BadDesired, parse

JOB = "job-0193f2a1b2c3-7f3a2b"


def test_vnis_are_distinct_within_a_job_stable_and_in_range_even_when_hashes_collide(monkeypatch) -> None:
    names = {f"vpc-{i}" for i in range(200)}
    ids = vpcs.vnis(JOB, names)
    assert len(set(ids.values())) == 200 and all(1 <= v <= vpcs.MAX_VNI for v in ids.values())
    assert vpcs.vnis(JOB, names) == ids  # the same names give the same VNIs in every EPM
    assert vpcs.vnis(JOB, {"vpc-7"})["vpc-7"] == ids["vpc-7"]  # no collision: the hash alone
    monkeypatch.setattr(vpcs, "_hash_vni", lambda job, vpc: vpcs.MAX_VNI)  # every VPC collides
    forced = vpcs.vnis(JOB, {"a", "b", "c"})
    assert forced == {"a": vpcs.MAX_VNI, "b": 1, "c": 2}


def test_each_epm_gets_its_vpcs_peers_and_remote_macs_only() -> None:
    members = [{"mac": "02:00:00:00:00:01", "epm": "e0", "vpc": "red"},
               {"mac": "02:00:00:00:00:02", "epm": "e1", "vpc": "red"},
               {"mac": "02:00:00:00:00:03", "epm": "e1", "vpc": "blue"},
               {"mac": "02:00:00:00:00:04", "epm": "e2", "vpc": "red"},  # e2 has no address yet
               {"mac": "02:00:00:00:00:05", "epm": "e0", "vpc": "blue"}]
    plan = vpcs.plan(JOB, members, {"e0": "10.0.1.2", "e1": "10.0.1.3"})
    ids = vpcs.vnis(JOB, {"red", "blue"})
    assert plan["e0"] == {"local_ip": "10.0.1.2", "vpcs": {
        "red": {"vni": ids["red"], "peers": ["10.0.1.3"], "macs": [["02:00:00:00:00:02", "10.0.1.3"]]},
        "blue": {"vni": ids["blue"], "peers": ["10.0.1.3"], "macs": [["02:00:00:00:00:03", "10.0.1.3"]]}}}
    assert plan["e2"]["local_ip"] is None and plan["e2"]["vpcs"]["red"]["peers"] == ["10.0.1.2", "10.0.1.3"]
    assert set(plan["e1"]["vpcs"]) == {"red", "blue"}


BASE = {"format": 1, "job_id": JOB, "epm": "e0", "attempt": 0, "container": "c", "devices": "lean", "prefix": 24,
        "gateway": "10.60.0.1", "evms": [[1, "10.60.0.2", "02:00:00:00:00:01", "b0", "PENDING", False, "red"]]}


def test_the_desired_file_carries_each_evms_vpc_and_the_vpcs_and_refuses_bad_ones() -> None:
    d = parse({**BASE, "local_ip": "10.0.1.2",
               "vpcs": {"red": {"vni": 7, "peers": ["10.0.1.3"], "macs": [["02:00:00:00:00:09", "10.0.1.3"]]}}})
    assert d.evms[1].vpc == "red" and d.vni(1) == 7 and d.local_ip == "10.0.1.2"
    assert d.vpcs["red"].entries() == {("00:00:00:00:00:00", "10.0.1.3"), ("02:00:00:00:00:09", "10.0.1.3")}
    old = parse({**BASE, "evms": [BASE["evms"][0][:6]]})  # a file without VPCs: no connectivity, as before
    assert old.evms[1].vpc is None and old.vni(1) is None
    for bad in ({"red": {"vni": 0}}, {"red": {"vni": 2**24}}, {"red": {"vni": True}},
                {"red": {"vni": 5}, "blue": {"vni": 5}}, {"red": {"vni": 5, "peers": ["x"]}},
                {"red": {"vni": 5, "macs": [["nope", "10.0.0.1"]]}}, "red"):
        with pytest.raises((BadDesired, ValueError)):
            parse({**BASE, "vpcs": bad})
