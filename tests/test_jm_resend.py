"""The sweep's re-send policy for deploys (JobManager.manager.resend_due): a deploy the GlobalManager
never accepted is re-sent at once; an accepted one whose tasks still wait for their engine only after a
doubling interval, so a busy engine is not sent the same deploy every sweep."""

from __future__ import annotations

from JobManager.manager import REDEPLOY_BACKOFF_DOUBLINGS, resend_due

AFTER = 10.0


def test_a_deploy_never_accepted_is_due_at_every_sweep() -> None:
    assert resend_due({"dispatched_at": None}, 1000.0, AFTER)
    assert resend_due({}, 1000.0, AFTER)


def test_the_nth_accepted_deploy_is_due_only_after_after_times_two_to_the_n_minus_one() -> None:
    for n, wait in ((1, 10.0), (2, 20.0), (3, 40.0), (4, 80.0)):
        job = {"dispatched_at": 1000.0, "dispatches": n}
        assert not resend_due(job, 1000.0 + wait - 0.5, AFTER), n
        assert resend_due(job, 1000.0 + wait + 0.5, AFTER), n


def test_the_interval_stops_doubling_at_eight_times_redeploy_after() -> None:
    cap = AFTER * 2 ** REDEPLOY_BACKOFF_DOUBLINGS
    job = {"dispatched_at": 1000.0, "dispatches": 50}
    assert cap == 80.0
    assert not resend_due(job, 1000.0 + cap - 0.5, AFTER)
    assert resend_due(job, 1000.0 + cap + 0.5, AFTER)


def test_a_job_accepted_before_dispatches_were_counted_waits_redeploy_after() -> None:
    job = {"dispatched_at": 1000.0}  # written by an older JobManager: no counter
    assert not resend_due(job, 1009.5, AFTER)
    assert resend_due(job, 1010.5, AFTER)
