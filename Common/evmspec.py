"""The ``evms`` section of a job: validation, distributions, rates and address allocation (pure).

A job may carry ``job_info.evms`` (its EVMs spread over every task, each task an EPM, by a
*distribution*) or some tasks may carry their own ``evms`` (those tasks are EPMs, the others ordinary
containers). Nothing here touches MongoDB or Docker; every refusal is ``Invalid`` naming the field.
docs/evms.md gives the definitions in prose; the numbers below are the ones the code uses.

Distributions over the job's EPMs, in the order the tasks appear in the definition:
  manual   explicit counts per EPM (they must add up to ``count`` when both are given)
  uniform  counts differ by at most one; the first ``count % k`` EPMs get the extra EVM
  random   seeded multinomial, every EPM equally likely
  skew     seeded multinomial with Zipf weights: the EPM of rank i (1-based) has probability
           i^-s / sum_j j^-s (s > 0, default 1), so the first EPMs hold most EVMs

Rates (how fast EVMs are created), job-wide and split across EPMs in proportion to their counts:
  sequential  one at a time, no pause (each agent creates one EVM after the other)
  rps         token bucket: ``rps`` per second, bucket of ``burst`` tokens (default 1), starting full
  random      Poisson arrivals: exponential inter-arrival times of mean ``mean_interval`` seconds,
              seeded; an EPM holding c of C EVMs draws with mean ``mean_interval * C / c``, so the
              superposition over the job is again Poisson with the requested mean
"""

from __future__ import annotations

import bisect
import hashlib
import ipaddress
import math
import random
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from Common.errors import Invalid
from Common.fields import reject_unknown, require_int, require_object
from Common.resources import format_memory

EPM_IMAGE = "rswarm/epm"  # what an EPM task names by default; the Worker runs Worker.evms.DEFAULT_IMAGE for it
DEVICE_SETS = ("full", "lean")
LEAN_MAX_PORTS = 1023  # a Linux bridge refuses its 1,024th port ("Exchange full")
MAX_EVMS_PER_JOB = 100_000
MAX_EVMS_PER_EPM = 25_000
MAX_RPS = 100_000.0
MAX_MEAN_INTERVAL = 3600.0
MAX_BURST = 10_000
MAX_SKEW = 10.0
MAX_SEED = 2**63 - 1

# EPM memory: the agent's two Python processes (an idle EPM's cgroup holds ~30 MiB) plus what each EVM
# charges to the EPM's memory cgroup, measured (BENCHMARKS.md "EVMs"): ~242 KiB full, ~166 KiB lean; a
# full-set EVM's plug into its VPC's bridge (a second veth pair, docs/evms.md) adds ~66 KiB: ~306 KiB.
EPM_BASE_MEMORY = 40 * 1024**2
EVM_MEMORY = {"full": 320 * 1024, "lean": 176 * 1024}

LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
DEFAULT_LABEL = "default"
LABEL_FIELDS = ("vpc", "tenant", "security_group")

_JOB_FIELDS = {"count", "subnet", "gateway", "devices", "distribution", "rate", *LABEL_FIELDS}
_TASK_FIELDS = _JOB_FIELDS - {"distribution"}
_ADD_FIELDS = {"count", "distribution", "rate", *LABEL_FIELDS}

_FORBIDDEN_NETS = [
    ipaddress.ip_network(n)
    for n in ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4")
]


