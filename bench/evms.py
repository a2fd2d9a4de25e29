#!/usr/bin/env python3
"""EVM benchmarks on real EPM containers and the node's EVM agent, on this node.

Each EPM is a container run exactly as the Worker runs one (no privilege; the node agent enters its
network namespace); this script plays the Worker's part (tests/evm_harness.py), so what is measured is
the agent and the kernel, not MongoDB or the REST path. The Merak baseline runs `ip` on the host inside
the EPM's network namespace (and a private mount namespace for `ip netns add`). Since the node agent makes
the EVMs, their kernel memory is charged to the agent's memory cgroup, not the EPM's: the "cgroup" memory
figures below now show the EPM container only; the host-wide kernel figures still show the EVMs.

  baseline   Merak's way, in the same run: the same EVMs (full set) made by forking `ip` 15 times per EVM
             (netns, veth pair into it, tap, bridge, enslave, addresses, up, default route) and removed
             with 3 more; our figures are given as ratios against it
  rate       EVMs created and deleted per second: one EPM, then across EPMs on this node (one per core),
             for both device sets; per-EVM creation time p50/p90/p99 as the agent measured it
  memory     per EVM, for both device sets: charged to the EPM's memory cgroup (and its kernel part,
             memory.kmem), and host-wide kernel memory (Slab + Percpu + KernelStack + PageTables)
  scale      the largest count: N EVMs of the full set over one EPM per core; every one READY and
             checked in the kernel, then drained; leaks = namespaces or links left in the EPMs, and the
             host's live network namespaces against the count before the run

    .venv/bin/python bench/evms.py                       # everything (scale: 20,000 EVMs)
    .venv/bin/python bench/evms.py --sections rate,memory --count 2000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from Common import cgroups  # noqa: E402
from tests.evm_harness import EpmContainer, addresses, remove_leftovers  # noqa: E402

MERAK_SCRIPT = r"""
import subprocess, sys, time, json
n, subnet_prefix, gw = int(sys.argv[1]), sys.argv[2], sys.argv[3]
def ip(*a):
    subprocess.run(["ip", *a], check=True, capture_output=True)
