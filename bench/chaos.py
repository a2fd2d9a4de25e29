#!/usr/bin/env python3
"""Chaos run (issue 11, items 5 and 6): a StressClient load while every supervised process is SIGKILLed.

On the deployment described by the configuration (``RSWARM_*`` environment / rswarm.toml), which must be
up (``Management.py up``): first the workload alone (the baseline), then the same workload again while a
seeded schedule SIGKILLs each of FrontEnd, JobManager, GlobalManager, Discovery, Worker and the embedded
MongoDB ``--kills`` times, and freezes MongoDB with SIGSTOP for ``--freeze`` seconds once. Nobody restarts
anything: supervisord does. It prints the schedule as it goes and a table at the end:

* per fault: when, what, seconds until the process answers again (a new pid and its probe: FrontEnd
  health, GlobalManager /swarm, JobManager /metrics, a Worker heartbeat recorded by Discovery, a MongoDB
  ping, for the freeze the FrontEnd reading jobs again) and until the next job completes;
* per run: jobs, accepted, COMPLETED, refused submissions retried (see below), submit → all running
  p50/p99/max.

Submissions refused while the FrontEnd or MongoDB is away (no answer, or 503) are retried by the client
with the same Idempotency-Key (StressClient ``RunOptions.retry_refused_seconds``), so a request stored just
before its answer was lost is not stored twice; each refused attempt is counted apart, never as a job.

    .venv/bin/python -m bench.chaos [--up] [--jobs 300] [--rate 0.75] [--kills 2] [--freeze 30] [--seed 1] [--out DIR]

``--up`` starts the configured deployment first (``Management.py up``) and takes it down at the end.

The test tests/test_chaos.py runs :func:`chaos_run` (without the baseline) against the test deployment.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import Management  # noqa: E402
from Common.config import Config  # noqa: E402
from Common.config import load as load_config  # noqa: E402
from Common.store import Store  # noqa: E402
from StressClient import measure, report  # noqa: E402
from StressClient.client import FrontEnd  # noqa: E402
from StressClient.runner import Arrival, Runner, RunOptions, RunResult  # noqa: E402
from StressClient.templates import Template  # noqa: E402

PROCESSES = ("frontend", "jobmanager", "globalmanager", "discovery", "worker", "mongo")
JOB_TEMPLATE = {"name": "chaos", "tasks": 1, "cores": 1, "memory": "32m", "duration": 0.5}
MIN_GAP = 8.0  # seconds between two faults of the schedule (a kill's recovery is measured before the next)
PROBE_BOUND = 120.0  # liveness bound on "answers again"


@dataclass
class Fault:
    at: float  # planned offset from the start of the load, seconds
    kind: str  # "kill" (SIGKILL) or "freeze" (SIGSTOP for `seconds`, then SIGCONT)
    process: str
    seconds: float = 0.0
    done_at: float | None = None  # wall time of the signal (the SIGCONT for a freeze)
    old_pid: int | None = None
    new_pid: int | None = None
    answers_s: float | None = None  # until it answers again
    next_completed_s: float | None = None  # until the next job completes
    error: str | None = None


def plan(seed: int, window: float, kills: int, freeze_seconds: float,
         processes: tuple[str, ...] = PROCESSES) -> list[Fault]:
    """The seeded schedule: ``kills`` SIGKILLs per process and one MongoDB freeze, at uniform random moments
    of [5, window - 5] s, at least MIN_GAP apart (and no kill during the freeze or MIN_GAP around it)."""
    rng = random.Random(f"chaos-{seed}")
    lo, hi = 5.0, window - 5.0
    if hi - lo < freeze_seconds + 2 * MIN_GAP + MIN_GAP * kills * len(processes) * 2:
        raise ValueError(f"a window of {window:g} s is too short for {kills} kills per process and the freeze")
    freeze_at = rng.uniform(lo, hi - freeze_seconds)
    busy = (freeze_at - MIN_GAP, freeze_at + freeze_seconds + MIN_GAP)
    order = [p for p in processes for _ in range(kills)]
    rng.shuffle(order)
    times: list[float] = []
    for _ in order:
        for _attempt in range(100_000):
            t = rng.uniform(lo, hi)
            if not busy[0] <= t <= busy[1] and all(abs(t - u) >= MIN_GAP for u in times):
                break
        else:
            raise ValueError("could not fit the kills into the window")
        times.append(t)
    faults = [Fault(t, "kill", p) for p, t in zip(order, times, strict=True)]
    faults.append(Fault(freeze_at, "freeze", "mongo", seconds=freeze_seconds))
    return sorted(faults, key=lambda f: f.at)


# ---- probes: "the process answers again" -------------------------------------------------------------
class Probes:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.store = Store.connect(cfg, "bench-chaos")

    def close(self) -> None:
        self.store.close()

    def _worker_beat_after(self, t: float) -> bool:
        w = self.store.workers.get(self.cfg.worker_name)
        return bool(w) and w.get("heartbeat_at", 0) > t and w.get("state") == "READY"

    def answers(self, process: str, since: float) -> bool:
        cfg = self.cfg
        try:
            if process == "mongo":
                self.store.db.client.admin.command("ping")
                return Management._http_ok(f"{cfg.frontend_url}/api/v1/jobs?limit=1")
            if process == "frontend":
                return Management._http_ok(f"{cfg.frontend_url}/api/v1/health")
            if process == "globalmanager":
                return Management._http_ok(f"{cfg.globalmanager_url}/api/v1/swarm")
            if process == "jobmanager":
                jm = cfg.jobmanager
                return Management._http_ok(f"http://{jm.metrics_host}:{jm.metrics_port}/metrics")
            if process in ("discovery", "worker"):  # a heartbeat sent by the Worker and recorded by Discovery
                return self._worker_beat_after(since)
        except Exception:
            return False
        raise ValueError(process)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Chaos:
    """Carries out a schedule in its own thread, relative to ``start()``; logs every step."""

    def __init__(self, cfg: Config, faults: list[Fault], log: Any = print) -> None:
        self.cfg = cfg
        self.faults = faults
        self.log = log
        self.procs = Management.Processes(cfg)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="chaos", daemon=True)
        self.frozen: int | None = None

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.thread.start()

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)

    def _run(self) -> None:
        probes = Probes(self.cfg)
        try:
            for f in self.faults:
                if self.stop.wait(max(0.0, self.t0 + f.at - time.monotonic())):
                    return
                try:
                    self._fault(f, probes)
                except Exception as exc:
                    f.error = f"{type(exc).__name__}: {exc}"
                self.log(f"chaos: t={time.monotonic() - self.t0:7.1f}s {f.kind} {f.process} pid {f.old_pid} -> "
                         f"{f.new_pid}; answers after {_s(f.answers_s)} s{'; ' + f.error if f.error else ''}")
        finally:
            if self.frozen is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.frozen, signal.SIGCONT)
            probes.close()

    def _fault(self, f: Fault, probes: Probes) -> None:
        pid = self.procs.alive(f.process)
        if pid is None:
            f.error = "not running at the planned moment"
            return
        f.old_pid = pid
        if f.kind == "freeze":
            os.killpg(pid, signal.SIGSTOP)
            self.frozen = pid
            try:
                self.stop.wait(f.seconds)
            finally:
                os.killpg(pid, signal.SIGCONT)
                self.frozen = None
            f.done_at = time.time()
            f.new_pid = pid
        else:
            os.killpg(pid, signal.SIGKILL)
            f.done_at = time.time()
        deadline = time.monotonic() + PROBE_BOUND
        while time.monotonic() < deadline and not self.stop.is_set():
            new = self.procs.alive(f.process)
            if new is not None and (f.kind == "freeze" or new != pid) and _alive(new) \
                    and probes.answers(f.process, f.done_at):
                f.new_pid = new
                f.answers_s = time.time() - f.done_at
                return
            time.sleep(0.1)
        f.error = f"did not answer within {PROBE_BOUND:g} s"


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def fill_next_completed(faults: list[Fault], result: RunResult) -> None:
    done = sorted(r.finished_at for r in result.records if r.state == "COMPLETED" and r.finished_at)
    for f in faults:
        if f.done_at is not None:
            f.next_completed_s = next((t - f.done_at for t in done if t > f.done_at), None)


def workload(jobs: int, rate: float, seed: int) -> list[Arrival]:
    template = Template.from_dict(dict(JOB_TEMPLATE), "<bench.chaos>")
    return [Arrival(i, i / rate, template) for i in range(jobs)]  # even arrivals: the same in both runs


def run_load(cfg: Config, jobs: int, rate: float, seed: int, drain: float, cancel_at_end: bool) -> RunResult:
    fe = FrontEnd(cfg.frontend_url, cfg.token())
    opts = RunOptions(seed=seed, concurrency=16, drain_seconds=drain, poll_interval=1.0, sample_interval=2.0,
                      retry_refused_seconds=600.0, cancel_at_end=cancel_at_end)
    return Runner(fe, workload(jobs, rate, seed), opts).run()


def chaos_run(cfg: Config, jobs: int, rate: float, kills: int, freeze: float, seed: int, drain: float,
              cancel_at_end: bool = True, log: Any = print) -> tuple[RunResult, list[Fault]]:
    faults = plan(seed, jobs / rate, kills, freeze)
    sched = json.dumps([(round(f.at, 1), f.kind, f.process) for f in faults])
    log(f"chaos schedule (seed {seed}): {sched}")
    chaos = Chaos(cfg, faults, log)
    chaos.start()
    try:
        result = run_load(cfg, jobs, rate, seed, drain, cancel_at_end)
    finally:
        chaos.join(PROBE_BOUND + 60)
        chaos.stop.set()
        chaos.join()
    fill_next_completed(faults, result)
    return result, faults


def summary(result: RunResult) -> dict[str, Any]:
    recs = result.records
    accepted = [r for r in recs if r.accepted]
    lat = measure.stage_values(recs).get("submit_to_running", [])
    return {"jobs": len(recs), "accepted": len(accepted),
            "completed": sum(r.state == "COMPLETED" for r in accepted),
            "not_final": sum(not r.final for r in accepted),
            "refused_attempts": sum(r.refusals for r in recs),
            "jobs_refused_at_least_once": sum(r.refusals > 0 for r in recs),
            "submit_to_running": measure.stats(lat)}


def _save(out: Path, name: str, result: RunResult, cfg: Config, extra: dict[str, Any]) -> None:
    config = {"mode": "steady", "params": extra, "url": cfg.frontend_url, "bench": name}
    data = report.build(config, result.records, result.samples, result.started_at, result.arrivals_done_at,
                        result.ended_at, result.arrivals_done_at - result.started_at, result.interrupted,
                        result.notes)
    report.write_all(out / name, data, plots=False)


def table(base: dict[str, Any] | None, chaos: dict[str, Any], faults: list[Fault]) -> str:
    lines = ["| fault | at s | process | answers again s | next job completed s |", "|---|---:|---|---:|---:|"]
    for f in faults:
        what = "SIGKILL" if f.kind == "kill" else f"SIGSTOP {f.seconds:g} s"
        lines.append(f"| {what} | {f.at:.1f} | {f.process} | {_s(f.answers_s)} | {_s(f.next_completed_s)} |"
                     + (f" {f.error}" if f.error else ""))
    lines += ["", "| run | jobs | accepted | COMPLETED | refused attempts (jobs) | submit → running p50 | p99 | max |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in (("baseline", base), ("chaos", chaos)):
        if s is None:
            continue
        st = s["submit_to_running"]
        lines.append(f"| {name} | {s['jobs']} | {s['accepted']} | {s['completed']} | {s['refused_attempts']} "
                     f"({s['jobs_refused_at_least_once']}) | {_s(st['p50'])} | {_s(st['p99'])} | {_s(st['max'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=300)
    p.add_argument("--rate", type=float, default=0.75, help="jobs per second (even arrivals)")
    p.add_argument("--kills", type=int, default=2, help="SIGKILLs per process")
    p.add_argument("--freeze", type=float, default=30.0, help="seconds MongoDB is frozen (SIGSTOP) once")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--drain", type=float, default=600.0)
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--up", action="store_true", help="Management.py up first, down at the end")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / f"chaos-{int(time.time())}")
    a = p.parse_args(argv)
    cfg = load_config()
    if a.up:
        Management.up(cfg, quiet=True)
    try:
        return _main(a, cfg)
    finally:
        if a.up:
            Management.down(cfg, quiet=True)


def _main(a: argparse.Namespace, cfg: Config) -> int:
    base = None
    if not a.no_baseline:
        print(f"baseline: {a.jobs} jobs at {a.rate:g}/s, no faults", flush=True)
        res = run_load(cfg, a.jobs, a.rate, a.seed, a.drain, True)
        _save(a.out, "baseline", res, cfg, {"jobs": a.jobs, "rate": a.rate})
        base = summary(res)
    print(f"chaos: {a.jobs} jobs at {a.rate:g}/s, {a.kills} SIGKILLs per process, MongoDB frozen {a.freeze:g} s",
          flush=True)
    res, faults = chaos_run(cfg, a.jobs, a.rate, a.kills, a.freeze, a.seed, a.drain, True,
                            log=lambda m: print(m, flush=True))
    _save(a.out, "chaos", res, cfg, {"jobs": a.jobs, "rate": a.rate, "kills": a.kills, "freeze": a.freeze,
                                     "seed": a.seed})
    ch = summary(res)
    for r in res.records:
        if r.state != "COMPLETED":
            print(f"not completed: job {r.seq} {r.job_id} {r.state or r.error}: {r.reason or r.message}")
    (a.out / "faults.json").write_text(json.dumps([asdict(f) for f in faults], indent=1))
    print(table(base, ch, faults))
    return 0


if __name__ == "__main__":
    sys.exit(main())