# ---- value types ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Distribution:
    kind: str  # manual | uniform | random | skew
    counts: dict[str, int] | None = None
    seed: int | None = None
    s: float | None = None

    def doc(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.counts is not None:
            out["counts"] = dict(self.counts)
        if self.seed is not None:
            out["seed"] = self.seed
        if self.s is not None:
            out["s"] = self.s
        return out


@dataclass(frozen=True)
class Rate:
    kind: str  # sequential | rps | random
    rps: float | None = None
    burst: int = 1
    mean_interval: float | None = None
    seed: int | None = None

    def doc(self) -> dict[str, Any]:
        if self.kind == "rps":
            return {"kind": "rps", "rps": self.rps, "burst": self.burst}
        if self.kind == "random":
            return {"kind": "random", "mean_interval": self.mean_interval, "seed": self.seed}
        return {"kind": "sequential"}


@dataclass(frozen=True)
class Pool:
    """Where EVM addresses come from: a subnet and its gateway (never given to an EVM)."""

    subnet: str
    gateway: str

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def prefix(self) -> int:
        return self.network.prefixlen

    @property
    def capacity(self) -> int:
        return self.network.num_addresses - 3  # network, broadcast, gateway


@dataclass
class EpmPlan:
    """One EPM's EVM configuration, as stored on its task (``tasks.<t>.evms``)."""

    pool: Pool
    devices: str
    labels: dict[str, str]
    count: int
    rate: dict[str, Any]

    def doc(self) -> dict[str, Any]:
        return {"subnet": self.pool.subnet, "gateway": self.pool.gateway, "prefix": self.pool.prefix,
                "devices": self.devices, "count": self.count, "rate": self.rate, **self.labels}


@dataclass
class EvmPlan:
    """What validating a job's EVMs produced: per-EPM configs plus the job-level summary."""

    scope: str  # "job": one section spread over every task; "task": sections on some tasks
    epms: dict[str, EpmPlan]
    distribution: Distribution | None
    rate: Rate | None
    count: int
    shared_pool: Pool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def job_doc(self) -> dict[str, Any]:
        out: dict[str, Any] = {"scope": self.scope, "count": self.count,
                               "counts": {name: p.count for name, p in self.epms.items()}}
        if self.shared_pool is not None:
            out["subnet"] = self.shared_pool.subnet
            out["gateway"] = self.shared_pool.gateway
        if self.distribution is not None:
            out["distribution"] = self.distribution.doc()
        if self.rate is not None:
            out["rate"] = self.rate.doc()
        return out


@dataclass
class Addition:
    """A validated ``POST /jobs/{id}/evms`` body."""

    count: int
    counts: dict[str, int]
    distribution: Distribution
    rate: Rate
    labels: dict[str, str]  # only the labels the body set; the rest come from each EPM's spec


# ---- small checks ------------------------------------------------------------------------------
def _positive(value: Any, where: str, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Invalid(f"{where} must be a number", field=where)
    if value <= 0:
        raise Invalid(f"{where} must be > 0, got {value}", field=where)
    if value > hi:
        raise Invalid(f"{where} must be at most {hi:g}, got {value}", field=where)
    return float(value)


def _seed(obj: dict[str, Any], where: str) -> int:
    if obj.get("seed") is None:
        return secrets.randbits(31)  # recorded with the spec, so the outcome can be reproduced
    return require_int(obj["seed"], f"{where}.seed", 0, MAX_SEED)


def _label(value: Any, where: str) -> str:
    if not isinstance(value, str) or not LABEL.match(value):
        raise Invalid(f"{where} must be 1-64 letters, digits, '_', '.', ':' or '-', got {value!r}", field=where)
    return value


def labels_from(raw: dict[str, Any], where: str, defaults: dict[str, str] | None = None) -> dict[str, str]:
    out = dict(defaults or {})
    for key in LABEL_FIELDS:
        if raw.get(key) is not None:
            out[key] = _label(raw[key], f"{where}.{key}")
        elif defaults is None:
            out[key] = DEFAULT_LABEL
    return out


def _shorthand(raw: Any, where: str) -> dict[str, Any]:
    """"uniform" is short for {"kind": "uniform"}."""
    if isinstance(raw, str):
        return {"kind": raw}
    return require_object(raw, where)


# ---- distributions -------------------------------------------------------------------------------
def parse_distribution(raw: Any, where: str, epms: list[str]) -> Distribution:
    d = _shorthand(raw if raw is not None else "uniform", where)
    kind = d.get("kind")
    if kind == "manual":
        reject_unknown(d, {"kind", "counts"}, where)
        if "counts" not in d:
            raise Invalid(f"{where}.counts is required for a manual distribution (EPM task -> count)",
                          field=f"{where}.counts")
        counts = require_object(d["counts"], f"{where}.counts")
        out: dict[str, int] = {}
        for name, n in counts.items():
            if name not in epms:
                raise Invalid(f"{where}.counts.{name}: no EPM task {name!r} in this job (EPMs: {', '.join(epms)})",
                              field=f"{where}.counts.{name}")
            out[name] = require_int(n, f"{where}.counts.{name}", 0, MAX_EVMS_PER_EPM)
        return Distribution("manual", counts={e: out.get(e, 0) for e in epms})
    if kind == "uniform":
        reject_unknown(d, {"kind"}, where)
        return Distribution("uniform")
    if kind == "random":
        reject_unknown(d, {"kind", "seed"}, where)
        return Distribution("random", seed=_seed(d, where))
    if kind == "skew":
        reject_unknown(d, {"kind", "seed", "s"}, where)
        s = _positive(d["s"], f"{where}.s", MAX_SKEW) if d.get("s") is not None else 1.0
        return Distribution("skew", seed=_seed(d, where), s=s)
    raise Invalid(f"{where}.kind must be one of manual, uniform, random, skew; got {kind!r}", field=f"{where}.kind")


def zipf_weights(k: int, s: float) -> list[float]:
    """Probabilities of ranks 1..k under Zipf's law with exponent s."""
    raw = [1.0 / (i**s) for i in range(1, k + 1)]
    total = sum(raw)
    return [w / total for w in raw]


def distribution_weights(dist: Distribution, k: int) -> list[float]:
    """Each EPM's expected share (for random and skew; exact counts for the others)."""
    if dist.kind == "skew":
        return zipf_weights(k, dist.s or 1.0)
    return [1.0 / k] * k


def _multinomial(count: int, weights: list[float], seed: int) -> list[int]:
    rng = random.Random(seed)  # noqa: S311 - seeded on purpose: reproducible distributions
    cum = []
    acc = 0.0
    for w in weights:
        acc += w
        cum.append(acc)
    counts = [0] * len(weights)
    for _ in range(count):
        i = bisect.bisect_right(cum, rng.random() * acc)
        counts[min(i, len(weights) - 1)] += 1
    return counts


def distribute(count: int, epms: list[str], dist: Distribution) -> dict[str, int]:
    """How many of ``count`` EVMs each EPM gets. Deterministic for a given seed."""
    k = len(epms)
    if dist.kind == "manual":
        assert dist.counts is not None
        return {e: dist.counts.get(e, 0) for e in epms}
    if dist.kind == "uniform":
        base, extra = divmod(count, k)
        return {e: base + (1 if i < extra else 0) for i, e in enumerate(epms)}
    assert dist.seed is not None
    counts = _multinomial(count, distribution_weights(dist, k), dist.seed)
    return dict(zip(epms, counts, strict=True))


def tolerance(count: int, p: float, sigmas: float = 4.0) -> float:
    """The documented tolerance of a random/skew count around count*p: 4 standard deviations + 1."""
    return sigmas * math.sqrt(count * p * (1 - p)) + 1


# ---- rates ----------------------------------------------------------------------------------------
def parse_rate(raw: Any, where: str) -> Rate:
    r = _shorthand(raw if raw is not None else "sequential", where)
    kind = r.get("kind")
    if kind == "sequential":
        reject_unknown(r, {"kind"}, where)
        return Rate("sequential")
    if kind == "rps":
        reject_unknown(r, {"kind", "rps", "burst"}, where)
        if r.get("rps") is None:
            raise Invalid(f"{where}.rps is required (EVMs per second, > 0)", field=f"{where}.rps")
        burst = require_int(r["burst"], f"{where}.burst", 1, MAX_BURST) if r.get("burst") is not None else 1
        return Rate("rps", rps=_positive(r["rps"], f"{where}.rps", MAX_RPS), burst=burst)
    if kind == "random":
        reject_unknown(r, {"kind", "mean_interval", "seed"}, where)
        if r.get("mean_interval") is None:
            raise Invalid(f"{where}.mean_interval is required (seconds between creations on average, > 0)",
                          field=f"{where}.mean_interval")
        mean = _positive(r["mean_interval"], f"{where}.mean_interval", MAX_MEAN_INTERVAL)
        return Rate("random", mean_interval=mean, seed=_seed(r, where))
    raise Invalid(f"{where}.kind must be one of sequential, rps, random; got {kind!r}", field=f"{where}.kind")


def split_rate(rate: Rate, counts: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Each EPM's share of a job-wide rate, proportional to how many of the EVMs it creates."""
    total = sum(counts.values())
    out: dict[str, dict[str, Any]] = {}
    for i, (epm, c) in enumerate(counts.items()):
        if rate.kind == "rps" and c and total:
            assert rate.rps is not None
            out[epm] = {"kind": "rps", "rps": rate.rps * c / total, "burst": rate.burst}
        elif rate.kind == "random" and c and total:
            assert rate.mean_interval is not None and rate.seed is not None
            seed = int.from_bytes(hashlib.sha256(f"{rate.seed}:{i}:{epm}".encode()).digest()[:7], "big")
            out[epm] = {"kind": "random", "mean_interval": rate.mean_interval * total / c, "seed": seed}
        else:
            out[epm] = {"kind": "sequential"}
    return out


# ---- addresses ------------------------------------------------------------------------------------
def parse_pool(subnet: Any, gateway: Any, where: str) -> Pool:
    if subnet is None:
        raise Invalid(f"{where}.subnet is required: the EVMs' IPv4 CIDR, e.g. '10.60.0.0/16'", field=f"{where}.subnet")
    if not isinstance(subnet, str):
        raise Invalid(f"{where}.subnet must be an IPv4 CIDR such as '10.60.0.0/16'", field=f"{where}.subnet")
    try:
        net = ipaddress.IPv4Network(subnet, strict=True)
    except ValueError as exc:
        raise Invalid(f"{where}.subnet: {exc}", field=f"{where}.subnet") from None
    if not 8 <= net.prefixlen <= 29:
        raise Invalid(f"{where}.subnet: prefix length must be 8..29, got /{net.prefixlen}", field=f"{where}.subnet")
    for bad in _FORBIDDEN_NETS:
        if net.overlaps(bad):
            raise Invalid(f"{where}.subnet: {net} overlaps reserved range {bad}", field=f"{where}.subnet")
    if gateway is None:
        gw = net.network_address + 1
    else:
        try:
            gw = ipaddress.IPv4Address(gateway) if isinstance(gateway, str) else None
        except ValueError:
            gw = None
        if gw is None:
            raise Invalid(f"{where}.gateway must be an IPv4 address, got {gateway!r}", field=f"{where}.gateway")
        if gw not in net:
            raise Invalid(f"{where}.gateway {gw} is outside the subnet {net}", field=f"{where}.gateway")
        if gw in (net.network_address, net.broadcast_address):
            raise Invalid(f"{where}.gateway {gw} is the subnet's network or broadcast address",
                          field=f"{where}.gateway")
    return Pool(str(net), str(gw))


def host_ints(pool: Pool) -> Iterable[int]:
    """Every address an EVM may take, lowest first."""
    net = pool.network
    gw = int(ipaddress.IPv4Address(pool.gateway))
    for a in range(int(net.network_address) + 1, int(net.broadcast_address)):
        if a != gw:
            yield a


def allocate(pool: Pool, used: set[str], n: int) -> list[str]:
    """The ``n`` lowest free addresses of the pool; ValueError if it has fewer left."""
    taken = {int(ipaddress.IPv4Address(u)) for u in used}
    out: list[str] = []
    if n <= 0:
        return out
    for a in host_ints(pool):
        if a not in taken:
            out.append(str(ipaddress.IPv4Address(a)))
            if len(out) == n:
                return out
    raise ValueError(f"subnet {pool.subnet} has {len(out)} free addresses, {n} asked")


def mac_for(job_id: str, ip: str) -> str:
    """Locally administered unicast MAC: 02, a byte of the job's hash, then the four address bytes.

    Addresses are unique within a job (a unique index), so MACs are too; EVMs of different jobs never
    share a layer-2 segment.
    """
    tag = hashlib.sha256(job_id.encode()).digest()[0]
    octets = ipaddress.IPv4Address(ip).packed
    return ":".join(f"{b:02x}" for b in (0x02, tag, *octets))


# ---- memory ---------------------------------------------------------------------------------------
def epm_memory(evms: int, devices: str) -> int:
    """The memory an EPM holding ``evms`` EVMs needs, rounded up to a whole MiB."""
    need = EPM_BASE_MEMORY + evms * EVM_MEMORY[devices]
    mib = 1024**2
    return -(-need // mib) * mib


def evm_capacity(mem_bytes: int, devices: str) -> int:
    """How many EVMs an EPM with this memory limit holds."""
    return max(0, (mem_bytes - EPM_BASE_MEMORY) // EVM_MEMORY[devices])


def epm_limit(devices: str) -> int:
    return min(LEAN_MAX_PORTS, MAX_EVMS_PER_EPM) if devices == "lean" else MAX_EVMS_PER_EPM


def check_epm_count(epm: str, n: int, devices: str, where: str) -> None:
    if devices == "lean" and n > LEAN_MAX_PORTS:
        raise Invalid(f"{where}: {n} EVMs on EPM {epm!r}, but the lean device set plugs every EVM into one "
                      f"Linux bridge, which holds at most {LEAN_MAX_PORTS} ports; use 'full' or more EPMs",
                      field=where)
    if n > MAX_EVMS_PER_EPM:
        raise Invalid(f"{where}: {n} EVMs on EPM {epm!r}; an EPM holds at most {MAX_EVMS_PER_EPM}", field=where)


# ---- the job definition hook (called by Common.jobspec) -------------------------------------------
def has_evms(info: dict[str, Any], raw_tasks: dict[str, Any]) -> bool:
    return info.get("evms") is not None or any(isinstance(t, dict) and t.get("evms") is not None
                                               for t in raw_tasks.values())


def epm_task_names(info: dict[str, Any], raw_tasks: dict[str, Any]) -> list[str]:
    if info.get("evms") is not None:
        return list(raw_tasks)
    return [n for n, t in raw_tasks.items() if isinstance(t, dict) and t.get("evms") is not None]


def with_epm_defaults(info: dict[str, Any], raw_tasks: dict[str, Any]) -> dict[str, Any]:
    """EPM tasks may leave out ``image``: it is the EPM image."""
    epms = set(epm_task_names(info, raw_tasks))
    out: dict[str, Any] = {}
    for name, t in raw_tasks.items():
        if name in epms and isinstance(t, dict) and t.get("image") is None:
            t = {**t, "image": EPM_IMAGE}
        out[name] = t
    return out


EPM_REFUSED_FIELDS = ("volumes", "environment", "ports")


def _check_epm_task(task: Any, raw: dict[str, Any], where: str, evms: int, devices: str) -> None:
    """An EPM task runs the image it names (any image with a long-running command; none named: the
    default, which sleeps) with memory for its EVMs.

    The node's EVM agent makes the EVMs from outside the container, which holds no privilege. Volumes,
    environment and ports stay refused (and ignored by the Worker whatever MongoDB says: Worker.engine):
    an EPM is an emulated machine, not a service.
    """
    for key in EPM_REFUSED_FIELDS:
        if raw.get(key) not in (None, "", {}, []):
            raise Invalid(f"{where}.{key}: an EPM takes no {key} (it is an emulated machine whose EVMs the "
                          f"node's agent makes; give an ordinary task for a service)", field=f"{where}.{key}")
    need = epm_memory(evms, devices)
    if raw.get("mem_limit") is None:
        if task.mem_bytes < need:
            task.mem_bytes = need
            task.mem_limit = format_memory(need)
    elif task.mem_bytes < need:
        raise Invalid(f"{where}.mem_limit {raw['mem_limit']} is too small for {evms} EVMs ({devices} devices): "
                      f"an EPM needs about {EPM_BASE_MEMORY // 1024**2} MiB + {EVM_MEMORY[devices] // 1024} KiB "
                      f"per EVM = {format_memory(need)} (its EVMs' kernel memory is charged to it); "
                      f"leave mem_limit out to have it sized", field=f"{where}.mem_limit")


def _devices(raw: Any, where: str) -> str:
    value = raw if raw is not None else "full"
    if value not in DEVICE_SETS:
        raise Invalid(f"{where} must be 'full' (veth pair + tap + bridge per EVM, Merak's set) or 'lean' "
                      f"(one veth into a shared bridge per EPM), got {value!r}", field=where)
    return value


def _check_overlaps(pools: list[tuple[str, Pool]], overlay_subnet: str | None) -> None:
    seen: list[tuple[str, ipaddress.IPv4Network]] = []
    overlay = ipaddress.IPv4Network(overlay_subnet) if overlay_subnet else None
    for where, pool in pools:
        net = pool.network
        if overlay is not None and net.overlaps(overlay):
            raise Invalid(f"{where}: {net} overlaps the job's network subnet {overlay}", field=where)
        for other_where, other in seen:
            if net.overlaps(other):
                raise Invalid(f"{where}: {net} overlaps {other} ({other_where}); a job's EVM subnets must not "
                              "overlap", field=where)
        seen.append((where, net))


def plan_job(info: dict[str, Any], raw_tasks: dict[str, Any], tasks: list[Any],
             overlay_subnet: str | None) -> EvmPlan:
    """Validate a job's EVM sections; size its EPM tasks' memory; return the plan to store.

    ``tasks`` are the validated task specs (objects with name, image, command, mem_bytes, mem_limit);
    the EPM tasks among them get their memory raised to what their EVMs need (when not given) and an
    ``evms`` attribute holding their EVM configuration.
    """
    by_name = {t.name: t for t in tasks}
    if info.get("evms") is not None:
        where = "job_info.evms"
        raw = require_object(info["evms"], where)
        reject_unknown(raw, _JOB_FIELDS, where)
        for name, t in raw_tasks.items():
            if isinstance(t, dict) and t.get("evms") is not None:
                raise Invalid(f"job_info.tasks.{name}.evms: the job already has job_info.evms; give per-EPM "
                              "counts there with a manual distribution", field=f"job_info.tasks.{name}.evms")
        epm_names = list(raw_tasks)
        dist = parse_distribution(raw.get("distribution"), f"{where}.distribution", epm_names)
        if dist.kind == "manual":
            assert dist.counts is not None
            total = sum(dist.counts.values())
            if raw.get("count") is not None:
                count = require_int(raw["count"], f"{where}.count", 0, MAX_EVMS_PER_JOB)
                if count != total:
                    raise Invalid(f"{where}.distribution.counts add up to {total}, but count is {count}",
                                  field=f"{where}.distribution.counts")
            count = require_int(total, f"{where}.distribution.counts", 0, MAX_EVMS_PER_JOB)
        else:
            if raw.get("count") is None:
                raise Invalid(f"{where}.count is required (how many EVMs)", field=f"{where}.count")
            count = require_int(raw["count"], f"{where}.count", 0, MAX_EVMS_PER_JOB)
        pool = parse_pool(raw.get("subnet"), raw.get("gateway"), where)
        if count > pool.capacity:
            raise Invalid(f"{where}.count: {count} EVMs do not fit subnet {pool.subnet}, which holds "
                          f"{pool.capacity} (network, broadcast and gateway excluded)", field=f"{where}.count")
        _check_overlaps([(f"{where}.subnet", pool)], overlay_subnet)
        devices = _devices(raw.get("devices"), f"{where}.devices")
        labels = labels_from(raw, where)
        rate = parse_rate(raw.get("rate"), f"{where}.rate")
        counts = distribute(count, epm_names, dist)
        for name, n in counts.items():
            check_epm_count(name, n, devices, f"{where}.devices" if devices == "lean" else f"{where}.count")
        rates = split_rate(rate, counts)
        epms = {name: EpmPlan(pool, devices, labels, counts[name], rates[name]) for name in epm_names}
        for name in epm_names:
            _check_epm_task(by_name[name], raw_tasks[name], f"job_info.tasks.{name}", counts[name], devices)
        plan = EvmPlan("job", epms, dist, rate, count, shared_pool=pool)
    else:
        epms = {}
        pools: list[tuple[str, Pool]] = []
        for name in epm_task_names(info, raw_tasks):
            where = f"job_info.tasks.{name}.evms"
            raw = require_object(raw_tasks[name]["evms"], where)
            if "distribution" in raw:
                raise Invalid(f"{where}.distribution: a task's EVMs all live in its own EPM; distributions "
                              "apply to job_info.evms", field=f"{where}.distribution")
            reject_unknown(raw, _TASK_FIELDS, where)
            if raw.get("count") is None:
                raise Invalid(f"{where}.count is required (how many EVMs in this EPM)", field=f"{where}.count")
            count = require_int(raw["count"], f"{where}.count", 0, MAX_EVMS_PER_EPM)
            pool = parse_pool(raw.get("subnet"), raw.get("gateway"), where)
            if count > pool.capacity:
                raise Invalid(f"{where}.count: {count} EVMs do not fit subnet {pool.subnet}, which holds "
                              f"{pool.capacity}", field=f"{where}.count")
            pools.append((f"{where}.subnet", pool))
            devices = _devices(raw.get("devices"), f"{where}.devices")
            check_epm_count(name, count, devices, f"{where}.devices" if devices == "lean" else f"{where}.count")
            rate = parse_rate(raw.get("rate"), f"{where}.rate")
            epms[name] = EpmPlan(pool, devices, labels_from(raw, where), count, rate.doc())
            _check_epm_task(by_name[name], raw_tasks[name], f"job_info.tasks.{name}", count, devices)
        _check_overlaps(pools, overlay_subnet)
        total = sum(p.count for p in epms.values())
        if total > MAX_EVMS_PER_JOB:
            raise Invalid(f"job_info.tasks: {total} EVMs in one job; at most {MAX_EVMS_PER_JOB}",
                          field="job_info.tasks")
        plan = EvmPlan("task", epms, None, None, total)
    for name, p in plan.epms.items():
        by_name[name].evms = p.doc()
    return plan


# ---- adding EVMs to a running job (POST /jobs/{id}/evms) ------------------------------------------
def parse_addition(body: Any, epms: list[str]) -> Addition:
    """Validate an addition's shape; capacity against the job's current state is checked by the caller."""
    raw = require_object(body, "body")
    reject_unknown(raw, _ADD_FIELDS, "")
    if raw.get("count") is None and not (isinstance(raw.get("distribution"), dict)
                                         and raw["distribution"].get("kind") == "manual"):
        raise Invalid("count is required (how many EVMs to add)", field="count")
    dist = parse_distribution(raw.get("distribution"), "distribution", epms)
    if dist.kind == "manual":
        assert dist.counts is not None
        total = sum(dist.counts.values())
        if raw.get("count") is not None and require_int(raw["count"], "count", 1, MAX_EVMS_PER_JOB) != total:
            raise Invalid(f"distribution.counts add up to {total}, but count is {raw['count']}",
                          field="distribution.counts")
        count = require_int(total, "distribution.counts", 1, MAX_EVMS_PER_JOB)
    else:
        count = require_int(raw["count"], "count", 1, MAX_EVMS_PER_JOB)
    labels = {k: _label(raw[k], k) for k in LABEL_FIELDS if raw.get(k) is not None}
    return Addition(count=count, counts=distribute(count, epms, dist), distribution=dist,
                    rate=parse_rate(raw.get("rate"), "rate"), labels=labels)


@dataclass
class SetUpdate:
    """A validated ``PATCH /jobs/{id}/evms`` body: the set the job's EPMs should hold."""

    count: int
    counts: dict[str, int]  # the target per EPM: distribute(count) over the job's EPMs
    distribution: Distribution
    rate: Rate | None  # None: keep the job's


def parse_set_update(body: Any, epms: list[str], stored: dict[str, Any] | None, current: int) -> SetUpdate:
    """Validate a set update. ``stored`` is the distribution the job follows (None: it has none, as a job
    whose EVMs were given per task); ``current`` its EVM count now (the default count).

    The target per EPM is ``distribute(count)``. Every distribution is nested in ``count`` (uniform hands
    the next EVM to the next EPM in turn; random and skew draw one EPM per EVM from the same seeded
    sequence), so scaling up adds exactly the extra EVMs and scaling down removes the last ones.
    """
    raw = require_object(body, "body")
    reject_unknown(raw, {"count", "distribution", "rate"}, "")
    if not raw:
        raise Invalid("give count, distribution or rate", field="body")
    if raw.get("distribution") is not None:
        given = _shorthand(raw["distribution"], "distribution")
        if (stored is not None and given.get("seed") is None and given.get("kind") in ("random", "skew")
                and stored.get("kind") == given.get("kind") and stored.get("seed") is not None):
            given = {**given, "seed": stored["seed"]}  # the same request twice draws the same set
        dist = parse_distribution(given, "distribution", epms)
    elif stored is not None:
        dist = parse_distribution(stored, "distribution", epms)
    else:
        raise Invalid("distribution: this job's EVMs were given per task, so it has no distribution to follow; "
                      "give one (e.g. \"uniform\" or {\"kind\": \"manual\", \"counts\": {...}})",
                      field="distribution")
    if dist.kind == "manual":
        assert dist.counts is not None
        total = sum(dist.counts.values())
        if raw.get("distribution") is None and raw.get("count") is not None:
            raise Invalid("count: this job follows a manual distribution; give distribution.counts instead",
                          field="count")
        if raw.get("count") is not None and require_int(raw["count"], "count", 0, MAX_EVMS_PER_JOB) != total:
            raise Invalid(f"distribution.counts add up to {total}, but count is {raw['count']}",
                          field="distribution.counts")
        count = require_int(total, "distribution.counts", 0, MAX_EVMS_PER_JOB)
    else:
        count = require_int(raw["count"], "count", 0, MAX_EVMS_PER_JOB) if raw.get("count") is not None else current
    rate = parse_rate(raw["rate"], "rate") if raw.get("rate") is not None else None
    return SetUpdate(count=count, counts=distribute(count, epms, dist), distribution=dist, rate=rate)


def parse_labels_patch(body: Any) -> dict[str, str]:
    raw = require_object(body, "body")
    reject_unknown(raw, set(LABEL_FIELDS), "")
    out = {k: _label(raw[k], k) for k in LABEL_FIELDS if k in raw}
    if not out:
        raise Invalid(f"give at least one of {', '.join(LABEL_FIELDS)}", field="body")
    return out

