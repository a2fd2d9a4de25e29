"""Migration with CRIU: checkpoint, transfer and restore times, small process vs one holding 256 MB.

    python -m bench.migration [--repeat 3]

Brings up a 2-worker emulated cluster (dockerd --experimental, CRIU 4.1.1) with the system on it,
runs each workload as a 1-core task, migrates it back and forth ``--repeat`` times through
`POST /api/v1/jobs/{id}/tasks/{task}/migrate`, and reads each migration's own timings: checkpoint
(CRIU dump on the source, leave running), upload (files into MongoDB/GridFS), download (onto the
target, size + SHA-256 checked) and restore (`docker start --checkpoint`), plus the end-to-end time
from request to DONE. The small process is the baseline; ratios are large / small.
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
sys.path.insert(0, str(ROOT))

from Common import http  # noqa: E402

WORKLOADS = {
    "small (busybox counter)": {"image": "rswarm/task:1", "mem_limit": "64m",
                                "command": ["sh", "-c", "i=0; while true; do i=$((i+1)); sleep 0.2; done"]},
    "256 MB resident (python)": {"image": "rswarm/epm-base:1", "mem_limit": "512m", "command": [
        "python3", "-c", "import os, time\nb = os.urandom(256 << 20)\nwhile True: time.sleep(1)"]},
}


def _env(run_dir: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSWARM_") and k != "MONGO_URI"}
    env.update({"RSWARM_RUN_DIR": run_dir, "RSWARM_CLUSTER_ID": "rswbenchm", "RSWARM_FRONTEND_PORT": "19801",
                "RSWARM_GLOBALMANAGER_PORT": "19800", "RSWARM_GLOBALMANAGER_PUB_PORT": "19857",
                "RSWARM_JOBMANAGER_HINT_PORT": "19855", "RSWARM_DISCOVERY_PORT": "19856",
                "RSWARM_MONGO_EMBEDDED_PORT": "29801", "RSWARM_GLOBALMANAGER_NETWORK_POOL": "10.251.0.0/16",
                "RSWARM_GLOBALMANAGER_METRICS_PORT": "19810", "RSWARM_JOBMANAGER_METRICS_PORT": "19811",
                "RSWARM_DISCOVERY_METRICS_PORT": "19812", "RSWARM_WORKER_METRICS_PORT": "0"})
    return env


def _mgmt(args: list[str], env: dict[str, str]) -> None:
    r = subprocess.run([sys.executable, str(ROOT / "Management.py"), *args], env=env, capture_output=True, text=True,
                       timeout=900, cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"Management.py {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")


def _wait(check, what: str, timeout: float = 300.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def run(env: dict[str, str], repeat: int) -> dict[str, list[dict[str, float]]]:
    base = f"http://127.0.0.1:{env['RSWARM_FRONTEND_PORT']}/api/v1"
    token = (Path(env["RSWARM_RUN_DIR"]) / "api_token").read_text().strip()
    s = http.Session()
    s.headers["Authorization"] = f"Bearer {token}"
    results: dict[str, list[dict[str, float]]] = {}
    for label, task in WORKLOADS.items():
        job = s.post(f"{base}/jobs", json={"job_info": {"tasks": {"t": {**task, "req_cores": 1}}}}, timeout=30).json()
        job_id = job["id"]
        _wait(lambda j=job_id: s.get(f"{base}/jobs/{j}", timeout=30).json()["tasks"]["t"]["state"] == "RUNNING",
              f"{label} to run")
        time.sleep(5 if "256" in label else 2)  # the large one fills its memory first
        rows = []
        for _ in range(repeat):
            t0 = time.monotonic()
            m = s.post(f"{base}/jobs/{job_id}/tasks/t/migrate", json={"target": "any"}, timeout=30).json()
            done = _wait(lambda m=m: (x := s.get(f"{base}/migrations/{m['id']}", timeout=30).json())["state"]
                         in ("DONE", "FAILED") and x, f"migration {m['id']}")
            if done["state"] != "DONE":
                raise SystemExit(f"{label}: migration failed: {done['reason']}")
            rows.append({**done["timings"], "end_to_end_s": time.monotonic() - t0})
            print(json.dumps({"workload": label, **rows[-1]}), flush=True)
        results[label] = rows
        s.delete(f"{base}/jobs/{job_id}", timeout=30)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if not 1 <= args.repeat <= 20:
        ap.error("--repeat must be 1..20")
    with tempfile.TemporaryDirectory(prefix="rswarm-bench-migration-") as tmp:
        env = _env(str(Path(tmp) / "run"))
        _mgmt(["cluster", "up", "--workers", "2", "--tag", "benchm", "--subnet", "10.96.0.0/24", "--experimental",
               "--images", "rswarm/task:1,rswarm/epm-base:1"], env)
        try:
            results = run(env, args.repeat)
        finally:
            _mgmt(["cluster", "down"], env)
    cols = ["checkpoint_s", "upload_s", "download_s", "restore_s", "end_to_end_s"]
    small = next(iter(results.values()))
    print(f"\n{'workload':<26}" + "".join(f"{c + ' p50':>16}{'max':>8}" for c in cols))
    for label, rows in results.items():
        print(f"{label:<26}" + "".join(f"{statistics.median(r[c] for r in rows):>16.3f}{max(r[c] for r in rows):>8.3f}"
                                       for c in cols))
    large = list(results.values())[-1]
    print(f"{'ratio large/small (p50)':<26}" + "".join(
        f"{statistics.median(r[c] for r in large) / max(statistics.median(r[c] for r in small), 1e-9):>16.1f}{'':>8}"
        for c in cols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
