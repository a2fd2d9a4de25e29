"""``python -m StressClient compare --strategies A,B,... --out DIR MODE [mode arguments]``.

The same workload (the same arrivals: same seed, or the same trace window) once per placement strategy,
each on a drained system: before each run the StressClient waits until no job is waiting or running and
every worker's cores are free, then switches the strategy (``PUT /api/v1/scheduler``). Each run writes
its usual report into ``DIR/<strategy>/``; the comparison goes to ``DIR/compare.json`` (one object per
strategy), ``DIR/summary.txt`` (the table a person reads first), ``DIR/compare.html`` and PNGs: waiting
time CDFs, utilisation over time and fragmentation over time, overlaid per strategy.

Definitions (all from the system's own timestamps and the worker samples; ``metrics`` is pure):

* waiting time: accepted (the job stored) → scheduled (its placement committed), per scheduled job;
* makespan: first job accepted → last job that ended by itself (COMPLETED or FAILED; a job the client
  cancelled at the end of its drain time does not stretch it: raise ``--drain`` to let every job end);
* utilisation: at each sample instant, claimed cores / cores of the live workers; mean and p99 over the
  instants between the first acceptance and the last finish;
* fragmentation at each instant: the largest free block (longest run of consecutive free core ids on
  any one node: the biggest 1-node task that still fits) and the nodes with stranded cores (free cores
  but less free memory than the workload's smallest task asks for, so those cores cannot be used), with
  the stranded cores counted.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from StressClient import report
from StressClient.client import FrontEnd
from StressClient.records import JobRecord, Sample
from StressClient.runner import Arrival, Runner, RunOptions

FORMAT = "rswarm-compare/1"
FIELDS = ("strategy", "submitted", "refused", "completed", "failed", "cancelled", "waiting_p50", "waiting_p90",
          "waiting_p99", "makespan", "utilization_mean", "utilization_p99", "largest_free_block_mean",
          "stranded_cores_mean")
ACTIVE = ("QUEUED", "SCHEDULED", "RUNNING")


class CompareError(Exception):
    pass


# ---- the numbers ----------------------------------------------------------------------------------------
def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else None


def instants(samples: list[Sample]) -> dict[float, list[Sample]]:
    """Samples grouped by the sampler pass that took them (one GET /workers: one instant)."""
    out: dict[float, list[Sample]] = defaultdict(list)
    for s in samples:
        out[s.t].append(s)
    return dict(sorted(out.items()))


def metrics(strategy: str, records: list[JobRecord], samples: list[Sample], min_task_mem: int) -> dict[str, Any]:
    accepted = [r for r in records if r.accepted]
    waits = [r.scheduled_at - r.accepted_at for r in accepted
             if r.scheduled_at is not None and r.accepted_at is not None]
    starts = [r.accepted_at for r in accepted if r.accepted_at is not None]
    ends = [r.finished_at for r in accepted if r.finished_at is not None and r.state in ("COMPLETED", "FAILED")]
    t0, t1 = (min(starts), max(ends)) if starts and ends else (None, None)
    series: dict[str, list[float]] = {"t": [], "utilization": [], "largest_free_block": [], "stranded_nodes": [],
                                      "stranded_cores": []}
    for t, group in instants(samples).items():
        live = [s for s in group if s.state in ("READY", "DRAINING")]
        cores = sum(s.cores for s in live)
        if not cores:
            continue
        stranded = [s for s in live if s.cores - s.used > 0 and s.mem_total - s.mem_used < min_task_mem]
        series["t"].append(t - t0 if t0 is not None else t)
        series["utilization"].append(sum(s.used for s in live) / cores)
        series["largest_free_block"].append(max((max(s.free_block, 0) for s in live), default=0))
        series["stranded_nodes"].append(len(stranded))
        series["stranded_cores"].append(sum(s.cores - s.used for s in stranded))
    inside = [i for i, t in enumerate(series["t"]) if t0 is not None and 0 <= t <= t1 - t0]  # type: ignore[operator]
    util = [series["utilization"][i] for i in inside]

    def mean_of(key: str) -> float | None:
        return float(np.mean([series[key][i] for i in inside])) if inside else None

    return {
        "strategy": strategy,
        "offered": len(records),
        "submitted": len(accepted),
        "refused": sum(1 for r in records if not r.accepted),
        "completed": sum(1 for r in accepted if r.state == "COMPLETED"),
        "failed": sum(1 for r in accepted if r.state == "FAILED"),
        "cancelled": sum(1 for r in accepted if r.state == "CANCELLED"),
        "never_scheduled": sum(1 for r in accepted if r.scheduled_at is None),
        "waiting_n": len(waits),
        "waiting_p50": _pct(waits, 50),
        "waiting_p90": _pct(waits, 90),
        "waiting_p99": _pct(waits, 99),
        "waiting_mean": float(np.mean(waits)) if waits else None,
        "makespan": (t1 - t0) if t0 is not None and t1 is not None else None,
        "utilization_mean": float(np.mean(util)) if util else None,
        "utilization_p99": _pct(util, 99),
        "largest_free_block_mean": mean_of("largest_free_block"),
        "stranded_cores_mean": mean_of("stranded_cores"),
        "stranded_nodes_max": max((series["stranded_nodes"][i] for i in inside), default=0),
        "waits": sorted(waits),
        "series": series,
        "workers": len({s.worker for s in samples}),
        "hollow_workers": len({s.worker for s in samples if s.hollow}),
    }


# ---- the system between runs ----------------------------------------------------------------------------
def _active_jobs(fe: FrontEnd) -> int:
    return sum(1 for state in ACTIVE for _ in fe.jobs_in_state(state, max_pages=2))


def _busy_workers(fe: FrontEnd) -> int:
    r = fe.workers()
    if r.status != 200 or not isinstance(r.body, dict):
        raise CompareError(f"GET /workers answered {r.status}: {r.message}")
    return sum(1 for w in r.body.get("items", []) if w.get("state") in ("READY", "DRAINING")
               and w.get("free_core_count") != w.get("capacity_cores"))


def wait_drained(fe: FrontEnd, seconds: float) -> None:
    """Until no job waits or runs and every live worker's cores are free; CompareError after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        jobs, busy = _active_jobs(fe), _busy_workers(fe)
        if jobs == 0 and busy == 0:
            return
        if time.monotonic() >= deadline:
            raise CompareError(f"the system is not drained after {seconds:g} s: {jobs} jobs waiting or running, "
                               f"{busy} workers holding claims (finish or cancel them, or raise --settle)")
        time.sleep(0.5)


