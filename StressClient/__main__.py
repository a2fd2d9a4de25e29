"""python -m StressClient MODE ...: generate load against a FrontEnd, measure it, report it."""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from StressClient import alibaba, generators, report
from StressClient.client import FrontEnd
from StressClient.runner import Arrival, Progress, Runner, RunOptions
from StressClient.templates import Template, TemplateError
from StressClient.trace import TraceEntry, TraceError, load_trace

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TEMPLATE = REPO_ROOT / "StressClient" / "templates" / "sleep-1x1.json"

DESCRIPTION = """\
Generate load on a RESTfulSwarm FrontEnd with an exact arrival process (open loop: arrivals follow
the schedule whatever the response times), follow every job to its end using the system's own
timestamps, and write DIR/results.json, DIR/jobs.csv, DIR/summary.txt and PNG plots.

modes:
  steady       constant rate: job k is due at k/RATE (exact, no drift)
  bursty       Poisson arrivals at RATE (exponential inter-arrival times), optionally in on/off bursts
  incremental  a ramp: rate SLOPE*t + RATE jobs/s (clipped at 0)
  random       every INTERVAL seconds a new rate drawn uniformly in [LOW, HIGH]
  replay       submit offsets and templates from a CSV or JSON trace
  report       regenerate the summary and plots of an earlier run from DIR/results.json
  compare      the same workload once per placement strategy, side by side
               (python -m StressClient compare --strategies A,B,... --out DIR MODE [mode arguments])

Run `python -m StressClient MODE --help` for a mode's own parameters.
"""

MODE_HELP = {
    "steady": "Constant rate: job k is due at exactly k/RATE seconds (even spacing; --process poisson "
              "draws exponential gaps at the same rate instead).",
    "bursty": "Poisson arrivals: inter-arrival times are exponential with mean 1/RATE. With --off > 0 the "
              "source alternates ON seconds at RATE and OFF seconds at OFF_RATE (default 0: silence).",
    "incremental": "A ramp: the rate at time t is SLOPE*t + RATE jobs/s (SLOPE in jobs/s per second; "
                   "negative ramps down and stops at 0). Arrivals are evenly spaced on the ramp "
                   "(the k-th at the time the integral of the rate reaches k), or Poisson with --process poisson.",
    "random": "Every INTERVAL seconds a new rate is drawn uniformly in [LOW, HIGH] jobs/s (from the seed); "
              "arrivals are evenly spaced at the current rate, or Poisson with --process poisson.",
    "replay": "Replay a trace: a CSV with an 'offset' column (seconds) and an optional 'template' column, "
              "or a JSON list of {\"offset\": s, \"template\": file | \"job\": {...}}. --speed 2 replays "
              "twice as fast. Rows without a template use --template.",
}


# ---- argument types: a bad value names the flag and exits 2 -----------------------------------
def _number(text: str, lo: float | None, lo_open: bool, kind: type = float) -> Any:
    try:
        value = kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise argparse.ArgumentTypeError(f"must be {'>' if lo_open else '>='} {lo:g}, got {text!r}")
    return value


def positive(text: str) -> float:
    return _number(text, 0, True)


def non_negative(text: str) -> float:
    return _number(text, 0, False)


def any_number(text: str) -> float:
    return _number(text, None, False)


def positive_int(text: str) -> int:
    return _number(text, 1, False, int)


def seed_int(text: str) -> int:
    return _number(text, 0, False, int)


def window(text: str) -> tuple[float | None, float | None]:
    """START:END in trace seconds; either side may be empty (open)."""
    start, sep, end = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected START:END (seconds; either may be empty), got {text!r}")
    lo = non_negative(start) if start.strip() else None
    hi = non_negative(end) if end.strip() else None
    if lo is not None and hi is not None and hi <= lo:
        raise argparse.ArgumentTypeError(f"END must be above START, got {text!r}")
    return lo, hi


