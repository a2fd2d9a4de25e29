#!/usr/bin/env python3
"""Control-plane throughput with hollow workers: how many tasks per second the FrontEnd, JobManager,
GlobalManager, Discovery and MongoDB carry from submission to COMPLETED when no container is started.

Start a deployment with hollow workers only, then run this against it:

    .venv/bin/python Management.py up --no-worker --hollow 1000:4:8g
    .venv/bin/python bench/controlplane.py --rate 100 --tasks 4 --seconds 20 --out bench/results/cp-1000

It offers 1-core jobs of ``--tasks`` tasks that each run ``sleep --task-seconds`` (a hollow node plays
that duration) at ``--rate`` jobs/s for ``--seconds`` (open loop, the StressClient's runner), waits for
them to end, and reports:

* tasks/s end to end: tasks COMPLETED / (last completion - first scheduled arrival), and the same for
  the steady part (arrivals in the second half);
* p50/p99 of submit -> scheduled (the scheduled arrival to the JobManager's committed placement) and of
  scheduled -> running (to the last task of the job RUNNING, as Discovery recorded it);
* MongoDB writes per task and where they go: each actor's write commands (insert, update, delete,
  findAndModify) from its ``rswarm_mongo_operation_seconds`` counters, before and after, and the
  events the run appended by kind (the events collection's share). Hollow hosts serve no /metrics: what
  they write is registration only (their heartbeats are written by Discovery).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import requests
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from Common.config import load as load_config  # noqa: E402
from Common.store import Store  # noqa: E402
from StressClient import report  # noqa: E402
from StressClient.__main__ import positive, positive_int, preflight  # noqa: E402
from StressClient.client import FrontEnd  # noqa: E402
from StressClient.runner import Arrival, Runner, RunOptions  # noqa: E402
from StressClient.templates import Template  # noqa: E402

WRITES = ("insert", "update", "delete", "findAndModify")


def scrape(urls: dict[str, str]) -> dict[str, Counter]:
    out: dict[str, Counter] = {}
    for actor, url in urls.items():
        c: Counter = Counter()
        try:
            text = requests.get(url, timeout=10).text
        except requests.RequestException:
            out[actor] = c
            continue
        for fam in text_string_to_metric_families(text):
            if fam.name == "rswarm_schedule_pass_seconds":
                for s in fam.samples:
                    if s.name.endswith(("_count", "_sum")):
                        c["pass_" + s.name.rsplit("_", 1)[1]] += s.value
            if fam.name != "rswarm_mongo_operation_seconds":
                continue
            for s in fam.samples:
                if s.name.endswith("_count"):
                    c[s.labels.get("command", "?")] += int(s.value)
                elif s.name.endswith("_sum"):
                    c["seconds"] += s.value
        out[actor] = c
    return out


def pct(v: list[float], q: float) -> float | None:
    return float(np.percentile(v, q)) if v else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=positive, default=50.0, help="jobs/s offered (default 50)")
    p.add_argument("--tasks", type=positive_int, default=1, help="1-core tasks per job (default 1)")
    p.add_argument("--seconds", type=positive, default=20.0, help="arrivals for this long (default 20)")
    p.add_argument("--task-seconds", type=float, default=1.0, help="each task's sleep (default 1)")
    p.add_argument("--concurrency", type=positive_int, default=32)
    p.add_argument("--drain", type=positive, default=300.0)
    p.add_argument("--poll-interval", type=positive, default=5.0,
                   help="how often the client lists jobs (default 5: its listings load the same MongoDB; the "
                        "latencies are the system's own timestamps, so this changes no figure)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / f"controlplane-{time.strftime('%Y%m%d-%H%M%S')}"))
    args = p.parse_args()
    cfg = load_config()
    fe = FrontEnd(cfg.frontend_url, cfg.token(), 30)
    problem = preflight(fe)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    store = Store.connect(cfg, "bench")
    workers = store.workers.all()
    hollow = sum(1 for w in workers if w.get("hollow"))
    metrics = {"frontend": f"{cfg.frontend_url}/metrics"}
    for actor, sub in (("jobmanager", cfg.jobmanager), ("discovery", cfg.discovery),
                       ("globalmanager", cfg.globalmanager)):
        if sub.metrics_port:
            metrics[actor] = f"http://{sub.metrics_host}:{sub.metrics_port}/metrics"
    tpl = Template.from_dict({"name": "cp", "tasks": args.tasks, "cores": 1, "memory": "16m",
                              "duration": args.task_seconds}, "controlplane")
    n = int(args.rate * args.seconds)
    arrivals = [Arrival(i, i / args.rate, tpl) for i in range(n)]
    before = scrape(metrics)
    t_start = time.time()
    result = Runner(fe, arrivals, RunOptions(concurrency=args.concurrency, drain_seconds=args.drain,
                                             sample_interval=30.0, poll_interval=args.poll_interval)).run()
    after = scrape(metrics)
    data = report.build({"mode": "controlplane", "params": vars(args), "templates": ["controlplane"]},
                        result.records, result.samples, result.started_at, result.arrivals_done_at,
                        result.ended_at, args.seconds, result.interrupted, result.notes)
    out = Path(args.out)
    report.write_all(out, data, plots=False)
    recs = result.records
    done = [r for r in recs if r.state == "COMPLETED" and r.finished_at]
    tasks_done = sum(r.tasks for r in done)
    span = (max(r.finished_at for r in done) - result.started_at) if done else 0.0  # type: ignore[type-var]
    half = [r for r in done if r.offset >= args.seconds / 2]
    half_span = (max(r.finished_at for r in half) - min(r.submit_at for r in half)) if half else 0.0  # type: ignore[type-var]
    sub_sched = [r.scheduled_at - r.submit_at for r in recs if r.scheduled_at]
    sched_run = [r.running_at - r.scheduled_at for r in recs if r.running_at and r.scheduled_at]
    writes = {a: {k: after[a][k] - before[a].get(k, 0) for k in WRITES if after[a][k] - before[a].get(k, 0)}
              for a in after}
    total_writes = sum(sum(v.values()) for v in writes.values())
    reads = {a: {k: after[a][k] - before[a].get(k, 0) for k in ("find", "getMore", "aggregate", "count")
                 if after[a][k] - before[a].get(k, 0)} for a in after}
    db_seconds = {a: round(after[a]["seconds"] - before[a].get("seconds", 0), 2) for a in after}
    passes = after.get("jobmanager", Counter())
    jm_pass = {"passes": passes["pass_count"] - before.get("jobmanager", Counter())["pass_count"],
               "seconds": round(passes["pass_sum"] - before.get("jobmanager", Counter())["pass_sum"], 2)}
    ev = Counter()
    since = dt.datetime.fromtimestamp(t_start, dt.UTC)
    for d in store.events.col.aggregate([{"$match": {"at": {"$gte": since}}},
                                         {"$group": {"_id": "$kind", "n": {"$sum": 1}}}]):
        ev[d["_id"]] = d["n"]
    offered_tasks = n * args.tasks
    res: dict[str, Any] = {
        "workers": len(workers), "hollow": hollow, "rate_jobs_per_s": args.rate, "tasks_per_job": args.tasks,
        "offered_tasks_per_s": args.rate * args.tasks, "offered_tasks": offered_tasks,
        "completed_tasks": tasks_done, "final_states": Counter(r.state for r in recs),
        "tasks_per_s_end_to_end": tasks_done / span if span else 0.0,
        "tasks_per_s_second_half": sum(r.tasks for r in half) / half_span if half_span else 0.0,
        "submit_to_scheduled_p50": pct(sub_sched, 50), "submit_to_scheduled_p99": pct(sub_sched, 99),
        "scheduled_to_running_p50": pct(sched_run, 50), "scheduled_to_running_p99": pct(sched_run, 99),
        "mongo_writes_by_actor": writes,
        "mongo_writes_per_task": total_writes / tasks_done if tasks_done else None,
        "mongo_reads_by_actor": reads,
        "mongo_round_trip_seconds_by_actor": db_seconds,
        "jobmanager_schedule_passes": jm_pass,
        "events_by_kind": dict(ev.most_common()),
        "events_per_task": sum(ev.values()) / tasks_done if tasks_done else None,
    }
    (out / "controlplane.json").write_text(json.dumps(res, indent=1, default=str))
    print(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
