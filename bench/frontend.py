#!/usr/bin/env python3
"""FrontEnd acceptance benchmark: how many valid jobs per second POST /api/v1/jobs validates and stores.

Method (so that thousands of accepted jobs never start thousands of containers): the benchmark brings
up its own private deployment (own run dir, ports, cluster id, embedded MongoDB), then stops *that
deployment's* JobManager. Every job is still fully handled by the FrontEnd — JSON schema and meaning
checked, checked against the registered cluster, inserted into MongoDB, a hint sent to the JobManager
(whose ZeroMQ queue just fills) — and answered 201, but none is placed. The FrontEnd runs as in
production: gunicorn, gthread workers (``[frontend] workers/threads`` of the config). At the end the
whole deployment is brought down and its run dir removed.

Phases, each measured in this same run and each on a fresh deployment (empty database):
  1. baseline: GET /api/v1/health (same server, same MongoDB round trip, no validation, no insert),
     closed loop with C connections;
  2. closed loop POST /api/v1/jobs with C connections: the most the FrontEnd accepts per second;
  3. open loop POST /api/v1/jobs at fixed offered rates: achieved accepted/s and latency from the
     scheduled arrival (so a slow server is not hidden by the client waiting for it);
  4. growth: closed-loop POST in 5 s slices on one deployment until --growth-jobs are stored, to
     show how acceptance changes as the database fills.

    .venv/bin/python bench/frontend.py [--seconds 10] [--connections 16] [--rates 100,250,500]

The client shares the machine's cores with the server; the client's own CPU time is printed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import Management  # noqa: E402
from Common.config import Config  # noqa: E402
from Common.config import load as load_config  # noqa: E402
from StressClient.__main__ import positive, positive_int  # noqa: E402

BENCH_ENV = {
    "RSWARM_RUN_DIR": str(Path(tempfile.gettempdir()) / "rsw-bench-frontend"),
    "RSWARM_FRONTEND_PORT": "16101",
    "RSWARM_GLOBALMANAGER_PORT": "16100",
    "RSWARM_GLOBALMANAGER_PUB_PORT": "16157",
    "RSWARM_JOBMANAGER_HINT_PORT": "16155",
    "RSWARM_DISCOVERY_PORT": "16156",
    "RSWARM_MONGO_EMBEDDED_PORT": "28201",
    "RSWARM_CLUSTER_ID": "rswbenchfe",
    "RSWARM_GLOBALMANAGER_NETWORK_POOL": "10.231.0.0/16",
}

JOB = {"job_name": "fe-bench", "job_info": {"tasks": {"t0": {"image": "rswarm/task:1", "command": ["sleep", "1"],
                                                              "req_cores": 1, "mem_limit": "64m"}}}}


class Conn:
    """One keep-alive HTTP/1.1 connection (reconnects on error)."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port = host, port
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.c = http.client.HTTPConnection(host, port, timeout=30)

    def request(self, method: str, path: str, body: bytes | None = None) -> int:
        try:
            self.c.request(method, path, body=body, headers=self.headers)
            r = self.c.getresponse()
            r.read()
            return r.status
        except (OSError, http.client.HTTPException):
            self.c.close()
            self.c = http.client.HTTPConnection(self.host, self.port, timeout=30)
            return 0


def closed_loop(host: str, port: int, token: str, method: str, path: str, body: bytes | None, conns: int,
                seconds: float) -> dict[str, Any]:
    lat: list[list[float]] = [[] for _ in range(conns)]
    status: list[dict[int, int]] = [{} for _ in range(conns)]
    start = time.monotonic()
    end = start + seconds

    def loop(i: int) -> None:
        c = Conn(host, port, token)
        while True:
            t = time.monotonic()
            if t >= end:
                return
            code = c.request(method, path, body)
            lat[i].append(time.monotonic() - t)
            status[i][code] = status[i].get(code, 0) + 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    all_lat = np.array([x for xs in lat for x in xs])
    codes: dict[int, int] = {}
    for s in status:
        for k, v in s.items():
            codes[k] = codes.get(k, 0) + v
    return {"requests": int(all_lat.size), "per_s": all_lat.size / elapsed, "codes": codes,
            "ok_per_s": sum(v for k, v in codes.items() if 200 <= k < 300) / elapsed, **_pct(all_lat)}


