"""Chaos (issue 11, item 5): a StressClient run while every supervised process is SIGKILLed, nobody restarting.

The real system (one node): JOBS one-core `sleep 0.5` jobs at RATE/s, and meanwhile bench.chaos's seeded
schedule SIGKILLs FrontEnd, JobManager, GlobalManager, Discovery, Worker and the embedded MongoDB KILLS
times each at random moments and freezes MongoDB (SIGSTOP) for FREEZE_SECONDS once. The schedule is
printed (pytest -s) and is a pure function of SEED, so a failure can be replayed. supervisord brings every
process back. Submissions refused while the FrontEnd or MongoDB was away (no answer, 503) are retried by
the client with the same Idempotency-Key and counted apart: they were never accepted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench import chaos
from Common.store import Store
from tests.conftest import ROOT, TEST_CLUSTER
from tests.helpers import TERMINAL, docker_client, wait_for

pytestmark = pytest.mark.system

JOBS = 300
RATE = 0.75  # jobs per second (about what one 2-core node sustains): the schedule's window is JOBS / RATE s
KILLS = 2  # SIGKILLs per process
FREEZE_SECONDS = 30.0
SEED = 11
DRAIN_SECONDS = 600.0  # liveness bound on the accepted jobs' end after the last arrival
# Arrivals take JOBS / RATE = 400 s; arrivals + drain + the checks after stay inside the test's own timeout, so a
# job that never ends fails the test with its document and timeline (below), not with pytest-timeout's stack dump.
TEST_TIMEOUT_SECONDS = 1500


def _restarts(cfg) -> dict[str, int]:
    """Restarts per process as an operator sees them: `Management.py status --json`."""
    r = subprocess.run([sys.executable, str(ROOT / "Management.py"), "status", "--json"], capture_output=True,
                       text=True, timeout=120, cwd=ROOT, env={**os.environ, **cfg.to_env()})
    assert r.returncode == 0, r.stderr
    return {p: int(v["restarts"]) for p, v in json.loads(r.stdout)["processes"].items()}


def _worker_idle(cfg) -> dict | None:
    s = Store.connect(cfg, "test-chaos")
    try:
        w = s.workers.get(cfg.worker_name)
    finally:
        s.close()
    return w if w and w["allocations"] == {} and sorted(w["free_cores"]) == sorted(w["cores"]) \
        and w["mem_free"] == w["mem_total"] else None


def _jobs_not_final(cfg) -> list[str]:
    s = Store.connect(cfg, "test-chaos")
    try:
        return [j["_id"] for j in s.jobs.in_states(["QUEUED", "SCHEDULED", "RUNNING", "CANCELLING"])]
    finally:
        s.close()


def _stuck_jobs_described(cfg, job_ids: list[str]) -> str:
    """The document and the timeline of each job that did not end: what a failure must show to be replayed."""
    s = Store.connect(cfg, "test-chaos")
    try:
        out = []
        for job_id in job_ids[:5]:
            doc = s.jobs.get(job_id) or {}
            tasks = {t: {k: v.get(k) for k in ("state", "node", "attempt", "state_times", "reason")}
                     for t, v in (doc.get("tasks") or {}).items()}
            out.append(f"{job_id}: state {doc.get('state')} reason {doc.get('reason')!r} tasks {tasks} "
                       f"deploy_retry {doc.get('deploy_retry')} lease {doc.get('lease')}")
            out += [f"    {e}" for e in s.events.for_job(job_id, limit=50)]
        return "\n".join(out)
    finally:
        s.close()


def _leftovers() -> list[str]:
    d = docker_client()
    label = {"label": f"rswarm.cluster={TEST_CLUSTER}"}
    return [c["Names"][0] for c in d.api.containers(all=True, filters=label)] + \
        [n["Name"] for n in d.api.networks(filters=label)]


@pytest.mark.timeout(TEST_TIMEOUT_SECONDS)
def test_every_process_sigkilled_twice_and_mongodb_frozen_during_300_jobs_every_accepted_job_ends_and_99pct_complete(
        system) -> None:
    before = _restarts(system)
    result, faults = chaos.chaos_run(system, JOBS, RATE, KILLS, FREEZE_SECONDS, SEED, DRAIN_SECONDS,
                                     cancel_at_end=False)
    print(chaos.table(None, chaos.summary(result), faults))

    # Every fault was carried out and every process answered again by itself.
    kills = {p: sum(f.kind == "kill" and f.process == p and f.done_at is not None for f in faults)
             for p in chaos.PROCESSES}
    assert kills == dict.fromkeys(chaos.PROCESSES, KILLS), [vars(f) for f in faults]
    assert all(f.answers_s is not None for f in faults), [vars(f) for f in faults if f.answers_s is None]

    # Every arrival was accepted in the end (refusals were retried), and every accepted job is terminal.
    accepted = [r for r in result.records if r.accepted]
    refused = [r for r in result.records if not r.accepted]
    assert not refused, [(r.seq, r.error, r.message) for r in refused[:5]]
    assert len(accepted) == JOBS
    assert len({r.job_id for r in accepted}) == JOBS  # an Idempotency-Key replay never made a second job
    not_final = [(r.job_id, r.state) for r in accepted if r.state not in TERMINAL]
    assert not not_final, f"{not_final}\n{_stuck_jobs_described(system, [j for j, _ in not_final])}"
    completed = sum(r.state == "COMPLETED" for r in accepted)
    others = [(r.job_id, r.state, r.reason) for r in accepted if r.state != "COMPLETED"]
    print(f"accepted {len(accepted)}, COMPLETED {completed}, refused attempts retried "
          f"{sum(r.refusals for r in result.records)} (jobs {sum(r.refusals > 0 for r in result.records)}); "
          f"not completed: {others}")
    assert completed >= 0.99 * len(accepted), others

    # Nothing is left: no job in the database still active, no claim, no container or network.
    assert _jobs_not_final(system) == []
    wait_for("the worker's cores and memory to be all free", lambda: _worker_idle(system), 120)
    wait_for("no container or network of the deployment to be left", lambda: not _leftovers(), 120)

    # Every restart is visible to the operator.
    after = _restarts(system)
    short = {p: (after[p] - before.get(p, 0), KILLS) for p in chaos.PROCESSES if after[p] - before.get(p, 0) < KILLS}
    assert not short, short