def memory_size(text: str) -> int:
    from StressClient.templates import parse_memory

    try:
        return parse_memory(text, "size")
    except TemplateError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_replay_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("trace", metavar="TRACE", help="trace file")
    sp.add_argument("--format", choices=("csv", "json", *alibaba.FORMATS), default=None,
                    help="csv or json (our own traces; default: from the file's suffix), alibaba-2017 or "
                         "alibaba-2018 (the Alibaba cluster trace's batch_task table)")
    sp.add_argument("--speed", type=positive, default=1.0,
                    help="time compression factor: offsets (and Alibaba task durations) divided by F (default 1)")
    sp.add_argument("--window", type=window, default=(None, None), metavar="START:END",
                    help="only arrivals with START <= trace time < END (seconds, before --speed); either side "
                         "may be empty; offsets then count from START")
    g = sp.add_argument_group("Alibaba traces (docs/stressclient.md)")
    g.add_argument("--max-instances", type=positive_int, default=4, metavar="N",
                   help="tasks per trace row at most (one per instance; default 4); instances left out are reported")
    g.add_argument("--max-tasks", type=positive_int, default=32, metavar="N",
                   help="tasks per job at most (default 32; the FrontEnd takes 256 at most)")
    g.add_argument("--cpu-scale", type=positive, default=1.0, metavar="F",
                   help="req_cores = max(1, ceil(CPUs requested x F)) (default 1: one trace core, one core)")
    g.add_argument("--machine-memory", type=memory_size, default=8 * 2**30, metavar="SIZE",
                   help="memory of a whole trace machine: normalized memory x SIZE (default 8g)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m StressClient", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("run (every mode)")
    g.add_argument("--duration", type=positive, metavar="S",
                   help="stop scheduling arrivals after S seconds")
    g.add_argument("--count", type=positive_int, metavar="N", help="stop after N arrivals")
    g.add_argument("--template", metavar="FILE",
                   help=f"job template (JSON; default {DEFAULT_TEMPLATE.relative_to(REPO_ROOT)})")
    g.add_argument("--out", metavar="DIR",
                   help="where results and plots go (default bench/results/stress-MODE-TIMESTAMP)")
    g.add_argument("--seed", type=seed_int, default=1,
                   help="seeds every random draw (arrivals, rates, template fields); same seed, same run (default 1)")
    g.add_argument("--concurrency", type=positive_int, default=16, metavar="N",
                   help="at most N submissions in flight; later arrivals wait in a client backlog (default 16)")
    g.add_argument("--max-backlog", type=positive_int, default=10_000, metavar="N",
                   help="drop arrivals (counted as 'client backlog' errors) past N waiting (default 10000)")
    g.add_argument("--drain", type=non_negative, default=300.0, metavar="S",
                   help="after the last arrival, wait up to S seconds for jobs to finish (default 300)")
    g.add_argument("--retry-refused", type=non_negative, default=0.0, metavar="S",
                   help="resend a submission that got no answer or a 503 (FrontEnd or MongoDB away) with the same "
                        "Idempotency-Key, backing off 0.5-4 s, for up to S seconds; refusals are counted apart "
                        "(default 0: no retry)")
    g.add_argument("--keep", action="store_true", help="leave jobs unfinished at the end running (default: cancel)")
    g.add_argument("--evms", action="store_true",
                   help="send the template's 'evms' section as each job's job_info.evms: every task an EPM "
                        "(a job definition used as a template sends its own section regardless)")
    g.add_argument("--evm-hold", type=non_negative, default=1.0, metavar="S",
                   help="an EVM job runs until deleted: the client deletes it S seconds after all its EVMs "
                        "are READY or ERROR (default 1)")
    g.add_argument("--poll-interval", type=positive, default=1.0, metavar="S",
                   help="how often job states are read (does not change measured latencies; default 1)")
    g.add_argument("--sample-interval", type=positive, default=1.0, metavar="S",
                   help="how often worker utilisation is sampled (default 1)")
    g.add_argument("--http-timeout", type=positive, default=30.0, metavar="S", help="per request (default 30)")
    g.add_argument("--url", help="FrontEnd base URL (default: from rswarm.toml / RSWARM_* environment)")
    g.add_argument("--token", help="API token (default: RSWARM_API_TOKEN, else the run directory's token file)")
    g.add_argument("--no-progress", action="store_true", help="no live progress bar")
    g.add_argument("--no-plots", action="store_true", help="write results and summary, skip the PNG plots")
    g.add_argument("--dry-run", action="store_true",
                   help="print the schedule's figures and the first job, submit nothing")

    def process_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--process", choices=generators.PROCESSES, default="even",
                        help="even: exactly the rate, evenly spaced (default); poisson: exponential gaps")

    sub = p.add_subparsers(dest="mode", required=True, metavar="MODE")
    sp = sub.add_parser("steady", parents=[common], help="constant rate", description=MODE_HELP["steady"])
    sp.add_argument("--rate", type=positive, required=True, metavar="A", help="jobs per second")
    process_arg(sp)

    sp = sub.add_parser("bursty", parents=[common], help="Poisson arrivals, optional on/off bursts",
                        description=MODE_HELP["bursty"])
    sp.add_argument("--rate", type=positive, required=True, metavar="LAMBDA", help="jobs per second while on")
    sp.add_argument("--on", type=non_negative, default=0.0, metavar="S", help="length of a burst (s)")
    sp.add_argument("--off", type=non_negative, default=0.0, metavar="S",
                    help="pause between bursts (s); 0 (default) means no bursts")
    sp.add_argument("--off-rate", type=non_negative, default=0.0, metavar="R", help="jobs/s between bursts")

    sp = sub.add_parser("incremental", parents=[common], help="linear ramp a*t + b",
                        description=MODE_HELP["incremental"])
    sp.add_argument("--slope", "-a", type=any_number, required=True, metavar="A",
                    help="rate change, jobs/s per second")
    sp.add_argument("--rate", "-b", type=non_negative, default=0.0, metavar="B", help="rate at t=0 (jobs/s)")
    process_arg(sp)

    sp = sub.add_parser("random", parents=[common], help="piecewise rates drawn uniformly",
                        description=MODE_HELP["random"])
    sp.add_argument("--low", type=non_negative, required=True, metavar="LO", help="lowest rate (jobs/s)")
    sp.add_argument("--high", type=positive, required=True, metavar="HI", help="highest rate (jobs/s)")
    sp.add_argument("--interval", type=positive, default=1.0, metavar="S", help="seconds per drawn rate (default 1)")
    process_arg(sp)

    sp = sub.add_parser("replay", parents=[common], help="replay a CSV/JSON trace", description=MODE_HELP["replay"])
    add_replay_args(sp)

    sp = sub.add_parser("report", help="regenerate summary and plots from DIR/results.json",
                        description="Recompute the summary from DIR/results.json and rewrite jobs.csv, "
                                    "summary.txt and the PNG plots.")
    sp.add_argument("dir", metavar="DIR")
    sp.add_argument("--no-plots", action="store_true")
    return p


