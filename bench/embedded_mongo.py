"""The embedded SecantusDB server's CPU per command, with its oplog (replica-set advertisement) and without
(``--standalone``, what Management.py starts), measured in the same run.

Each round starts a fresh server on loopback in a temporary data directory, inserts ``--jobs`` job-like
documents (10 tasks each, the shape of ``jobs`` documents), then times ``--ops`` conditional task-state
updates (a ``$set`` of a task's state and time and an ``$inc`` of a counter, like a Worker's report that
Discovery applies) and ``--ops`` finds by id. The server's CPU comes from /proc (utime + stime), so the
client's own work is not counted. Rounds alternate the two modes; the medians are reported.

    .venv/bin/python -m bench.embedded_mongo --rounds 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pymongo import MongoClient

TICK = os.sysconf("SC_CLK_TCK")


def _server_cpu(pid: int) -> float:
    fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _job(j: int) -> dict:
    tasks = {f"t{i}": {"state": "SCHEDULED", "node": "w1", "attempt": 0, "cpuset": str(i), "image": "rswarm/task:1",
                       "command": ["sleep", "3600"], "mem_bytes": 48 * 2**20, "state_times": {"SCHEDULED": 1.0},
                       "reason": None, "container_id": None, "addresses": None, "claim_token": "0" * 32}
             for i in range(10)}
    return {"_id": f"job-{j}", "state": "SCHEDULED", "tasks": tasks, "nodes": ["w1"], "reports": 0}


def one_round(standalone: bool, port: int, jobs: int, ops: int) -> dict[str, float]:
    data = tempfile.mkdtemp(prefix="rswarm-bench-mongo-")
    argv = [str(Path(sys.executable).parent / "secantusd-py"), "--host", "127.0.0.1", "--port", str(port),
            "--storage-path", data, "--log-level", "WARNING"] + (["--standalone"] if standalone else [])
    server = subprocess.Popen(argv)
    client: MongoClient = MongoClient(f"mongodb://127.0.0.1:{port}/?directConnection=true",
                                      serverSelectionTimeoutMS=30000, retryWrites=False)
    try:
        client.admin.command("ping")
        col = client.bench.jobs
        col.insert_many([_job(j) for j in range(jobs)])
        t0, c0 = time.monotonic(), _server_cpu(server.pid)
        for k in range(ops):
            task = f"tasks.t{k % 10}"
            col.update_one({"_id": f"job-{k % jobs}", f"{task}.state": {"$in": ["SCHEDULED", "STARTING", "RUNNING"]}},
                           {"$set": {f"{task}.state": "RUNNING", f"{task}.state_times.RUNNING": time.time()},
                            "$inc": {"reports": 1}})
        update_wall, update_cpu = time.monotonic() - t0, _server_cpu(server.pid) - c0
        t0, c0 = time.monotonic(), _server_cpu(server.pid)
        for k in range(ops):
            col.find_one({"_id": f"job-{k % jobs}"})
        find_wall, find_cpu = time.monotonic() - t0, _server_cpu(server.pid) - c0
        return {"update_ms": update_wall * 1000 / ops, "update_cpu_ms": update_cpu * 1000 / ops,
                "find_ms": find_wall * 1000 / ops, "find_cpu_ms": find_cpu * 1000 / ops}
    finally:
        client.close()
        server.terminate()
        server.wait(30)
        shutil.rmtree(data, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="rounds per mode (alternating)")
    p.add_argument("--jobs", type=int, default=100)
    p.add_argument("--ops", type=int, default=3000, help="updates, then finds, per round")
    p.add_argument("--port", type=int, default=29990, help="loopback port for the throw-away servers")
    a = p.parse_args(argv)
    for name, value in (("--rounds", a.rounds), ("--jobs", a.jobs), ("--ops", a.ops)):
        if value < 1:
            p.error(f"{name} must be at least 1")
    if not 1024 <= a.port <= 65535:
        p.error("--port must be in 1024-65535")
    results: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    for _ in range(a.rounds):
        for standalone in (False, True):
            results[standalone].append(one_round(standalone, a.port, a.jobs, a.ops))
    print("| server | update: client ms | update: server CPU ms | find: client ms | find: server CPU ms |")
    print("|---|---:|---:|---:|---:|")
    med = {s: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for s, rs in results.items()}
    for standalone, label in ((False, "replica-set advertisement (oplog written)"), (True, "--standalone (no oplog)")):
        m = med[standalone]
        cells = " | ".join(f"{m[k]:.2f}" for k in ("update_ms", "update_cpu_ms", "find_ms", "find_cpu_ms"))
        print(f"| {label} | {cells} |")
    print(f"\nupdate server CPU, --standalone / oplog: {med[True]['update_cpu_ms'] / med[False]['update_cpu_ms']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