def open_loop(host: str, port: int, token: str, body: bytes, rate: float, seconds: float, conns: int,
              ) -> dict[str, Any]:
    """Arrivals at exactly k/rate; latency measured from the scheduled arrival (no coordinated omission)."""
    n = int(rate * seconds)
    q: queue.Queue[float | None] = queue.Queue()
    lat: list[float] = []
    service: list[float] = []
    codes: dict[int, int] = {}
    lock = threading.Lock()
    t0 = time.monotonic() + 0.2

    def sender() -> None:
        c = Conn(host, port, token)
        while True:
            due = q.get()
            if due is None:
                return
            sent = time.monotonic()
            code = c.request("POST", "/api/v1/jobs", body)
            done = time.monotonic()
            with lock:
                lat.append(done - due)
                service.append(done - sent)
                codes[code] = codes.get(code, 0) + 1

    threads = [threading.Thread(target=sender) for _ in range(conns)]
    for t in threads:
        t.start()
    for k in range(n):
        due = t0 + k / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        q.put(due)
    for _ in threads:
        q.put(None)
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    accepted = codes.get(201, 0)
    return {"offered_per_s": rate, "requests": n, "accepted": accepted, "accepted_per_s": accepted / elapsed,
            "codes": codes, **_pct(np.array(lat)), "service": _pct(np.array(service))}


def _pct(a: np.ndarray) -> dict[str, float]:
    if a.size == 0:
        return {"p50_ms": float("nan"), "p90_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    return {"p50_ms": 1000 * float(np.percentile(a, 50)), "p90_ms": 1000 * float(np.percentile(a, 90)),
            "p99_ms": 1000 * float(np.percentile(a, 99)), "max_ms": 1000 * float(a.max())}


def rate_list(text: str) -> list[float]:
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not rates or any(r <= 0 for r in rates):
        raise argparse.ArgumentTypeError(f"rates must be > 0, got {text!r}")
    return rates


def bring_up() -> Config:
    os.environ.update(BENCH_ENV)
    cfg = load_config()
    Management.down(cfg, quiet=True)
    shutil.rmtree(cfg.run_path, ignore_errors=True)
    Management.up(cfg, quiet=True)
    Management.Processes(cfg).stop("jobmanager")  # ours only: accepted jobs stay QUEUED
    return cfg


