"""Results on disk and for people: results.json, jobs.csv, a summary table and PNG plots.

``write_all(dir, results)`` writes everything; ``python -m StressClient report DIR`` reads
``DIR/results.json`` back and regenerates the rest (summary recomputed from the raw records).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from StressClient import measure
from StressClient.records import JobRecord, Sample

FORMAT = "rswarm-stress/1"
CSV_FIELDS = ("seq", "offset", "template", "tasks", "cores", "job_id", "status", "error", "state", "submit_at",
              "sent_at", "response_at", "accepted_at", "scheduled_at", "running_at", "finished_at",
              "submit_to_accepted", "accepted_to_scheduled", "scheduled_to_running", "submit_to_running",
              "submit_to_completed", "nodes", "reason", "evms_requested", "evms_ready", "evms_errors",
              "evms_ready_at", "submit_to_evms_ready")
PLOTS = ("arrivals.png", "latency_cdf.png", "latency_timeline.png", "utilisation.png")


class ResultsError(ValueError):
    pass


def build(config: dict[str, Any], records: list[JobRecord], samples: list[Sample], started_at: float,
          arrivals_done_at: float, ended_at: float, window: float, interrupted: bool = False,
          notes: list[str] | None = None) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "config": config,
        "started_at": started_at,
        "arrivals_done_at": arrivals_done_at,
        "ended_at": ended_at,
        "window_s": window,
        "interrupted": interrupted,
        "notes": notes or [],
        "summary": measure.summarise(records, samples, started_at, window),
        "jobs": [r.to_dict() for r in records],
        "samples": [s.to_dict() for s in samples],
    }


def load(out_dir: str | Path) -> dict[str, Any]:
    path = Path(out_dir) / "results.json"
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ResultsError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ResultsError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ResultsError(f"{path}: not a StressClient results file (format {FORMAT})")
    return data


def records_of(data: dict[str, Any]) -> list[JobRecord]:
    return [JobRecord.from_dict(d) for d in data["jobs"]]


def samples_of(data: dict[str, Any]) -> list[Sample]:
    return [Sample(**d) for d in data["samples"]]


def resummarise(data: dict[str, Any]) -> dict[str, Any]:
    data["summary"] = measure.summarise(records_of(data), samples_of(data), data["started_at"], data["window_s"])
    return data


# ---- files --------------------------------------------------------------------------------------------
def write_json(out: Path, data: dict[str, Any]) -> None:
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False))
    tmp.replace(out / "results.json")


def write_csv(out: Path, data: dict[str, Any]) -> None:
    stages = {s.key: s for s in measure.STAGES}
    with open(out / "jobs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_FIELDS)
        for r in records_of(data):
            row = r.to_dict()
            for key in ("submit_to_accepted", "accepted_to_scheduled", "scheduled_to_running", "submit_to_running",
                        "submit_to_completed"):
                v = stages[key].value(r)
                row[key] = None if v is None else round(v, 6)
            row["nodes"] = " ".join(r.nodes)
            ready = None if r.evms_ready_at is None else r.evms_ready_at - r.submit_at
            row["submit_to_evms_ready"] = None if ready is None else round(ready, 6)
            w.writerow(["" if row.get(k) is None else row[k] for k in CSV_FIELDS])


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def summary_lines(data: dict[str, Any]) -> list[str]:
    s = data["summary"]
    cfg = data["config"]
    rt = s["rates"]
    lines = [f"StressClient {cfg.get('mode')} {cfg.get('params', {})} seed={cfg.get('seed')} "
             f"template={', '.join(cfg.get('templates', []))} url={cfg.get('url')}"]
    lines.append(f"{'stage (seconds)':<26}{'n':>7}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}")
    for st in s["stages"].values():
        cells = "".join(f"{_fmt(st[k]):>9}" for k in ("p50", "p90", "p99", "max"))
        lines.append(f"{st['label']:<26}{st['n']:>7}{cells}")
    ratio = rt["achieved_jobs_per_s"] / rt["offered_jobs_per_s"] if rt["offered_jobs_per_s"] else 0.0
    lines.append(f"offered {rt['offered_jobs_per_s']:.3f} jobs/s ({rt['arrivals']} arrivals in "
                 f"{rt['window_s']:.1f} s); "
                 f"achieved {rt['achieved_jobs_per_s']:.3f} jobs/s accepted ({rt['accepted']}, ratio {ratio:.3f})")
    lines.append(f"completed {rt['completed']} ({rt['completed_jobs_per_s']:.3f} jobs/s); task starts "
                 f"{rt['tasks_started']} ({rt['task_starts_per_s']:.3f}/s, offered {rt['offered_tasks_per_s']:.3f}/s)")
    trend = s.get("latency_trend_s_per_s")
    if trend is not None:
        lines.append(f"submit → all running trend over the 2nd half: {trend:+.4f} s per s of run "
                     "(≈0: keeps up; >0: a queue grows)")
    out = s["outcomes"]
    lines.append("final states: " + (", ".join(f"{k} {v}" for k, v in out["final_states"].items()) or "none"))
    for reason, n in out["rejected_by_reason"].items():
        ex = out["rejection_examples"].get(reason)
        lines.append(f"rejected {n}: {reason}" + (f" — e.g. {ex}" if ex else ""))
    for reason, n in out["not_completed_by_reason"].items():
        lines.append(f"not completed {n}: {reason}")
    ev = s.get("evms")
    if ev:
        lines.append(f"EVMs: {ev['requested']} requested in {ev['jobs']} jobs, {ev['ready']} READY, {ev['errors']} "
                     f"ERROR; all ready in {ev['jobs_all_ready']} jobs; {ev['released']} jobs deleted by the "
                     "client after their hold")
        for key, label in (("submit_to_all_ready", "submit → all EVMs ready (s)"),
                           ("running_to_all_ready", "all running → all EVMs ready (s)"),
                           ("create_ms", "EVM creation, per EVM (ms)")):
            st = ev[key]
            lines.append(f"  {label:<34} n {st['n']}  p50 {_fmt(st['p50'])}  p99 {_fmt(st['p99'])}  "
                         f"max {_fmt(st['max'])}")
    ws = s.get("workers") or {}
    if ws.get("hollow"):
        lines.append(f"workers: {ws['total']}, of which {ws['hollow']} HOLLOW (emulated nodes: no container ran "
                     "on them; their tasks' lives were played through the real control plane)")
    util = s["utilisation"]
    if len(util) <= 20:
        for w, u in util.items():
            tag = " (hollow)" if u.get("hollow") else ""
            lines.append(f"worker {w}{tag}: {u['cores']} cores, mean {100 * u['mean_used_fraction']:.1f}% in use")
    elif util:
        cores = sum(u["cores"] for u in util.values())
        used = sum(u["cores"] * u["mean_used_fraction"] for u in util.values())
        lines.append(f"all {len(util)} workers: {cores} cores, mean {100 * used / cores if cores else 0:.1f}% in use")
    lines.extend(f"note: {n}" for n in data.get("notes", []))
    return lines


def print_summary(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    s = data["summary"]
    console = Console()
    table = Table(title="latency per stage (seconds)", title_justify="left")
    for col in ("stage", "n", "p50", "p90", "p99", "max"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for st in s["stages"].values():
        table.add_row(st["label"], str(st["n"]), *(_fmt(st[k]) for k in ("p50", "p90", "p99", "max")))
    console.print(table)
    for line in summary_lines(data)[2 + len(s["stages"]):]:
        console.print(line, markup=False, highlight=False, soft_wrap=True)


# ---- plots --------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _title(data: dict[str, Any]) -> str:
    cfg = data["config"]
    params = ", ".join(f"{k}={v:g}" if isinstance(v, int | float) else f"{k}={v}"
                       for k, v in (cfg.get("params") or {}).items())
    return f"{cfg.get('mode')} ({params}), template {', '.join(cfg.get('templates', []))}"


def _bin_width(data: dict[str, Any], span: float) -> float:
    """Bins that hold about five arrivals at the offered rate, at least 1 s, at most 300 bins a run."""
    rate = data["summary"]["rates"].get("offered_jobs_per_s") or 1.0
    return float(max(1.0, math.ceil(5.0 / rate), math.ceil(span / 300)))


def plot_arrivals(data: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    records = records_of(data)
    end = max([data["ended_at"]] + [r.finished_at for r in records if r.finished_at])
    step = _bin_width(data, end - data["started_at"])
    tl = measure.timeline(records, data["started_at"], end, step)
    left = [t - step for t in tl["t"]]
    edges = [*left, tl["t"][-1]]

    def rate(key: str) -> list[float]:
        v = [x / step for x in tl[key]]
        return [*v, v[-1]]

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 7), sharex=True, height_ratios=[3, 2])
    ax1.fill_between(edges, rate("arrivals"), step="post", color="tab:blue", alpha=0.25, label="arrivals (offered)")
    ax1.step(edges, rate("accepted"), where="post", color="tab:green", lw=1.5, label="accepted (stored)")
    ax1.step(edges, rate("completed"), where="post", color="tab:purple", lw=1.5, ls="--", label="completed")
    if any(tl["rejected"]):
        ax1.step(edges, rate("rejected"), where="post", color="tab:red", lw=1.5, label="rejected / errors")
    if any(tl["failed"]):
        ax1.step(edges, rate("failed"), where="post", color="tab:orange", lw=1.5, label="failed / cancelled")
    offered = data["summary"]["rates"].get("offered_jobs_per_s")
    if offered:
        ax1.axhline(offered, color="tab:blue", ls=":", lw=1, label=f"mean offered rate ({offered:.3g} jobs/s)")
    ax1.axvline(data["arrivals_done_at"] - data["started_at"], color="grey", ls="-.", lw=1,
                label="submissions over")
    ax1.set_ylabel(f"jobs per second ({step:g} s bins)")
    ax1.set_ylim(bottom=0)
    ax1.set_title(f"Arrivals and completions over time\n{_title(data)}")
    ax1.legend(loc="upper right", fontsize=8)
    ax1.grid(alpha=0.3)
    fine = measure.timeline(records, data["started_at"], end, max(0.25, (end - data["started_at"]) / 1000))
    t = [0.0, *fine["t"]]
    ax2.step(t, [0.0, *fine["waiting"]], where="post", label="waiting for placement (accepted, not scheduled)",
             color="tab:orange")
    ax2.step(t, [0.0, *fine["running"]], where="post", label="running (all tasks started)", color="tab:purple")
    ax2.set_ylabel("jobs")
    ax2.set_xlabel("time since the start of the run (s)")
    ax2.set_ylim(bottom=0)
    ax2.legend(loc="upper right", fontsize=8)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_latency_cdf(data: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    import numpy as np

    values = measure.stage_values(records_of(data))
    labels = {s.key: s.label for s in measure.STAGES}
    fig, ax = plt.subplots(figsize=(10, 6))
    plotted = 0
    for key in measure.CDF_STAGES:
        v = np.sort(np.asarray([x for x in values[key] if x > 0], dtype=float))
        if v.size == 0:
            continue
        y = np.arange(1, v.size + 1) / v.size
        p50, p99 = np.percentile(v, 50), np.percentile(v, 99)
        ax.step(v, y, where="post", label=f"{labels[key]}  (p50 {p50:.3f} s, p99 {p99:.3f} s, n={v.size})")
        plotted += 1
    for q in (0.5, 0.9, 0.99):
        ax.axhline(q, color="grey", lw=0.6, ls=":")
    if plotted:
        ax.set_xscale("log")
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no job reached a measured stage", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("latency (s, log scale)")
    ax.set_ylabel("fraction of jobs at or below")
    ax.set_ylim(0, 1.01)
    ax.set_title(f"Latency CDF per stage\n{_title(data)}")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_latency_timeline(data: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    records = records_of(data)
    t0 = data["started_at"]
    fig, ax = plt.subplots(figsize=(10, 5))
    for key, color in (("submit_to_running", "tab:purple"), ("submit_to_accepted", "tab:green")):
        stage = next(s for s in measure.STAGES if s.key == key)
        pts = [(r.submit_at - t0, stage.value(r)) for r in records]
        pts = [(x, y) for x, y in pts if y is not None]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=8, color=color, label=stage.label, alpha=0.7)
    ax.set_xlabel("scheduled arrival (s since the start of the run)")
    ax.set_ylabel("latency (s)")
    ax.set_title(f"Latency by arrival time (a rising band means a growing queue)\n{_title(data)}")
    if ax.has_data():
        ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_utilisation(data: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    import numpy as np

    util = measure.utilisation(samples_of(data), data["started_at"])
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True, layout="constrained",
                                   height_ratios=[max(1, len(util)), 2])
    if not util:
        ax1.text(0.5, 0.5, "no utilisation samples", ha="center", va="center", transform=ax1.transAxes)
    else:
        names = sorted(util)
        end = max(max(w["t"]) for w in util.values())
        step = max(1.0, math.ceil(end / 400))
        grid = np.arange(0.0, end + step, step)
        rows, total, capacity = [], np.zeros(grid.size), 0
        for n in names:
            w = util[n]
            idx = np.searchsorted(np.asarray(w["t"]), grid, side="right") - 1
            used = np.where(idx >= 0, np.asarray(w["used"], dtype=float)[np.clip(idx, 0, None)], np.nan)
            rows.append(used / w["cores"] if w["cores"] else used * 0)
            total += np.nan_to_num(used)
            capacity += w["cores"]
        xedges = np.append(grid, grid[-1] + step)
        im = ax1.pcolormesh(xedges, np.arange(len(names) + 1), np.vstack(rows), cmap="viridis", vmin=0, vmax=1,
                            shading="flat")
        ax1.set_ylim(len(names), 0)
        if len(names) <= 40:
            ax1.set_yticks(np.arange(len(names)) + 0.5,
                           [f"{n} ({util[n]['cores']} cores{', hollow' if util[n].get('hollow') else ''})"
                            for n in names])
        else:
            hollow = sum(1 for n in names if util[n].get("hollow"))
            ax1.set_yticks([])
            ax1.set_ylabel(f"{len(names)} workers" + (f" ({hollow} hollow)" if hollow else ""))
        fig.colorbar(im, ax=[ax1, ax2], label="cores in use / capacity (heatmap)", pad=0.01, fraction=0.03)
        ax2.step(xedges, np.append(total, total[-1]), where="post", color="tab:blue",
                 label="cores in use (all workers)")
        ax2.axhline(capacity, color="grey", ls="--", lw=1, label=f"capacity ({capacity} cores)")
        ax2.set_ylim(0, capacity * 1.1 + 0.1)
        ax2.legend(loc="upper right", fontsize=8)
    if len(util) <= 40:
        ax1.set_ylabel("worker")
    ax1.set_title(f"Per-worker core utilisation (claimed cores, sampled from /api/v1/workers)\n{_title(data)}")
    ax2.set_ylabel("cores")
    ax2.set_xlabel("time since the start of the run (s)")
    ax2.grid(alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(out: Path, data: dict[str, Any]) -> list[Path]:
    paths = []
    for name, fn in zip(PLOTS, (plot_arrivals, plot_latency_cdf, plot_latency_timeline, plot_utilisation),
                        strict=True):
        fn(data, out / name)
        paths.append(out / name)
    return paths


def write_all(out_dir: str | Path, data: dict[str, Any], plots: bool = True) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out, data)
    write_csv(out, data)
    (out / "summary.txt").write_text("\n".join(summary_lines(data)) + "\n")
    files = [out / "results.json", out / "jobs.csv", out / "summary.txt"]
    if plots:
        files += write_plots(out, data)
    return files