def set_strategy(fe: FrontEnd, name: str) -> None:
    r = fe._call("PUT", "/scheduler", json={"strategy": name})
    if r.status != 200 or not isinstance(r.body, dict) or r.body.get("strategy") != name:
        raise CompareError(f"PUT /scheduler {name!r} answered {r.status}: {r.message}")


def strategies_known(fe: FrontEnd) -> tuple[str, list[str]]:
    r = fe._call("GET", "/scheduler")
    if r.status != 200 or not isinstance(r.body, dict):
        raise CompareError(f"GET /scheduler answered {r.status}: {r.message}")
    return str(r.body.get("strategy")), [s["name"] for s in r.body.get("strategies", [])]


# ---- the run --------------------------------------------------------------------------------------------
def run(fe: FrontEnd, strategies: list[str], arrivals: list[Arrival], opts: RunOptions, out: Path,
        config: dict[str, Any], window: float, settle: float, plots: bool, notes: list[str],
        say=lambda m: print(m, file=sys.stderr, flush=True)) -> dict[str, Any]:
    bodies = [a.template.render(a.seq, opts.seed) for a in arrivals]
    min_mem = min(_mem(t.get("mem_limit")) for b in bodies for t in b["job_info"]["tasks"].values())
    before, _ = strategies_known(fe)
    results = []
    try:
        for name in strategies:
            say(f"compare: {name}: waiting for a drained system")
            wait_drained(fe, settle)
            set_strategy(fe, name)
            say(f"compare: {name}: {len(arrivals)} arrivals")
            result = Runner(fe, arrivals, opts).run()
            cfg = {**config, "strategy": name}
            data = report.build(cfg, result.records, result.samples, result.started_at, result.arrivals_done_at,
                                result.ended_at, window, result.interrupted, notes + result.notes)
            report.write_all(out / name, data, plots=plots)
            m = metrics(name, result.records, result.samples, min_mem)
            m["interrupted"] = result.interrupted
            m["notes"] = result.notes
            results.append(m)
            if result.interrupted:
                break
        wait_drained(fe, settle)
    finally:
        try:
            set_strategy(fe, before)
        except CompareError as exc:
            say(f"compare: could not restore strategy {before}: {exc}")
    doc = {"format": FORMAT, "config": config, "min_task_memory": min_mem, "strategies": results}
    write(out, doc, plots)
    return doc


def _mem(text: Any) -> int:
    from StressClient.templates import parse_memory

    return parse_memory(text or "128m", "mem_limit")