# ---- pieces of main ------------------------------------------------------------------------------
def build_arrivals(args: argparse.Namespace, p: argparse.ArgumentParser) -> tuple[list[Arrival], dict[str, Any], float,
                                                                                   list[str]]:
    try:
        template = Template.load(args.template or DEFAULT_TEMPLATE, with_evms=args.evms)
    except TemplateError as exc:
        p.error(f"argument --template: {exc}")
    if args.mode == "replay":
        fmt = args.format or ("json" if str(args.trace).lower().endswith(".json") else "csv")
        lo, hi = args.window
        params: dict[str, Any] = {"trace": str(args.trace), "format": fmt, "speed": args.speed,
                                  "window": [lo, hi]}
        if fmt in alibaba.FORMATS:
            opts = alibaba.Options(speed=args.speed, window=(lo, hi), max_instances=args.max_instances,
                                   max_tasks=args.max_tasks, cpu_scale=args.cpu_scale,
                                   machine_memory=args.machine_memory)
            try:
                jobs, stats = alibaba.load(args.trace, fmt, opts)
            except alibaba.AlibabaError as exc:
                p.error(f"argument TRACE: {exc}")
            entries = [TraceEntry(off, job) for off, job in jobs]  # type: ignore[arg-type]
            params.update(cpu_scale=args.cpu_scale, machine_memory=args.machine_memory)
            args.trace_stats = stats.to_dict()
            args.trace_lines = stats.lines()
            for line in stats.lines():
                print(f"StressClient: {line}", file=sys.stderr)
        else:
            try:
                entries = load_trace(args.trace, template, 1.0, args.evms, fmt)
            except TraceError as exc:
                p.error(f"argument TRACE: {exc}")
            entries = [TraceEntry((e.offset - (lo or 0.0)) / args.speed, e.template) for e in entries
                       if (lo is None or e.offset >= lo) and (hi is None or e.offset < hi)]
            if not entries:
                p.error("argument --window: no arrival of the trace lies in the window")
        if args.duration is not None:
            entries = [e for e in entries if e.offset < args.duration]
        if args.count is not None:
            entries = entries[: args.count]
        arrivals = [Arrival(i, e.offset, e.template) for i, e in enumerate(entries)]
        names = sorted({e.template.source for e in entries})
    else:
        if args.duration is None and args.count is None and not (args.mode == "incremental" and args.slope < 0):
            p.error("give --duration S or --count N: this schedule never ends by itself")
        params = {k: getattr(args, k) for k in {"steady": ("rate",), "bursty": ("rate", "on", "off", "off_rate"),
                                                 "incremental": ("slope", "rate"),
                                                 "random": ("low", "high", "interval")}[args.mode]}
        if args.mode == "random" and args.low > args.high:
            p.error(f"argument --low: must be <= --high, got {args.low:g} > {args.high:g}")
        if args.mode == "bursty" and args.off > 0 and args.on <= 0:
            p.error("argument --on: must be > 0 when --off is given")
        process = getattr(args, "process", None) or generators.default_process(args.mode)
        try:
            offsets = generators.schedule(args.mode, params, args.seed, args.duration, args.count, process)
        except generators.ScheduleError as exc:
            p.error(f"{args.mode}: {exc}")
        params["process"] = process
        arrivals = [Arrival(i, off, template) for i, off in enumerate(offsets)]
        names = [template.source]
    if not arrivals:
        p.error("the schedule holds no arrival: raise the rate or the duration")
    if args.duration is not None:
        window = args.duration
    else:
        n, last = len(arrivals), arrivals[-1].offset
        window = last * n / (n - 1) if n > 1 and last > 0 else 1.0
    return arrivals, params, window, [_short(n) for n in names]


