"""Emulated cluster: time of `Management.py cluster up` / `cluster down` and memory per emulated host.

    python -m bench.cluster [--sizes 1 3 6] [--repeat 2]

For each size N it brings up N worker hosts + a manager (netns + dockerd + sshd, Swarm formed, images
loaded) *and* the system on them (control plane + a Worker per host over SSH), then takes it down.
Memory per host is the resident memory of every process in the host's network namespace (dockerd,
containerd, sshd, the Worker), and the drop of MemAvailable across the whole machine, divided by the
number of hosts. The baseline measured in the same run is N = 1; ratios are against it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TAG = "bench"


def _env(run_dir: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSWARM_") and k != "MONGO_URI"}
    env.update({"RSWARM_RUN_DIR": run_dir, "RSWARM_CLUSTER_ID": "rswbenchc", "RSWARM_FRONTEND_PORT": "19901",
                "RSWARM_GLOBALMANAGER_PORT": "19900", "RSWARM_GLOBALMANAGER_PUB_PORT": "19957",
                "RSWARM_JOBMANAGER_HINT_PORT": "19955", "RSWARM_DISCOVERY_PORT": "19956",
                "RSWARM_MONGO_EMBEDDED_PORT": "29901", "RSWARM_GLOBALMANAGER_METRICS_PORT": "19910",
                "RSWARM_JOBMANAGER_METRICS_PORT": "19911", "RSWARM_DISCOVERY_METRICS_PORT": "19912",
                "RSWARM_WORKER_METRICS_PORT": "0", "RSWARM_GLOBALMANAGER_NETWORK_POOL": "10.250.0.0/16"})
    return env


def _mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def _netns_rss(prefix: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for ns in sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []:
        if not ns.startswith(prefix):
            continue
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        total = 0
        for pid in pids:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            except OSError:
                pass
        out[ns] = total
    return out


def _mgmt(args: list[str], env: dict[str, str]) -> float:
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, str(ROOT / "Management.py"), *args], env=env, capture_output=True,
                       text=True, timeout=900, cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"Management.py {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
    return time.monotonic() - t0


def measure(n: int, env: dict[str, str]) -> dict[str, float]:
    before = _mem_available()
    up = _mgmt(["cluster", "up", "--workers", str(n), "--tag", TAG, "--subnet", "10.99.0.0/24"], env)
    time.sleep(3)  # let the daemons settle before reading memory
    rss = _netns_rss(f"rswc-{TAG}-")
    used = before - _mem_available()
    workers = [v for k, v in rss.items() if not k.endswith("-m")]
    down = _mgmt(["cluster", "down"], env)
    return {"n": n, "up_s": up, "down_s": down, "rss_per_worker_mb": statistics.mean(workers) / 2**20,
            "rss_manager_mb": rss.get(f"rswc-{TAG}-m", 0) / 2**20, "memavailable_drop_per_host_mb":
            used / (n + 1) / 2**20}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 3, 6])
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    if any(not 1 <= n <= 32 for n in args.sizes) or not 1 <= args.repeat <= 10:
        ap.error("--sizes must be 1..32 and --repeat 1..10")
    rows = []
    with tempfile.TemporaryDirectory(prefix="rswarm-bench-cluster-") as tmp:
        env = _env(str(Path(tmp) / "run"))
        for n in args.sizes:
            runs = [measure(n, env) for _ in range(args.repeat)]
            row = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            row["up_s_max"] = max(r["up_s"] for r in runs)
            rows.append(row)
            print(json.dumps(row), flush=True)
    base = rows[0]
    print(f"\n{'N':>3} {'up s (med)':>11} {'up s (max)':>11} {'down s':>8} {'up/base':>8} "
          f"{'RSS/worker MB':>14} {'manager MB':>11} {'MemAvail drop/host MB':>22}")
    for r in rows:
        print(f"{int(r['n']):>3} {r['up_s']:>11.1f} {r['up_s_max']:>11.1f} {r['down_s']:>8.1f} "
              f"{r['up_s'] / base['up_s']:>8.2f} {r['rss_per_worker_mb']:>14.0f} {r['rss_manager_mb']:>11.0f} "
              f"{r['memavailable_drop_per_host_mb']:>22.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