# ---- files ----------------------------------------------------------------------------------------------
def _f(v: Any, pct: bool = False) -> str:
    if v is None:
        return "-"
    if pct:
        return f"{100 * v:.1f}%"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def table_rows(doc: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    head = ["strategy", "submitted", "refused", "completed", "failed", "cancelled", "wait p50 s", "wait p90 s",
            "wait p99 s", "makespan s", "util mean", "util p99", "free block", "stranded cores"]
    rows = [[m["strategy"], _f(m["submitted"]), _f(m["refused"]), _f(m["completed"]), _f(m["failed"]),
             _f(m["cancelled"]), _f(m["waiting_p50"]), _f(m["waiting_p90"]), _f(m["waiting_p99"]),
             _f(m["makespan"]), _f(m["utilization_mean"], True), _f(m["utilization_p99"], True),
             _f(m["largest_free_block_mean"]), _f(m["stranded_cores_mean"])] for m in doc["strategies"]]
    return head, rows


def summary_text(doc: dict[str, Any]) -> str:
    head, rows = table_rows(doc)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    ms = doc["strategies"]
    hollow = max((m["hollow_workers"] for m in ms), default=0)
    workers = max((m["workers"] for m in ms), default=0)
    cfg = doc["config"]
    top = [f"compare {cfg.get('mode')} {cfg.get('params', {})} seed={cfg.get('seed')}: "
           f"{len(ms)} strategies on {workers} workers" + (f" ({hollow} HOLLOW: emulated, no containers)"
                                                         if hollow else ""),
           "waiting = accepted -> scheduled; makespan = first accepted -> last completed or failed; "
           "util = claimed cores / live cores; free block = largest run of free cores on one node (mean); "
           "stranded = free cores on "
           f"nodes with less than {doc['min_task_memory'] // 2**20} MiB free (mean)", ""]
    best = [m for m in ms if m["waiting_p99"] is not None]
    tail = []
    if best:
        b = min(best, key=lambda m: m["waiting_p99"])
        tail.append(f"lowest p99 waiting time: {b['strategy']} ({b['waiting_p99']:.3f} s)")
    done = [m for m in ms if m["makespan"] is not None]
    if done:
        b = min(done, key=lambda m: m["makespan"])
        tail.append(f"shortest makespan: {b['strategy']} ({b['makespan']:.3f} s)")
    return "\n".join(top + lines + [""] + tail) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_waiting_cdf(doc: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 6))
    for m in doc["strategies"]:
        v = np.asarray(m["waits"], dtype=float)
        if v.size:
            ax.step(v, np.arange(1, v.size + 1) / v.size, where="post",
                    label=f"{m['strategy']} (p50 {_f(m['waiting_p50'])} s, p99 {_f(m['waiting_p99'])} s)")
    for q in (0.5, 0.9, 0.99):
        ax.axhline(q, color="grey", lw=0.6, ls=":")
    ax.set_xlabel("waiting time: accepted -> scheduled (s)")
    ax.set_ylabel("fraction of jobs at or below")
    ax.set_ylim(0, 1.01)
    ax.set_title("Waiting time CDF per strategy")
    if ax.has_data():
        ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_series(doc: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    for m in doc["strategies"]:
        s = m["series"]
        axes[0].step(s["t"], [100 * u for u in s["utilization"]], where="post", label=m["strategy"])
        axes[1].step(s["t"], s["largest_free_block"], where="post", label=m["strategy"])
        axes[2].step(s["t"], s["stranded_cores"], where="post", label=m["strategy"])
    axes[0].set_ylabel("cores claimed (%)")
    axes[0].set_title("Utilisation and fragmentation over time, per strategy (t = 0: first job accepted)")
    axes[1].set_ylabel("largest free block (cores)")
    axes[2].set_ylabel("stranded cores")
    axes[2].set_xlabel("time since the first job was accepted (s)")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


PLOTS = {"waiting_cdf.png": plot_waiting_cdf, "utilisation_fragmentation.png": plot_series}


def write_html(out: Path, doc: dict[str, Any], plots: bool) -> None:
    head, rows = table_rows(doc)
    esc = html.escape
    table = "<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table>"
    imgs = "".join(f'<p><img src="{esc(n)}" alt="{esc(n)}"></p>' for n in PLOTS) if plots else ""
    links = "".join(f'<li><a href="{esc(m["strategy"])}/summary.txt">{esc(m["strategy"])}</a></li>'
                    for m in doc["strategies"])
    text = summary_text(doc).split("\n")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>Strategies compared</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#eee}"
            f"td:first-child{{text-align:left}}</style></head><body><h1>Strategies compared</h1>"
            f"<p>{esc(text[0])}</p><p><small>{esc(text[1])}</small></p>{table}"
            f"<p>{'<br>'.join(esc(t) for t in text[len(rows) + 5:] if t)}</p>{imgs}"
            f"<h2>Each run</h2><ul>{links}</ul><p><a href='compare.json'>compare.json</a></p></body></html>")
    (out / "compare.html").write_text(page)


def write(out: Path, doc: dict[str, Any], plots: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(doc, indent=1, default=_json_default))
    (out / "summary.txt").write_text(summary_text(doc))
    files = [out / "compare.json", out / "summary.txt"]
    if plots:
        for name, fn in PLOTS.items():
            fn(doc, out / name)
            files.append(out / name)
    write_html(out, doc, plots)
    return [*files, out / "compare.html"]


def _json_default(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    raise TypeError(f"not JSON: {type(v)}")


def parse_strategies(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one strategy, e.g. first-fit,best-fit")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"a strategy is named twice in {text!r}")
    return names
