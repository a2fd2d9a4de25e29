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

from StressClient import generators, report
from StressClient.client import FrontEnd
from StressClient.runner import Arrival, Progress, Runner, RunOptions
from StressClient.templates import Template, TemplateError
from StressClient.trace import TraceError, load_trace

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
    sp.add_argument("trace", metavar="TRACE", help="CSV or JSON trace file")
    sp.add_argument("--speed", type=positive, default=1.0, help="time compression factor (default 1)")

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
        try:
            entries = load_trace(args.trace, template, args.speed, args.evms)
        except TraceError as exc:
            p.error(f"argument TRACE: {exc}")
        if args.duration is not None:
            entries = [e for e in entries if e.offset < args.duration]
        if args.count is not None:
            entries = entries[: args.count]
        arrivals = [Arrival(i, e.offset, e.template) for i, e in enumerate(entries)]
        params: dict[str, Any] = {"trace": str(args.trace), "speed": args.speed}
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
    opts = RunOptions(seed=args.seed, concurrency=args.concurrency, max_backlog=args.max_backlog,
                      drain_seconds=args.drain, cancel_at_end=not args.keep, poll_interval=args.poll_interval,
                      sample_interval=args.sample_interval, http_timeout=args.http_timeout,
                      evm_hold=args.evm_hold, retry_refused_seconds=args.retry_refused)
    show = not args.no_progress and sys.stderr.isatty()
    bar = LiveBar(len(arrivals), show)
    runner = Runner(fe, arrivals, opts, bar.update)
    config = {"mode": args.mode, "params": params, "seed": args.seed, "duration": args.duration,
              "count": args.count, "templates": names, "url": url, "concurrency": args.concurrency,
              "max_backlog": args.max_backlog, "evms": args.evms, "evm_hold": args.evm_hold, "argv": sys.argv[1:],
              "host": socket.gethostname(),
              "planned_arrivals": len(arrivals), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with bar.progress:
        result = runner.run()
    data = report.build(config, result.records, result.samples, result.started_at, result.arrivals_done_at,
                        result.ended_at, window, result.interrupted, result.notes)
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