def _short(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return path


def connection(args: argparse.Namespace, p: argparse.ArgumentParser) -> tuple[str, str]:
    url, token = args.url, args.token or os.environ.get("RSWARM_API_TOKEN", "")
    if url is None or not token:
        sys.path.insert(0, str(REPO_ROOT))
        from Common.config import ConfigError
        from Common.config import load as load_config

        try:
            cfg = load_config()
        except ConfigError as exc:
            p.error(f"config error: {exc}")
        url = url or cfg.frontend_url
        token = token or cfg.token()
    if not url.startswith(("http://", "https://")):
        p.error(f"argument --url: expected http://host:port, got {url!r}")
    if not token:
        p.error("argument --token: no API token (give --token, set RSWARM_API_TOKEN or run Management.py up)")
    return url, token


def preflight(fe: FrontEnd) -> str | None:
    """None when the FrontEnd answers and takes the token, else what is wrong."""
    h = fe.health()
    if h.status is None:
        return f"the FrontEnd at {fe.base} does not answer: {h.message}"
    r = fe._call("POST", "/jobs", json={})  # invalid on purpose: 400 with a good token, 401 without
    if r.status == 401:
        return "the FrontEnd refused the API token (401)"
    return None


class LiveBar:
    """A rich progress bar with offered and achieved rates over the last 10 s, errors and job counts."""

    def __init__(self, total: int, enabled: bool) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("[bold]{task.description:<10}"), BarColumn(bar_width=24),
                                 TextColumn("{task.completed}/{task.total} due"), TimeElapsedColumn(),
                                 TextColumn("{task.fields[stats]}"), console=Console(stderr=True),
                                 disable=not enabled, refresh_per_second=4)
        self.task = self.progress.add_task("submitting", total=total, stats="")
        self.window: collections.deque[tuple[float, int, int]] = collections.deque()

    def update(self, p: Progress) -> None:
        now = time.monotonic()
        self.window.append((now, p.due, p.accepted))
        while len(self.window) > 2 and now - self.window[0][0] > 10:
            self.window.popleft()
        t0, due0, acc0 = self.window[0]
        span = now - t0
        offered = (p.due - due0) / span if span > 0 else 0.0
        achieved = (p.accepted - acc0) / span if span > 0 else 0.0
        err = f"[red]errors {p.errors}[/red]" if p.errors else "errors 0"
        stats = (f"offered {offered:.2f}/s achieved {achieved:.2f}/s | accepted {p.accepted} {err} | "
                 f"in system {p.active} | done {p.finished}" + (f" ([red]{p.failed} not completed[/red])"
                                                                if p.failed else ""))
        self.progress.update(self.task, completed=p.due, description=p.phase, stats=stats)


