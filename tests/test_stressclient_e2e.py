"""A short steady load against the real system: the CLI runs, every job is followed to its end, and
the results and plots it writes hold plausible values."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from Common.config import Config
from tests.conftest import ROOT

pytestmark = [pytest.mark.system, pytest.mark.usefixtures("idle_cluster")]

PLOTS = ("arrivals.png", "latency_cdf.png", "latency_timeline.png", "utilisation.png")


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_steady_load_end_to_end(system: Config, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "StressClient", "steady", "--rate", "1", "--duration", "6",
           "--template", str(ROOT / "StressClient/templates/sleep-1x1.json"), "--out", str(out),
           "--url", system.frontend_url, "--token", system.token(), "--seed", "7", "--drain", "120",
           "--poll-interval", "0.5", "--sample-interval", "0.5"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "submit → all running" in proc.stdout

    data = json.loads((out / "results.json").read_text())
    jobs = data["jobs"]
    assert len(jobs) == 6  # arrivals at 0, 1, ..., 5 s
    assert [j["offset"] for j in jobs] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    for j in jobs:
        assert j["status"] == 201 and j["error"] is None
        assert j["state"] == "COMPLETED", j
        # The milestones come from the system's own clock, in order, and the job ran its 1 s of sleep.
        assert j["submit_at"] <= j["sent_at"] < j["response_at"]
        assert j["sent_at"] <= j["accepted_at"] <= j["scheduled_at"] <= j["running_at"] < j["finished_at"]
        assert j["finished_at"] - j["running_at"] >= 0.9
        assert j["nodes"] == [system.worker_name] and len(j["task_running"]) == 1

    s = data["summary"]
    assert s["rates"]["arrivals"] == 6 and s["rates"]["accepted"] == 6 and s["rates"]["completed"] == 6
    assert s["rates"]["offered_jobs_per_s"] == pytest.approx(1.0)
    assert 0.5 <= s["rates"]["achieved_jobs_per_s"] <= 1.0 + 1e-9
    assert s["outcomes"]["rejected_by_reason"] == {}
    assert s["outcomes"]["final_states"] == {"COMPLETED": 6}
    st = s["stages"]
    for key in ("submit_to_accepted", "accepted_to_scheduled", "scheduled_to_running", "submit_to_running",
                "submit_to_completed"):
        assert st[key]["n"] == 6
        assert 0 < st[key]["p50"] <= st[key]["p99"] <= st[key]["max"]
    assert st["submit_to_accepted"]["p50"] < st["submit_to_running"]["p50"] < st["submit_to_completed"]["p50"]
    assert st["submit_to_completed"]["p50"] >= 1.0  # includes the 1 s of work

    util = s["utilisation"][system.worker_name]
    assert util["cores"] >= 1 and 0 < util["mean_used_fraction"] <= 1
    assert all(0 <= x["used"] <= x["cores"] for x in data["samples"])
    assert max(x["used"] for x in data["samples"]) >= 1  # at least one sample saw a job's core

    rows = list(csv.DictReader((out / "jobs.csv").open()))
    assert len(rows) == 6 and all(r["state"] == "COMPLETED" and r["job_id"] for r in rows)
    assert "p99" in (out / "summary.txt").read_text()
    for name in PLOTS:
        assert _is_png(out / name), name

    # The plots can be regenerated from the results alone.
    for name in PLOTS:
        (out / name).unlink()
    proc = subprocess.run([sys.executable, "-m", "StressClient", "report", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name in PLOTS:
        assert _is_png(out / name), name


def test_rejections_are_counted_by_reason(system: Config, tmp_path: Path) -> None:
    # A job needing more cores than any node has is refused at submission (422), never run.
    template = tmp_path / "huge.json"
    template.write_text(json.dumps({"name": "huge", "tasks": 1, "cores": 1024, "duration": 1}))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "StressClient", "steady", "--rate", "5", "--count", "5", "--template", str(template),
           "--out", str(out), "--url", system.frontend_url, "--token", system.token(), "--no-plots"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads((out / "results.json").read_text())
    assert data["summary"]["outcomes"]["rejected_by_reason"] == {"HTTP 422 unschedulable": 5}
    assert data["summary"]["rates"]["accepted"] == 0


def test_a_refused_token_is_a_clear_error(system: Config, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "StressClient", "steady", "--rate", "1", "--count", "1", "--out", str(tmp_path),
           "--url", system.frontend_url, "--token", "wrong"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "refused the API token" in proc.stderr