lat = []
t0 = time.monotonic()
for i in range(1, n + 1):
    s = time.monotonic()
    ns, addr = f"mvm{i}", f"{subnet_prefix}.{i // 250}.{i % 250 + 2}"
    mac = "02:aa:%02x:%02x:%02x:%02x" % (0, 0, i // 256, i % 256)
    ip("netns", "add", ns)
    ip("link", "add", f"mv{i}", "type", "veth", "peer", "name", f"mp{i}")
    ip("link", "set", f"mp{i}", "netns", ns)
    ip("-n", ns, "link", "set", f"mp{i}", "name", "eth0")
    ip("-n", ns, "link", "set", "eth0", "address", mac)
    ip("-n", ns, "addr", "add", f"{addr}/16", "dev", "eth0")
    ip("-n", ns, "link", "set", "eth0", "up")
    ip("-n", ns, "link", "set", "lo", "up")
    ip("-n", ns, "route", "add", "default", "via", gw)
    ip("tuntap", "add", f"mt{i}", "mode", "tap")
    ip("link", "add", f"mb{i}", "type", "bridge")
    ip("link", "set", f"mv{i}", "master", f"mb{i}")
    ip("link", "set", f"mt{i}", "master", f"mb{i}")
    ip("link", "set", f"mb{i}", "up")
    ip("link", "set", f"mv{i}", "up")
    lat.append((time.monotonic() - s) * 1000)
t1 = time.monotonic()
for i in range(1, n + 1):
    ip("netns", "del", f"mvm{i}")
    ip("link", "del", f"mt{i}")
    ip("link", "del", f"mb{i}")
t2 = time.monotonic()
print(json.dumps({"create_s": t1 - t0, "delete_s": t2 - t1, "lat_ms": lat}))
"""

KERNEL_FIELDS = ("Slab", "Percpu", "KernelStack", "PageTables")


def meminfo() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, rest = line.split(":", 1)
        out[key] = int(rest.split()[0]) * 1024
    return out


def kernel_bytes() -> int:
    m = meminfo()
    return sum(m.get(k, 0) for k in KERNEL_FIELDS)


def live_netns() -> int:
    """Live network namespaces on the host (objects of the kernel's net_namespace cache)."""
    for line in Path("/proc/slabinfo").read_text().splitlines():
        if line.startswith("net_namespace "):
            return int(line.split()[1])
    return -1


def kmem(e: EpmContainer) -> int:
    """Kernel memory charged to the EPM's cgroup; 0 where the layout has no such file (cgroup v2)."""
    try:
        e.container.reload()
        return int(cgroups.read(e.container.attrs["State"]["Pid"], "kmem_usage"))
    except (cgroups.Unsupported, FileNotFoundError):
        return 0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process (the agents'; an agent restarted meanwhile is not counted)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def by_tenth(done: list[float], start: float) -> list[float]:
    """Creation rate over each tenth of the run's EVMs (in completion order): flat if nothing slows down."""
    out, prev_t, prev_i = [], start, 0
    for k in range(1, 11):
        i = len(done) * k // 10
        if i > prev_i:
            t = done[i - 1]
            out.append(round((i - prev_i) / max(t - prev_t, 1e-9), 1))
            prev_t, prev_i = t, i
    return out


def say(msg: str) -> None:
    print(msg, flush=True)


# ---- sections --------------------------------------------------------------------------------------
def baseline(n: int) -> dict[str, Any]:
    with EpmContainer(devices="full", mem="1g", cpuset="0") as e:
        e.wait("the agent", lambda: e.agent_pid() is not None, 30)
        out = json.loads(e.py(MERAK_SCRIPT, str(n), "10.91", "10.91.0.1", private_mounts=True, timeout=3600))
    lat = out["lat_ms"]
    res = {"n": n, "create_per_s": n / out["create_s"], "delete_per_s": n / out["delete_s"],
           "create_ms_p50": pct(lat, 50), "create_ms_p90": pct(lat, 90), "create_ms_p99": pct(lat, 99),
           "forks_per_evm": 15 + 3}
    say(f"baseline (fork `ip`, full set, 1 EPM): {n} EVMs, create {res['create_per_s']:.1f}/s "
        f"(p50 {res['create_ms_p50']:.1f} ms, p90 {res['create_ms_p90']:.1f}, p99 {res['create_ms_p99']:.1f}), "
        f"delete {res['delete_per_s']:.1f}/s")
    return res


def wait_all(epms: list[EpmContainer], plans: list[list[tuple[int, str, str]]], state: str, timeout: float) -> None:
    """Until every EVM of every EPM is reported in ``state``, draining every EPM's socket all along, as the
    Worker does. (Waiting on one EPM at a time left the others' reports queued: an agent whose socket is
    full waits up to 0.5 s per report datagram, so the benchmark slowed the agents down.)"""
    deadline = time.monotonic() + timeout
    pending = [{s for s, _, _ in plan} for plan in plans]
    while any(pending):
        for e, left in zip(epms, pending, strict=True):
            e.pump()
            left -= {s for s in left if e.recorded.get(s) == state}
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {sum(map(len, pending))} EVMs to be {state}")
        time.sleep(0.05)


def run_epms(devices: str, counts: list[int], cpusets: list[str | None], mem: str, subnet_base: int = 100,
             check: bool = False, timeout: float = 1800.0) -> dict[str, Any]:
    """Create counts[i] EVMs in EPM i at once; then delete them all. Rates are node-wide."""
    epms = [EpmContainer(devices=devices, mem=mem, cpuset=c, subnet=f"10.{subnet_base + i}.0.0/16")
            for i, c in enumerate(cpusets)]
    try:
        for e in epms:
            e.wait("the agent", lambda e=e: e.agent_pid() is not None and e.status() is not None, 60)
        k0 = kernel_bytes()
        a0 = meminfo()["MemAvailable"]
        m0 = [e.memory_usage() for e in epms]
        km0 = [kmem(e) for e in epms]
        plans = [addresses(n, f"10.{subnet_base + i}.0.0/16") for i, n in enumerate(counts)]
        pids = [e.agent_pid() for e in epms]
        cpu0 = sum(cpu_seconds(p) for p in pids)
        t0 = time.time()
        for e, plan in zip(epms, plans, strict=True):
            e.want(plan)
        wait_all(epms, plans, "READY", timeout)
        t1 = time.time()
        cpu1 = sum(cpu_seconds(p) for p in pids)
        items = [i for e in epms for i in e.items() if i[1] == "READY" and i[3] is not None]
        errors = [i for e in epms for i in e.items() if i[1] == "ERROR"]
        first = min(i[2]["READY"] - i[3] / 1000 for i in items)  # the first creation's start
        last = max(i[2]["READY"] for i in items)
        total = sum(counts)
        time.sleep(1.0)
        k1 = kernel_bytes()
        a1 = meminfo()["MemAvailable"]
        m1 = [e.memory_usage() for e in epms]
        km1 = [kmem(e) for e in epms]
        verified = None
        if check:
            verified = 0
            for e, n in zip(epms, counts, strict=True):
                c = e.counts()
                full = devices == "full"
                assert c["netns"] == n and c["rswv"] == n and c["rswt"] == (n if full else 0), c
                assert c["rswb"] == (n if full else 0), c
                verified += n
        ms = [i[3] for i in items if i[3] is not None]
        res: dict[str, Any] = {
            "devices": devices, "epms": len(epms), "count": total, "errors": len(errors),
            "create_per_s": total / (last - first), "create_wall_s": t1 - t0,
            "create_ms_p50": pct(ms, 50), "create_ms_p90": pct(ms, 90), "create_ms_p99": pct(ms, 99),
            "cgroup_kib_per_evm": (sum(m1) - sum(m0)) / total / 1024,
            "cgroup_kmem_kib_per_evm": (sum(km1) - sum(km0)) / total / 1024,
            "host_kernel_kib_per_evm": (k1 - k0) / total / 1024,
            "memavailable_kib_per_evm": (a0 - a1) / total / 1024,
            "agent_cpu_ms_per_evm": (cpu1 - cpu0) * 1000 / sum(counts),
            "create_per_s_by_tenth": by_tenth(sorted(i[2]["READY"] for i in items), first),
            "epm_base_mib": statistics.median(m0) / 1024**2,
            "verified_in_kernel": verified,
        }
        say(f"    created {total} EVMs at {res['create_per_s']:.1f}/s (errors {len(errors)}, by tenth "
            f"{res['create_per_s_by_tenth']}, agents' CPU {res['agent_cpu_ms_per_evm']:.2f} ms per EVM); deleting")
        # delete (drain: what the Worker does before removing an EPM; in batches, RTNL released between)
        t2 = time.time()
        for e, plan in zip(epms, plans, strict=True):
            e.remove([s for s, _, _ in plan])
        wait_all(epms, plans, "DELETED", timeout)
        t3 = time.time()
        deleted_at = max(i[2]["DELETED"] for e in epms for i in e.items() if i[1] == "DELETED")
        res["delete_per_s"] = total / (deleted_at - t2)
        res["delete_wall_s"] = t3 - t2
        leaks = 0
        for e in epms:
            c = e.counts()
            leaks += c["netns"] + c["rswv"] + c["rswt"] + c["rswb"] + (c["other"] - 1)  # lo stays
        res["leaks_in_epms"] = leaks
        return res
    finally:
        for e in epms:  # every EPM stops creating at once; each is then drained before it is removed
            with contextlib.suppress(Exception):
                e.drain = True
                e.write()
        for e in epms:
            e.close()


def show(label: str, r: dict[str, Any], base: dict[str, Any] | None) -> None:
    ratio = f" = {r['create_per_s'] / base['create_per_s']:.1f}x baseline" if base else ""
    dratio = f" = {r['delete_per_s'] / base['delete_per_s']:.1f}x baseline" if base else ""
    say(f"{label}: {r['count']} EVMs ({r['devices']}, {r['epms']} EPM{'s' * (r['epms'] > 1)}): "
        f"create {r['create_per_s']:.0f}/s{ratio} (per EVM p50 {r['create_ms_p50']:.1f} ms, "
        f"p90 {r['create_ms_p90']:.1f}, p99 {r['create_ms_p99']:.1f}); delete {r['delete_per_s']:.0f}/s{dratio}; "
        f"errors {r['errors']}, leaks {r['leaks_in_epms']}")
    say(f"    memory per EVM: cgroup {r['cgroup_kib_per_evm']:.0f} KiB (kmem {r['cgroup_kmem_kib_per_evm']:.0f}), "
        f"host kernel {r['host_kernel_kib_per_evm']:.0f} KiB, "
        f"MemAvailable drop {r['memavailable_kib_per_evm']:.0f} KiB; "
        f"idle EPM {r['epm_base_mib']:.1f} MiB")
    say(f"    created/s over each tenth of the run: {r['create_per_s_by_tenth']}; "
        f"agents' CPU {r['agent_cpu_ms_per_evm']:.2f} ms per EVM")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default="baseline,rate,memory,scale")
    ap.add_argument("--baseline-count", type=int, default=200)
    ap.add_argument("--count", type=int, default=1000, help="EVMs per rate run")
    ap.add_argument("--memory-count", type=int, default=2000)
    ap.add_argument("--scale-count", type=int, default=20000)
    ap.add_argument("--out", default="", help="write the results as JSON here")
    args = ap.parse_args()
    # Interrupted (even when started in the background, where SIGINT is ignored), the EPMs are drained and
    # removed by the `finally`s: removing EPMs that hold thousands of bridges outright holds the node's
    # RTNL lock for minutes.
    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    sections = set(args.sections.split(","))
    ncpu = os.cpu_count() or 1
    remove_leftovers()
    results: dict[str, Any] = {"ncpu": ncpu, "started": time.time(), "loadavg_start": os.getloadavg()}
    base = None
    if "baseline" in sections:
        base = results["baseline"] = baseline(args.baseline_count)
    if "rate" in sections:
        for devices in ("full", "lean"):
            r = run_epms(devices, [args.count], ["0"], "1g")
            show("rate, one EPM", r, base)
            results[f"rate_one_{devices}"] = r
            per = args.count // ncpu
            r = run_epms(devices, [per] * ncpu, [str(c) for c in range(ncpu)], "1g")
            show(f"rate, {ncpu} EPMs (one per core)", r, base)
            results[f"rate_node_{devices}"] = r
    if "memory" in sections:
        for devices in ("full", "lean"):
            n = min(args.memory_count, 1023) if devices == "lean" else args.memory_count
            r = run_epms(devices, [n], ["0"], "2g")
            show("memory", r, base)
            results[f"memory_{devices}"] = r
    if "scale" in sections:
        before = live_netns()
        per = args.scale_count // ncpu
        mem = f"{64 + per * 300 // 1024}m"
        r = run_epms("full", [per] * ncpu, [str(c) for c in range(ncpu)], mem, check=True, timeout=7200)
        time.sleep(5)
        r["host_netns_before"], r["host_netns_after"] = before, live_netns()
        show(f"scale, {ncpu} EPMs", r, base)
        say(f"    every EVM verified in the kernel: {r['verified_in_kernel']}; host network namespaces "
            f"{r['host_netns_before']} before, {r['host_netns_after']} after")
        results["scale"] = r
    results["loadavg_end"] = os.getloadavg()
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