def run_options(args: argparse.Namespace) -> RunOptions:
    return RunOptions(seed=args.seed, concurrency=args.concurrency, max_backlog=args.max_backlog,
                      drain_seconds=args.drain, cancel_at_end=not args.keep, poll_interval=args.poll_interval,
                      sample_interval=args.sample_interval, http_timeout=args.http_timeout,
                      evm_hold=args.evm_hold, retry_refused_seconds=args.retry_refused)


def run_config(args: argparse.Namespace, params: dict[str, Any], names: list[str], url: str,
               planned: int) -> dict[str, Any]:
    return {"mode": args.mode, "params": params, "seed": args.seed, "duration": args.duration,
            "count": args.count, "templates": names, "url": url, "concurrency": args.concurrency,
            "max_backlog": args.max_backlog, "evms": args.evms, "evm_hold": args.evm_hold,
            "argv": sys.argv[1:], "host": socket.gethostname(), "planned_arrivals": planned,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "trace": getattr(args, "trace_stats", None)}


COMPARE_HELP = """Run the same workload once per placement strategy, each on a drained system, and write one report:
DIR/compare.json (one object per strategy), DIR/summary.txt, DIR/compare.html, waiting-time CDFs and
utilisation/fragmentation over time as PNGs, and each run's own report in DIR/<strategy>/.
MODE and its arguments are any StressClient mode's (replay included), e.g.

  python -m StressClient compare --strategies first-fit,best-fit,min-slack --out DIR \
      replay TRACE --format alibaba-2017 --window 0:600 --speed 20
"""


