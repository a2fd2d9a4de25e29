#!/usr/bin/env python3
"""End-to-end benchmark of a running deployment, driven by the StressClient.

1. Baseline, in the same run: what Docker alone takes to do a job's container work directly — create
   an attachable overlay network, create and start T pinned, memory-limited containers on it — done
   sequentially, N times. The system's submit → all EPMs running is compared with it.
2. Latency: for each job shape TASKS@RATE (default 4@1: 4-task jobs of 1-core tasks at 1 job/s) a
   steady load for --seconds; submit → all EPMs (tasks) running p50/p90/p99. A shape the cluster can
   never run is probed once (the FrontEnd's 422 is printed) and skipped. With --open-loop-tag TAG,
   Docker alone also runs under the same open load on the engines of the emulated cluster TAG
   (docker_open_loop): the bound the engines themselves put on the shape.
3. Throughput: 1-task jobs that exit at once, at increasing rates; the highest EPM start rate the
   system sustains — every arrival started, and submit → running not trending upwards (least-squares
   slope over the second half below --max-trend s/s; a growing queue shows as a positive slope).

Every load run is a full StressClient run: DIR/<name>/ holds results.json, jobs.csv and the plots.

    .venv/bin/python bench/e2e.py --url http://127.0.0.1:16001 --token "$(cat /tmp/rsw-bench/api_token)"
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from StressClient import generators, report  # noqa: E402
from StressClient.__main__ import connection, positive, preflight  # noqa: E402
from StressClient.client import FrontEnd  # noqa: E402
from StressClient.runner import Arrival, Runner, RunOptions  # noqa: E402
from StressClient.templates import Template  # noqa: E402

BASELINE_LABEL = "rswarm.bench"
report_terminal = {"COMPLETED", "FAILED", "CANCELLED"}


def _quietly(fn: Any) -> None:
    """Clean-up that may race with Docker's own (an attachable network can vanish with its last container)."""
    import docker

    with contextlib.suppress(docker.errors.APIError):
        fn()


def docker_baseline(tasks: int, n: int, cores: int) -> list[float]:
    """Seconds to create a job's overlay network and create+start ``tasks`` containers on it, N times."""
    import docker
    from docker.types import IPAMConfig, IPAMPool

    client = docker.DockerClient(base_url="unix:///var/run/docker.sock")
    api = client.api
    out: list[float] = []
    cores = max(1, min(cores, int(client.info()["NCPU"])))  # a worker may declare more (emulated) cores
    tag = f"{int(time.time())}"
    try:
        for i in range(n):
            name = f"rswbench-base-{tag}-{i}"
            t0 = time.monotonic()
            net = client.networks.create(name, driver="overlay", attachable=True, check_duplicate=True,
                                         ipam=IPAMConfig(pool_configs=[IPAMPool(subnet=f"10.233.{i % 250}.0/24")]),
                                         labels={BASELINE_LABEL: tag})
            ids = []
            for k in range(tasks):
                hc = api.create_host_config(cpuset_cpus=str(k % cores), mem_limit=64 * 2**20,
                                            memswap_limit=64 * 2**20, network_mode=name)
                nc = api.create_networking_config({name: api.create_endpoint_config(aliases=[f"t{k}"])})
                c = api.create_container("rswarm/task:1", command=["sleep", "1"], name=f"{name}-t{k}",
                                         host_config=hc, networking_config=nc, labels={BASELINE_LABEL: tag},
                                         detach=True)
                api.start(c["Id"])
                ids.append(c["Id"])
            out.append(time.monotonic() - t0)
            for cid in ids:
                api.remove_container(cid, force=True)
            _quietly(net.remove)
    finally:
        for c in api.containers(all=True, filters={"label": f"{BASELINE_LABEL}={tag}"}):
            _quietly(lambda c=c: api.remove_container(c["Id"], force=True))
        for net in client.networks.list(filters={"label": f"{BASELINE_LABEL}={tag}"}):
            _quietly(net.remove)
    return out


