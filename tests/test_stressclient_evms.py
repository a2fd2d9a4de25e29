"""The StressClient's EVM workload against the real system: the shipped EVM template runs end to end and
the report's EVM timings are the system's own EVM records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from Common.config import Config
from tests.conftest import ROOT, TEST_CLUSTER
from tests.helpers import containers_of, wait_for

pytestmark = [pytest.mark.system, pytest.mark.usefixtures("idle_cluster")]


def test_evm_template_runs_end_to_end_and_reports_the_systems_evm_timings(system: Config, store,
                                                                         tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "StressClient", "steady", "--rate", "1", "--count", "2", "--evms",
           "--template", str(ROOT / "StressClient/templates/epm-evms.json"), "--evm-hold", "1", "--out", str(out),
           "--url", system.frontend_url, "--token", system.token(), "--drain", "240", "--poll-interval", "0.5",
           "--no-plots"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "submit → all EVMs ready" in proc.stdout and "EVMs: 16 requested in 2 jobs, 16 READY" in proc.stdout

    data = json.loads((out / "results.json").read_text())
    assert len(data["jobs"]) == 2
    for j in data["jobs"]:
        assert j["status"] == 201 and j["evms_requested"] == 8, j
        assert j["evms_ready"] == 8 and j["evms_errors"] == 0 and j["evms_released"], j
        assert j["state"] == "CANCELLED"  # EPMs run until deleted: the client deleted it after its hold
        # The timings are the system's: the last EVM's READY time and each EVM's creation time.
        records = list(store.db["evms"].find({"job_id": j["job_id"]}))
        assert len(records) == 8
        assert j["evms_ready_at"] == max(r["times"]["READY"] for r in records)
        assert sorted(j["evm_create_ms"]) == sorted(r["create_ms"] for r in records)
        assert j["running_at"] <= j["evms_ready_at"]

    ev = data["summary"]["evms"]
    assert (ev["jobs"], ev["requested"], ev["ready"], ev["errors"], ev["jobs_all_ready"], ev["released"]) == (
        2, 16, 16, 0, 2, 2)
    for key in ("submit_to_all_ready", "running_to_all_ready"):
        assert ev[key]["n"] == 2 and 0 < ev[key]["p50"] <= ev[key]["p99"] <= ev[key]["max"], key
    assert ev["create_ms"]["n"] == 16
    assert data["summary"]["outcomes"]["not_completed_by_reason"] == {}
    assert "EVM creation, per EVM (ms)" in (out / "summary.txt").read_text()

    # Nothing is left behind: the EPMs are removed and every EVM record is closed.
    for j in data["jobs"]:
        wait_for("the EPM containers to be removed", lambda j=j: not containers_of(TEST_CLUSTER, j["job_id"]), 90)
        wait_for("every EVM record DELETED", lambda j=j: store.db["evms"].count_documents(
            {"job_id": j["job_id"], "state": "DELETED"}) == 8, 60)