def growth(seconds_per_slice: float, max_jobs: int, max_seconds: float, conns: int) -> list[dict[str, Any]]:
    """Closed-loop POST slices on one deployment while the number of stored jobs grows."""
    cfg = bring_up()
    host, port, token = cfg.frontend.host, cfg.frontend.port, cfg.token()
    body = json.dumps(JOB).encode()
    stored, out = 0, []
    deadline = time.monotonic() + max_seconds
    while stored < max_jobs and time.monotonic() < deadline:
        r = closed_loop(host, port, token, "POST", "/api/v1/jobs", body, conns, seconds_per_slice)
        stored += r["codes"].get(201, 0)
        out.append({"stored_after": stored, **r})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=positive, default=10.0, help="per phase (default 10)")
    p.add_argument("--connections", type=positive_int, default=16, help="client connections (default 16)")
    p.add_argument("--rates", type=rate_list, default=[100.0, 250.0, 500.0],
                   help="open-loop offered rates, jobs/s (default 100,250,500)")
    p.add_argument("--growth-jobs", type=positive_int, default=10_000,
                   help="growth phase: keep posting until this many jobs are stored (default 10000)")
    p.add_argument("--growth-seconds", type=positive, default=240.0, help="growth phase time limit (default 240)")
    p.add_argument("--out", help="write the figures as JSON here")
    args = p.parse_args(argv)

    body = json.dumps(JOB).encode()
    cpu0 = time.process_time()
    cfg: Config | None = None
    try:
        # Each phase on a fresh deployment (empty database), so one phase's stored jobs do not slow the next.
        cfg = bring_up()
        host, port, token = cfg.frontend.host, cfg.frontend.port, cfg.token()
        Conn(host, port, token).request("GET", "/api/v1/health")  # warm-up
        base = closed_loop(host, port, token, "GET", "/api/v1/health", None, args.connections, args.seconds)
        cfg = bring_up()
        token = cfg.token()  # a fresh deployment has a fresh token
        closed_loop(host, port, token, "POST", "/api/v1/jobs", body, args.connections, 1.0)  # warm-up
        post = closed_loop(host, port, token, "POST", "/api/v1/jobs", body, args.connections, args.seconds)
        opens = []
        for rate in args.rates:
            cfg = bring_up()
            token = cfg.token()
            opens.append(open_loop(host, port, token, body, rate, args.seconds, max(args.connections, 32)))
        grow = growth(5.0, args.growth_jobs, args.growth_seconds, args.connections)
        client_cpu = time.process_time() - cpu0
    finally:
        if cfg is not None:
            Management.down(cfg, quiet=True)
            shutil.rmtree(cfg.run_path, ignore_errors=True)

    print(f"FrontEnd under gunicorn gthread: {cfg.frontend.workers} workers x {cfg.frontend.threads} threads; "
          f"embedded MongoDB (SecantusDB); {os.cpu_count()} cores shared with the client; JobManager stopped "
          "(jobs stored, never placed); each phase on a fresh deployment")
    print(f"{'phase':<34}{'req/s':>9}{'ok/s':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}  codes")
    for name, r in ((f"baseline GET /health, {args.connections} conns", base),
                    (f"POST /jobs closed loop, {args.connections} conns", post)):
        print(f"{name:<34}{r['per_s']:>9.1f}{r['ok_per_s']:>9.1f}{r['p50_ms']:>9.1f}{r['p90_ms']:>9.1f}"
              f"{r['p99_ms']:>9.1f}{r['max_ms']:>9.1f}  {r['codes']}")
    for r in opens:
        name = f"POST /jobs open loop @ {r['offered_per_s']:g}/s"
        print(f"{name:<34}{r['offered_per_s']:>9.1f}{r['accepted_per_s']:>9.1f}{r['p50_ms']:>9.1f}"
              f"{r['p90_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['max_ms']:>9.1f}  {r['codes']} "
              f"(service p50 {r['service']['p50_ms']:.1f} / p99 {r['service']['p99_ms']:.1f} ms)")
    print("(open loop: latency from the scheduled arrival; 'service' from the moment the request was sent)")
    print(f"ratio POST/baseline: throughput {post['ok_per_s'] / base['ok_per_s']:.3f}, "
          f"p50 latency {post['p50_ms'] / base['p50_ms']:.2f}x, p99 latency {post['p99_ms'] / base['p99_ms']:.2f}x")
    print(f"growth: closed loop POST in 5 s slices on one deployment, {args.connections} conns")
    print(f"{'jobs stored':>12}{'ok/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'vs 1st slice':>14}")
    for g in grow:
        print(f"{g['stored_after']:>12}{g['ok_per_s']:>9.1f}{g['p50_ms']:>9.1f}{g['p99_ms']:>9.1f}"
              f"{g['ok_per_s'] / grow[0]['ok_per_s']:>14.2f}")
    print(f"client CPU time {client_cpu:.1f} s over the run")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"baseline_health": base, "post_closed": post, "post_open": opens,
                                              "growth": grow, "client_cpu_s": client_cpu,
                                              "connections": args.connections, "seconds": args.seconds}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