def docker_open_loop(tag: str, tasks: int, rate: float, seconds: float, task_seconds: float) -> dict[str, Any]:
    """Docker alone under the same open load as the system, on an emulated cluster's engines (``Management.py
    cluster up --tag TAG``): a job arrives every 1/rate s; each makes an attachable overlay on the manager,
    then creates and starts its ``tasks`` pinned containers (sleep ``task_seconds``) on one worker (the
    workers in turn), its seconds counted from its scheduled arrival to its last start; once they exit they
    are removed, and the network with them. Every job runs in its own thread, as the system's Workers work in
    parallel. The latency trend (least-squares slope over the second half) shows a growing backlog."""
    import threading

    import docker

    from Common.ops.emulated import SOCK_ROOT

    root = SOCK_ROOT / tag
    manager = docker.APIClient(base_url=f"unix://{root}/rswc-{tag}-m/docker.sock", timeout=300)
    workers = [docker.APIClient(base_url=f"unix://{d / 'docker.sock'}", timeout=300)
               for d in sorted(root.iterdir()) if d.name.startswith(f"rswc-{tag}-w")]
    label = {BASELINE_LABEL: f"open-{int(time.time())}"}
    n = max(1, round(rate * seconds))
    lat: list[float | None] = [None] * n
    errors: list[str] = []
    t0 = time.monotonic() + 1.0

    def job(i: int) -> None:
        at = t0 + i / rate
        time.sleep(max(0.0, at - time.monotonic()))
        eng = workers[i % len(workers)]
        name = f"rswbench-open-{label[BASELINE_LABEL]}-{i}"
        ids = []
        try:
            manager.create_network(name, driver="overlay", attachable=True, labels=label)
            for k in range(tasks):
                hc = eng.create_host_config(cpuset_cpus=str(k % 2), mem_limit=64 * 2**20, memswap_limit=64 * 2**20,
                                            network_mode=name)
                c = eng.create_container("rswarm/task:1", command=["sleep", f"{task_seconds:g}"], name=f"{name}-t{k}",
                                         host_config=hc, labels=label, detach=True)
                ids.append(c["Id"])
                eng.start(c["Id"])
            lat[i] = time.monotonic() - at
            for cid in ids:
                eng.wait(cid, timeout=300)
        except Exception as exc:  # counted, and the run goes on
            errors.append(f"job {i}: {exc}")
        finally:
            for cid in ids:
                _quietly(lambda cid=cid: eng.remove_container(cid, force=True))
            _quietly(lambda: manager.remove_network(name))

    threads = [threading.Thread(target=job, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 600)
    done = [(i / rate, v) for i, v in enumerate(lat) if v is not None]
    half = [(x, y) for x, y in done if x >= seconds / 2]
    trend = float(np.polyfit([x for x, _ in half], [y for _, y in half], 1)[0]) if len(half) >= 3 else None
    vals = [v for _, v in done]
    return {"jobs": n, "started": len(vals), "errors": errors[:5], "n_errors": len(errors), "trend_s_per_s": trend,
            **{f"p{q}": float(np.percentile(vals, q)) if vals else None for q in (50, 90, 99)}}


def run_load(fe: FrontEnd, name: str, template: Template, rate: float, seconds: float, out: Path, seed: int,
             drain: float) -> dict[str, Any]:
    offsets = generators.schedule("steady", {"rate": rate}, seed, seconds)
    arrivals = [Arrival(i, t, template) for i, t in enumerate(offsets)]
    opts = RunOptions(seed=seed, concurrency=16, drain_seconds=drain, poll_interval=1.0, sample_interval=1.0)
    res = Runner(fe, arrivals, opts).run()
    config = {"mode": "steady", "params": {"rate": rate, "process": "even"}, "seed": seed, "duration": seconds,
              "templates": [template.source if template.source.startswith("<") else
                            str(Path(template.source).relative_to(ROOT))], "url": fe.base, "bench": name}
    data = report.build(config, res.records, res.samples, res.started_at, res.arrivals_done_at, res.ended_at,
                        seconds, res.interrupted, res.notes)
    report.write_all(out / name, data)
    return data


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def shapes(text: str) -> list[tuple[int, float]]:
    out = []
    for part in text.split(","):
        try:
            t, r = part.split("@")
            tasks, rate = int(t), float(r)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected TASKS@RATE[,...] such as 4@1, got {part!r}") from None
        if tasks < 1 or rate <= 0:
            raise argparse.ArgumentTypeError(f"tasks must be >= 1 and rate > 0, got {part!r}")
        out.append((tasks, rate))
    return out


def rates(text: str) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"rates must be > 0, got {text!r}")
    return sorted(vals)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="FrontEnd base URL (default: from the config / RSWARM_* environment)")
    p.add_argument("--token", help="API token (default: RSWARM_API_TOKEN or the run dir's token file)")
    p.add_argument("--shapes", type=shapes, default=[(4, 1.0)],
                   help="latency runs, TASKS@RATE jobs/s, comma-separated (default 4@1)")
    p.add_argument("--seconds", type=positive, default=60.0, help="length of each latency run (default 60)")
    p.add_argument("--task-seconds", type=positive, default=1.0, help="each latency task sleeps this long")
    p.add_argument("--sweep", type=rates, default=[0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0],
                   help="EPM start rates to try with 1-task jobs, stopping after two unsustained ones "
                        "(default 0.25,0.5,0.75,1,1.5,2,3,4,5)")
    p.add_argument("--no-sweep", action="store_true", help="latency runs only")
    p.add_argument("--sweep-seconds", type=positive, default=30.0, help="length of each sweep run (default 30)")
    p.add_argument("--max-trend", type=positive, default=0.05,
                   help="a rate is sustained while submit→running grows slower than this, s/s (default 0.05)")
    p.add_argument("--baseline-n", type=int, default=20, help="Docker baseline repetitions (default 20)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--open-loop-tag", help="also run Docker alone under the same open load, on the engines of the "
                                           "emulated cluster brought up with this --tag (docker_open_loop)")
    p.add_argument("--out", help="results folder (default bench/results/e2e-TIMESTAMP)")
    args = p.parse_args(argv)
    args.template = None
    url, token = connection(args, p)
    fe = FrontEnd(url, token)
    problem = preflight(fe)
    if problem:
        print(f"e2e: {problem}", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"e2e-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    workers = [w for w in fe.workers().body["items"] if w["state"] == "READY"]
    total = sum(w["capacity_cores"] for w in workers)
    biggest = max(w["capacity_cores"] for w in workers)
    print(f"cluster: {len(workers)} READY worker(s), {total} cores in all (largest node {biggest}); FrontEnd {url}")
    figures: dict[str, Any] = {"cluster": {"workers": len(workers), "cores": total}, "latency": [], "sweep": []}

    # ---- latency runs ----
    for tasks, rate in args.shapes:
        tpl = Template.from_dict({"name": f"e2e-{tasks}x1", "tasks": tasks, "cores": 1, "memory": "64m",
                                  "duration": args.task_seconds}, f"<{tasks} tasks x 1 core, sleep "
                                                                  f"{args.task_seconds:g} s>")
        probe = fe.submit(tpl.render(0, args.seed))
        if probe.status != 201:
            print(f"\n{tasks}-task jobs @ {rate:g}/s: not runnable here — the FrontEnd answers {probe.error}: "
                  f"{probe.message}")
            figures["latency"].append({"tasks": tasks, "rate": rate, "refused": f"{probe.error}: {probe.message}"})
            continue
        fe.cancel(probe.body["id"])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and fe.job(probe.body["id"]).body.get("state") not in report_terminal:
            time.sleep(0.2)
        base = docker_baseline(tasks, args.baseline_n, biggest)
        open_loop = None
        if args.open_loop_tag:
            open_loop = docker_open_loop(args.open_loop_tag, tasks, rate, args.seconds, args.task_seconds)
            print(f"\nDocker alone, open loop, {tasks} containers per job at {rate:g} job/s on the cluster's engines: "
                  f"{json.dumps(open_loop)}")
        data = run_load(fe, f"latency-{tasks}x1-at-{rate:g}", tpl, rate, args.seconds, out, args.seed,
                        drain=120 + args.seconds)
        s = data["summary"]
        st = s["stages"]["submit_to_running"]
        b50, b99 = float(np.percentile(base, 50)), float(np.percentile(base, 99))
        print(f"\n{tasks}-task jobs (1 core, sleep {args.task_seconds:g} s) at {rate:g} job/s for {args.seconds:g} s:")
        print(f"  submit → all EPMs running  p50 {fmt(st['p50'])}  p90 {fmt(st['p90'])}  p99 {fmt(st['p99'])}  "
              f"max {fmt(st['max'])} s  (n={st['n']})")
        for key in ("submit_to_accepted", "accepted_to_scheduled", "scheduled_to_running"):
            x = s["stages"][key]
            print(f"    {x['label']:<24} p50 {fmt(x['p50'])}  p99 {fmt(x['p99'])} s")
        print(f"  baseline, Docker alone (network + {tasks} containers, sequential): p50 {b50:.3f}  p99 {b99:.3f} s "
              f"(n={len(base)}, median {statistics.median(base):.3f})")
        if st["p50"] is not None:
            print(f"  ratio system/baseline: p50 {st['p50'] / b50:.2f}x  p99 {st['p99'] / b99:.2f}x")
        trend = s["latency_trend_s_per_s"]
        print(f"  trend {trend if trend is None else round(trend, 4)} s/s; "
              f"final states {s['outcomes']['final_states']}; rejected {s['outcomes']['rejected_by_reason']}")
        figures["latency"].append({"tasks": tasks, "rate": rate, "submit_to_running": st, "baseline_p50": b50,
                                   "baseline_p99": b99, "docker_open_loop": open_loop, "trend": trend,
                                   "stages": s["stages"],
                                   "final_states": s["outcomes"]["final_states"]})

    if args.no_sweep:
        (out / "figures.json").write_text(json.dumps(figures, indent=1))
        return 0
    # ---- EPM start-rate sweep ----
    tpl = Template.from_dict({"name": "e2e-instant", "tasks": 1, "cores": 1, "memory": "32m", "command": ["true"]},
                             "<1 task x 1 core, command true>")
    print(f"\nEPM start-rate sweep: 1-task jobs (1 core, exits at once), {args.sweep_seconds:g} s per rate")
    print("(hold = how long an EPM holds its core, scheduled → finished; cores/hold bounds any sustainable rate)")
    print(f"{'offered EPM/s':>14}{'started/s':>11}{'p50 s':>9}{'p99 s':>9}{'trend s/s':>11}{'hold s':>9}"
          f"{'cores/hold':>12}  sustained")
    best = None
    misses = 0
    for rate in args.sweep:
        data = run_load(fe, f"sweep-{rate:g}", tpl, rate, args.sweep_seconds, out, args.seed, drain=120)
        s = data["summary"]
        recs = report.records_of(data)
        window_end = data["started_at"] + args.sweep_seconds
        # EPMs of arrivals in the window that were started by the end of the window plus one p50 latency.
        st = s["stages"]["submit_to_running"]
        started_in = sum(1 for r in recs for t in r.task_running if t <= window_end + (st["p50"] or 0))
        started_rate = started_in / args.sweep_seconds
        trend = s["latency_trend_s_per_s"]
        rejected = sum(s["outcomes"]["rejected_by_reason"].values())
        ok = (trend is not None and trend < args.max_trend and started_rate >= 0.95 * rate and rejected == 0
              and s["outcomes"]["final_states"].get("COMPLETED", 0) == len(recs))
        holds = [r.finished_at - r.scheduled_at for r in recs if r.finished_at and r.scheduled_at]
        hold = statistics.mean(holds) if holds else float("nan")
        bound = figures["cluster"]["cores"] / hold if holds else float("nan")
        print(f"{rate:>14.2f}{started_rate:>11.2f}{fmt(st['p50']):>9}{fmt(st['p99']):>9}"
              f"{(trend if trend is not None else float('nan')):>11.4f}{hold:>9.3f}{bound:>12.2f}  "
              f"{'yes' if ok else 'NO'}")
        figures["sweep"].append({"offered": rate, "started_per_s": started_rate, "p50": st["p50"], "p99": st["p99"],
                                 "trend": trend, "hold_s": hold, "cores_over_hold": bound, "sustained": ok,
                                 "final_states": s["outcomes"]["final_states"]})
        if ok:
            best, misses = rate, 0
        else:
            misses += 1
            if misses >= 2:
                break
    print(f"\nhighest sustained EPM start rate: {best if best is not None else 'none of the rates tried'} EPMs/s "
          f"(results in {out})")
    figures["highest_sustained_epm_per_s"] = best
    (out / "figures.json").write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