def compare_main(argv: list[str]) -> int:
    from StressClient import compare

    cp = argparse.ArgumentParser(prog="python -m StressClient compare", description=COMPARE_HELP,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    cp.add_argument("--strategies", type=compare.parse_strategies, required=True, metavar="A,B,...",
                    help="placement strategies to compare, in this order (GET /api/v1/scheduler lists them)")
    cp.add_argument("--out", required=True, metavar="DIR", help="where the comparison and each run's report go")
    cp.add_argument("--settle", type=positive, default=300.0, metavar="S",
                    help="wait up to S seconds for the system to drain before each run (default 300)")
    cp.add_argument("mode_args", nargs=argparse.REMAINDER, metavar="MODE ...",
                    help="a StressClient mode and its arguments")
    a = cp.parse_args(argv)
    modes = ("steady", "bursty", "incremental", "random", "replay")
    if not a.mode_args or a.mode_args[0] not in modes:
        cp.error(f"argument MODE: give one of {', '.join(modes)} and its arguments after --strategies and --out")
    p = parser()
    args = p.parse_args(a.mode_args)
    if args.out:
        cp.error("argument --out: give it before MODE (each strategy's run goes to DIR/<strategy>)")
    if args.dry_run:
        cp.error("argument --dry-run: not with compare (run the mode alone to see its schedule)")
    arrivals, params, window, names = build_arrivals(args, p)
    url, token = connection(args, p)
    fe = FrontEnd(url, token, args.http_timeout)
    problem = preflight(fe)
    if problem:
        print(f"StressClient: {problem}", file=sys.stderr)
        return 1
    try:
        _, known = compare.strategies_known(fe)
    except compare.CompareError as exc:
        print(f"StressClient compare: {exc}", file=sys.stderr)
        return 1
    unknown = [s for s in a.strategies if s not in known]
    if unknown:
        cp.error(f"argument --strategies: unknown strategy {unknown[0]!r} (known: {', '.join(known)})")
    config = run_config(args, params, names, url, len(arrivals))
    config["argv"] = ["compare", *argv]
    config["strategies"] = a.strategies
    try:
        doc = compare.run(fe, a.strategies, arrivals, run_options(args), Path(a.out), config, window, a.settle,
                          not args.no_plots, getattr(args, "trace_lines", []))
    except compare.CompareError as exc:
        print(f"StressClient compare: {exc}", file=sys.stderr)
        return 1
    print(compare.summary_text(doc), end="")
    print(f"results: {Path(a.out) / 'compare.json'}, {Path(a.out) / 'compare.html'}")
    return 130 if any(m.get("interrupted") for m in doc["strategies"]) else 0


def run(args: argparse.Namespace, p: argparse.ArgumentParser) -> int:
    arrivals, params, window, names = build_arrivals(args, p)
    out = Path(args.out) if args.out else REPO_ROOT / "bench" / "results" / (
        f"stress-{args.mode}-{time.strftime('%Y%m%d-%H%M%S')}")
    if args.dry_run:
        offs = [a.offset for a in arrivals]
        print(f"{len(arrivals)} arrivals over {window:g} s: offered {len(arrivals) / window:.3f} jobs/s; "
              f"first offsets {[round(o, 4) for o in offs[:5]]}")
        print(json.dumps(arrivals[0].template.render(0, args.seed), indent=2))
        return 0
    url, token = connection(args, p)
    fe = FrontEnd(url, token, args.http_timeout)
    problem = preflight(fe)
    if problem:
        print(f"StressClient: {problem}", file=sys.stderr)
        return 1
    if out.exists() and any(out.iterdir()):
        print(f"StressClient: note: {out} is not empty; its results files are overwritten", file=sys.stderr)
    opts = run_options(args)
    show = not args.no_progress and sys.stderr.isatty()
    bar = LiveBar(len(arrivals), show)
    runner = Runner(fe, arrivals, opts, bar.update)
    config = run_config(args, params, names, url, len(arrivals))
    with bar.progress:
        result = runner.run()
    data = report.build(config, result.records, result.samples, result.started_at, result.arrivals_done_at,
                        result.ended_at, window, result.interrupted, getattr(args, "trace_lines", []) + result.notes)
    files = report.write_all(out, data, plots=not args.no_plots)
    report.print_summary(data)
    print(f"results: {', '.join(str(f) for f in files)}")
    return 130 if result.interrupted else 0


def regenerate(args: argparse.Namespace) -> int:
    try:
        data = report.load(args.dir)
    except report.ResultsError as exc:
        print(f"StressClient report: {exc}", file=sys.stderr)
        return 2
    data = report.resummarise(data)
    files = report.write_all(args.dir, data, plots=not args.no_plots)
    report.print_summary(data)
    print(f"results: {', '.join(str(f) for f in files)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "compare":
        try:
            return compare_main(argv[1:])
        except KeyboardInterrupt:
            print("StressClient: interrupted", file=sys.stderr)
            return 130
    p = parser()
    args = p.parse_args(argv)
    if args.mode == "report":
        return regenerate(args)
    try:
        return run(args, p)
    except KeyboardInterrupt:
        print("StressClient: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
