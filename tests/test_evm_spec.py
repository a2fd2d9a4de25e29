"""The evms section, pure: validation naming the field, distributions, rates, addresses, memory sizing."""

from __future__ import annotations

import copy
import ipaddress
import itertools
import math
from pathlib import Path
from typing import Any

import pytest

from Common import evmspec
from Common.errors import Invalid
from Common.evmstates import EVM_RANK, EvmState, check_report_items, evm_states_before
from Common.jobspec import Limits, validate_job
from Common.keys import Keyring
from Common.messaging import BadMessage, decode, encode
from Worker.epm import desired as desired_mod
from Worker.epm import names, pacing

LIMITS = Limits(volume_root=Path("/nonexistent"))


def job(evms: dict[str, Any] | None = None, tasks: dict[str, Any] | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {"tasks": tasks or {"a": {"req_cores": 1}, "b": {"req_cores": 1}}}
    if evms is not None:
        info["evms"] = evms
    return {"job_info": info}


BASE = {"count": 10, "subnet": "10.60.0.0/24"}


def with_(path: str, value: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    body = copy.deepcopy(base or BASE)
    *parents, last = path.split(".")
    node = body
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return job(body)


E = "job_info.evms"
INVALID = [
    ("count missing", job({"subnet": "10.60.0.0/24"}), f"{E}.count"),
    ("negative count", with_("count", -1), f"{E}.count"),
    ("count as string", with_("count", "10"), f"{E}.count"),
    ("more EVMs than the subnet holds", with_("count", 254), f"{E}.count"),
    ("subnet missing", job({"count": 3}), f"{E}.subnet"),
    ("subnet not a CIDR", with_("subnet", "10.60.0.1/24"), f"{E}.subnet"),
    ("subnet loopback", with_("subnet", "127.1.0.0/16"), f"{E}.subnet"),
    ("subnet too small", with_("subnet", "10.60.0.0/30"), f"{E}.subnet"),
    ("gateway outside the subnet", with_("gateway", "10.61.0.1"), f"{E}.gateway"),
    ("gateway is the broadcast address", with_("gateway", "10.60.0.255"), f"{E}.gateway"),
    ("gateway not an address", with_("gateway", "router"), f"{E}.gateway"),
    ("unknown field", with_("vms", 3), f"{E}.vms"),
    ("devices unknown", with_("devices", "fat"), f"{E}.devices"),
    ("label with a space", with_("vpc", "my vpc"), f"{E}.vpc"),
    ("rate rps zero", with_("rate", {"kind": "rps", "rps": 0}), f"{E}.rate.rps"),
    ("rate rps negative", with_("rate", {"kind": "rps", "rps": -5}), f"{E}.rate.rps"),
    ("rate rps missing", with_("rate", {"kind": "rps"}), f"{E}.rate.rps"),
    ("rate burst zero", with_("rate", {"kind": "rps", "rps": 5, "burst": 0}), f"{E}.rate.burst"),
    ("rate random mean zero", with_("rate", {"kind": "random", "mean_interval": 0}), f"{E}.rate.mean_interval"),
    ("rate kind unknown", with_("rate", "fast"), f"{E}.rate.kind"),
    ("rate as NaN", with_("rate", {"kind": "rps", "rps": math.nan}), f"{E}.rate.rps"),
    ("distribution kind unknown", with_("distribution", "zipf"), f"{E}.distribution.kind"),
    ("manual without counts", with_("distribution", "manual"), f"{E}.distribution.counts"),
    ("manual counts not summing", with_("distribution", {"kind": "manual", "counts": {"a": 3, "b": 3}}),
     f"{E}.distribution.counts"),
    ("manual count for an unknown EPM", with_("distribution", {"kind": "manual", "counts": {"zz": 10}}),
     f"{E}.distribution.counts.zz"),
    ("manual negative count", with_("distribution", {"kind": "manual", "counts": {"a": -1, "b": 11}}),
     f"{E}.distribution.counts.a"),
    ("skew exponent zero", with_("distribution", {"kind": "skew", "s": 0}), f"{E}.distribution.s"),
    ("seed negative", with_("distribution", {"kind": "random", "seed": -3}), f"{E}.distribution.seed"),
    ("lean EPM over 1023 ports", job({"count": 2048, "subnet": "10.60.0.0/20", "devices": "lean"}), f"{E}.devices"),
    ("evms not an object", job([1]), E),  # type: ignore[arg-type]
    ("EPM memory too small", job(BASE, {"a": {"req_cores": 1, "mem_limit": "16m"}}), "job_info.tasks.a.mem_limit"),
    ("EPM with an environment", job(BASE, {"a": {"req_cores": 1, "environment": {"A": "1"}}}),
     "job_info.tasks.a.environment"),
    ("task section beside the job's", job(BASE, {"a": {"req_cores": 1, "evms": {"count": 1}}}),
     "job_info.tasks.a.evms"),
    ("overlapping subnets within a job",
     job(None, {"a": {"req_cores": 1, "evms": {"count": 2, "subnet": "10.60.0.0/24"}},
                "b": {"req_cores": 1, "evms": {"count": 2, "subnet": "10.60.0.128/25"}}}),
     "job_info.tasks.b.evms.subnet"),
    ("a task section with a distribution",
     job(None, {"a": {"req_cores": 1, "evms": {"count": 2, "subnet": "10.60.0.0/24", "distribution": "uniform"}}}),
     "job_info.tasks.a.evms.distribution"),
    ("subnet overlapping the job network",
     {"job_info": {"network": {"subnet": "10.60.0.0/16"}, "evms": BASE, "tasks": {"a": {"req_cores": 1}}}},
     f"{E}.subnet"),
]


@pytest.mark.parametrize(("case", "body", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_evms_sections_are_refused_naming_the_field(case: str, body: dict[str, Any], field: str) -> None:
    with pytest.raises(Invalid) as err:
        validate_job(body, LIMITS)
    assert err.value.field == field, err.value.message


def test_job_without_evms_is_unchanged() -> None:
    spec = validate_job({"job_info": {"tasks": {"t": {"image": "rswarm/task:1", "req_cores": 1}}}}, LIMITS)
    assert spec.evms is None and spec.tasks[0].evms is None and spec.tasks[0].image == "rswarm/task:1"


def test_valid_section_sizes_memory_and_plans_every_epm() -> None:
    spec = validate_job(job({"count": 1000, "subnet": "10.60.0.0/16", "rate": {"kind": "rps", "rps": 100}}), LIMITS)
    assert spec.evms is not None and spec.evms["counts"] == {"a": 500, "b": 500}
    for t in spec.tasks:
        assert t.image == evmspec.EPM_IMAGE
        assert t.mem_bytes == evmspec.epm_memory(500, "full") > 128 * 1024**2
        assert t.evms is not None and t.evms["rate"] == {"kind": "rps", "rps": 50.0, "burst": 1}
        assert t.evms["gateway"] == "10.60.0.1" and t.evms["prefix"] == 16


def test_an_epm_task_may_name_its_image_and_command() -> None:
    spec = validate_job(job(BASE, {"a": {"req_cores": 1, "image": "rswarm/task:1", "command": ["sleep", "1d"]},
                                   "b": {"req_cores": 1}}), LIMITS)
    by_name = {t.name: t for t in spec.tasks}
    assert by_name["a"].image == "rswarm/task:1" and by_name["a"].command == ["sleep", "1d"]
    assert by_name["a"].evms is not None and by_name["b"].image == evmspec.EPM_IMAGE


def test_explicit_memory_that_suffices_is_kept() -> None:
    spec = validate_job(job(BASE, {"a": {"req_cores": 1, "mem_limit": "1g"}}), LIMITS)
    assert spec.tasks[0].mem_limit == "1g"


def test_task_level_sections_make_only_those_tasks_epms() -> None:
    spec = validate_job(job(None, {"epm": {"req_cores": 1, "evms": {"count": 3, "subnet": "10.60.0.0/24"}},
                                   "plain": {"image": "rswarm/task:1", "req_cores": 1}}), LIMITS)
    assert spec.evms is not None and spec.evms["scope"] == "task" and spec.evms["count"] == 3
    by_name = {t.name: t for t in spec.tasks}
    assert by_name["epm"].evms is not None and by_name["plain"].evms is None


# ---- distributions --------------------------------------------------------------------------------
EPMS = ["e1", "e2", "e3", "e4", "e5"]


def test_manual_is_exact() -> None:
    d = evmspec.parse_distribution({"kind": "manual", "counts": {"e2": 7, "e5": 1}}, "d", EPMS)
    assert evmspec.distribute(8, EPMS, d) == {"e1": 0, "e2": 7, "e3": 0, "e4": 0, "e5": 1}


@pytest.mark.parametrize("count", [0, 1, 4, 5, 13, 1000, 1001])
def test_uniform_counts_differ_by_at_most_one(count: int) -> None:
    counts = evmspec.distribute(count, EPMS, evmspec.Distribution("uniform"))
    assert sum(counts.values()) == count
    assert max(counts.values()) - min(counts.values()) <= 1
    assert list(counts.values()) == sorted(counts.values(), reverse=True)  # the extras go to the first EPMs


@pytest.mark.parametrize("seed", [1, 2, 3, 42, 2026])
def test_random_is_a_seeded_multinomial_within_tolerance(seed: int) -> None:
    n = 20_000
    d = evmspec.Distribution("random", seed=seed)
    counts = evmspec.distribute(n, EPMS, d)
    assert counts == evmspec.distribute(n, EPMS, d)  # reproducible
    assert sum(counts.values()) == n
    for c in counts.values():
        assert abs(c - n / 5) <= evmspec.tolerance(n, 1 / 5)


def test_random_pearson_statistic_over_many_seeds_is_chi_square_like() -> None:
    n, k, seeds = 1000, len(EPMS), 200
    stats = []
    for seed in range(seeds):
        counts = evmspec.distribute(n, EPMS, evmspec.Distribution("random", seed=seed)).values()
        stats.append(sum((c - n / k) ** 2 / (n / k) for c in counts))
    mean = sum(stats) / seeds  # chi-square with k-1 = 4 degrees of freedom has mean 4, sd of the mean ~0.2
    assert 3.2 < mean < 4.8


@pytest.mark.parametrize(("s", "seed"), [(1.0, 1), (1.0, 7), (2.0, 3), (0.5, 11)])
def test_skew_follows_zipf_within_tolerance(s: float, seed: int) -> None:
    n = 20_000
    weights = evmspec.zipf_weights(len(EPMS), s)
    assert weights == sorted(weights, reverse=True) and math.isclose(sum(weights), 1.0)
    counts = list(evmspec.distribute(n, EPMS, evmspec.Distribution("skew", seed=seed, s=s)).values())
    assert sum(counts) == n
    for c, p in zip(counts, weights, strict=True):
        assert abs(c - n * p) <= evmspec.tolerance(n, p)


def test_skew_with_s1_puts_the_majority_on_the_first_two_of_five() -> None:
    w = evmspec.zipf_weights(5, 1.0)  # 1, 1/2, 1/3, 1/4, 1/5 normalised by H5 = 2.2833
    assert math.isclose(w[0], 1 / 2.2833333, rel_tol=1e-6)
    assert w[0] + w[1] > 0.5


# ---- rates ----------------------------------------------------------------------------------------
def test_rates_split_in_proportion_and_superpose_to_the_job_rate() -> None:
    counts = {"a": 300, "b": 100, "c": 0}
    rps = evmspec.split_rate(evmspec.Rate("rps", rps=40.0, burst=2), counts)
    assert rps["a"] == {"kind": "rps", "rps": 30.0, "burst": 2} and rps["b"]["rps"] == 10.0
    assert rps["c"] == {"kind": "sequential"}
    rnd = evmspec.split_rate(evmspec.Rate("random", mean_interval=0.01, seed=5), counts)
    total_rate = sum(1 / r["mean_interval"] for r in rnd.values() if r["kind"] == "random")
    assert math.isclose(total_rate, 100.0)
    assert rnd["a"]["seed"] != rnd["b"]["seed"]


def test_token_bucket_never_exceeds_its_rate() -> None:
    tb = pacing.TokenBucket(rps=10.0, burst=1, now=0.0)
    now, starts = 0.0, []
    for _ in range(50):
        now = max(now, tb.next_start(now))
        tb.take(now)
        starts.append(now)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.1 - 1e-9 and math.isclose(starts[-1], 4.9)


def test_token_bucket_burst_then_rate() -> None:
    tb = pacing.TokenBucket(rps=5.0, burst=3, now=0.0)
    now, starts = 0.0, []
    for _ in range(6):
        now = max(now, tb.next_start(now))
        tb.take(now)
        starts.append(round(now, 9))
    assert starts[:3] == [0.0, 0.0, 0.0] and starts[3:] == [0.2, 0.4, 0.6]


def test_poisson_pacer_mean_interval_and_memorylessness() -> None:
    p = pacing.Poisson(mean_interval=0.05, seed=9, now=0.0)
    times = []
    for _ in range(20_000):
        t = p.next_start(0.0)
        p.take(t)
        times.append(t)
    gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
    mean = sum(gaps) / len(gaps)
    assert abs(mean - 0.05) < 4 * 0.05 / math.sqrt(len(gaps))
    var = sum((g - mean) ** 2 for g in gaps) / len(gaps)
    assert abs(math.sqrt(var) / mean - 1.0) < 0.05  # exponential: sd equals the mean


# ---- addresses and memory -------------------------------------------------------------------------
def test_allocation_skips_network_gateway_and_broadcast_and_reuses_freed() -> None:
    pool = evmspec.Pool("10.60.0.0/29", "10.60.0.1")
    assert pool.capacity == 5
    ips = evmspec.allocate(pool, set(), 5)
    assert ips == ["10.60.0.2", "10.60.0.3", "10.60.0.4", "10.60.0.5", "10.60.0.6"]
    with pytest.raises(ValueError):
        evmspec.allocate(pool, set(ips), 1)
    assert evmspec.allocate(pool, set(ips) - {"10.60.0.4"}, 1) == ["10.60.0.4"]


def test_macs_are_unique_locally_administered_unicast() -> None:
    net = ipaddress.IPv4Network("10.60.0.0/16")
    macs = {evmspec.mac_for("job-x", str(a)) for a in list(net.hosts())[:5000]}
    assert len(macs) == 5000
    first = {int(m.split(":")[0], 16) for m in macs}
    assert first == {0x02}


def test_memory_sizing_matches_capacity() -> None:
    for devices in evmspec.DEVICE_SETS:
        for n in (0, 1, 100, 2000):
            assert evmspec.evm_capacity(evmspec.epm_memory(n, devices), devices) >= n


def test_addition_body() -> None:
    a = evmspec.parse_addition({"count": 5, "distribution": "uniform", "vpc": "v2"}, ["x", "y"])
    assert a.counts == {"x": 3, "y": 2} and a.labels == {"vpc": "v2"} and a.rate.kind == "sequential"
    m = evmspec.parse_addition({"distribution": {"kind": "manual", "counts": {"y": 4}}}, ["x", "y"])
    assert m.count == 4 and m.counts == {"x": 0, "y": 4}
    for body, field in (({}, "count"), ({"count": 0}, "count"), ({"count": 2, "rate": {"kind": "rps", "rps": 0}},
                                                                     "rate.rps"), ({"count": 1, "x": 1}, "x"),
                        ({"count": 3, "distribution": {"kind": "manual", "counts": {"x": 1}}}, "distribution.counts")):
        with pytest.raises(Invalid) as err:
            evmspec.parse_addition(body, ["x", "y"])
        assert err.value.field == field


# ---- states, reports, the desired file ------------------------------------------------------------
def test_evm_states_only_move_forward() -> None:
    assert evm_states_before(EvmState.READY) == ["PENDING", "DEPLOYING"]
    assert "READY" in evm_states_before(EvmState.DELETED) and "ERROR" in evm_states_before(EvmState.DELETED)
    assert EVM_RANK[EvmState.READY] == EVM_RANK[EvmState.ERROR]


def test_report_items_are_checked() -> None:
    check_report_items([[1, "READY", {"DEPLOYING": 1.0, "READY": 2.0}, 3.5, None]])
    for bad in ([[0, "READY", {}, None, None]], [[1, "UP", {}, None, None]], [[1, "READY", {"X": 1}, None, None]],
                [[1, "READY", {}, "fast", None]], [[1, "ERROR", {}, None, "x" * 2000]], [[1, "READY"]], "x"):
        with pytest.raises(ValueError):
            check_report_items(bad)


def test_evm_status_envelope_round_trip_and_refusal() -> None:
    keys = Keyring.control_plane("k")
    key = keys.key("worker-n", "discovery")
    body = {"job_id": "j", "epm": "a", "attempt": 0, "node": "n", "container": "c", "host": {"ip": "1.2.3.4"},
            "items": [[3, "READY", {"READY": 1.0}, 2.0, None]]}
    env = decode(encode("evm_status", body, "worker-n", key, "discovery"), keys, "discovery")
    assert env.kind == "evm_status" and env.body == body
    with pytest.raises(BadMessage):
        encode("evm_status", {**body, "items": [[3, "BOGUS", {}, None, None]]}, "worker-n", key, "discovery")
    with pytest.raises(BadMessage):
        encode("evm_status", {**body, "host": {"shell": "x"}}, "worker-n", key, "discovery")


def test_desired_file_parsing_refuses_garbage() -> None:
    good = {"format": 1, "job_id": "j", "epm": "a", "attempt": 0, "container": "c", "devices": "lean",
            "prefix": 24, "gateway": "10.0.0.1", "rates": {"b1": {"kind": "sequential"}},
            "evms": [[2, "10.0.0.3", "02:00:0a:00:00:03", "b1", "PENDING", False],
                     [1, "10.0.0.2", "02:00:0a:00:00:02", "b0", "READY", False],
                     [5, "10.0.0.6", "02:00:0a:00:00:06", "b0", "ERROR", False],
                     [4, "10.0.0.5", "02:00:0a:00:00:05", "b0", "READY", True]]}
    d = desired_mod.parse(good)
    assert list(d.keep()) == [1, 2]  # batch order, then number; not the deleted or failed ones
    assert d.deleting() == {4}
    for key, value in (("format", 2), ("devices", "x"), ("prefix", 40), ("gateway", "nope"),
                       ("evms", [[1, "10.0.0.2", "bad-mac", "b0", "PENDING", False]]),
                       ("evms", [[1, "10.0.2", "02:00:0a:00:00:02", "b0", "PENDING", False]]),
                       ("evms", [[1, "10.0.0.256", "02:00:0a:00:00:02", "b0", "PENDING", False]]),
                       ("evms", [[1, 167772162, "02:00:0a:00:00:02", "b0", "PENDING", False]]),
                       ("evms", [[0, "10.0.0.2", "02:00:0a:00:00:02", "b0", "PENDING", False]]),
                       ("evms", [[names.MAX_SEQ + 1, "10.0.0.2", "02:00:0a:00:00:02", "b0", "PENDING", False]])):
        with pytest.raises(ValueError):
            desired_mod.parse({**good, key: value})


def test_kernel_names_fit_linux_interface_names() -> None:
    for seq in (1, 10**6, names.MAX_SEQ):
        for name in (names.veth_name(seq), names.tap_name(seq), names.bridge_name(seq)):
            assert len(name) <= 15
        assert names.seq_of(names.veth_name(seq), names.VETH_PREFIX) == seq
        assert names.veth_index(seq) < 2**31 and names.bridge_index(seq) != names.veth_index(seq)
    assert names.seq_of("rswv007", names.VETH_PREFIX) is None and names.seq_of("eth0", names.VETH_PREFIX) is None


# ---- resizing a job's set (PATCH /jobs/{id}/evms) -------------------------------------------------
@pytest.mark.parametrize("dist", [evmspec.Distribution("uniform"), evmspec.Distribution("random", seed=3),
                                  evmspec.Distribution("skew", seed=8, s=1.3)], ids=lambda d: d.kind)
def test_every_distribution_is_nested_in_the_count_so_resizing_only_adds_or_only_removes(dist) -> None:
    epms = ["a", "b", "c", "d"]
    for n in range(0, 60):
        small, big = evmspec.distribute(n, epms, dist), evmspec.distribute(n + 7, epms, dist)
        assert all(small[e] <= big[e] for e in epms) and sum(big.values()) == n + 7


def test_set_update_targets_the_distribution_and_reuses_the_jobs_seed() -> None:
    epms = ["a", "b"]
    stored = {"kind": "random", "seed": 12}
    up = evmspec.parse_set_update({"count": 9, "rate": {"kind": "rps", "rps": 5}}, epms, stored, 4)
    assert up.counts == evmspec.distribute(9, epms, evmspec.Distribution("random", seed=12))
    assert up.rate == evmspec.Rate("rps", rps=5.0)
    assert evmspec.parse_set_update({"distribution": "random", "count": 9}, epms, stored, 4).counts == up.counts
    assert evmspec.parse_set_update({"rate": "sequential"}, epms, stored, 4).count == 4  # the count stays
    manual = evmspec.parse_set_update({"distribution": {"kind": "manual", "counts": {"b": 2}}}, epms, stored, 4)
    assert manual.count == 2 and manual.counts == {"a": 0, "b": 2} and manual.rate is None


@pytest.mark.parametrize(("body", "stored", "field"), [
    ({"count": 3}, None, "distribution"),  # EVMs given per task: no distribution to follow
    ({"count": 3}, {"kind": "manual", "counts": {"a": 1}}, "count"),
    ({"count": 100_001}, {"kind": "uniform"}, "count"),
    ({"count": 1, "size": 2}, {"kind": "uniform"}, "size"),
    ({}, {"kind": "uniform"}, "body"),
    ([], {"kind": "uniform"}, "body"),
    ({"rate": {"kind": "random"}}, {"kind": "uniform"}, "rate.mean_interval"),
])
def test_set_update_refusals_name_the_field(body: Any, stored: dict[str, Any] | None, field: str) -> None:
    with pytest.raises(Invalid) as exc:
        evmspec.parse_set_update(body, ["a", "b"], stored, 2)
    assert exc.value.field == field
