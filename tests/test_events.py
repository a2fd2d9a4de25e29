"""The events timeline: a completed job's transitions in order, waiting reasons recorded once, the two
endpoints' filters, pagination and validation."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import pytest

from Common.states import TASK_RANK, TaskState
from tests.helpers import Api, sleeper, task_job, wait_for

pytestmark = [pytest.mark.system, pytest.mark.usefixtures("idle_cluster")]


def _all_pages(api: Api, path: str, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    after = None
    for _ in range(1000):
        r = api.get(path, params={**params, **({"after": after} if after else {})})
        assert r.status_code == 200, r.text
        body = r.json()
        items += body["items"]
        after = body["next"]
        if after is None:
            return items
    raise AssertionError("pagination never ended")


def _idle(store) -> bool:
    return all(not w["allocations"] for w in store.workers.all())


def test_completed_job_timeline_lists_its_transitions_in_order(api: Api, store) -> None:
    job_id = api.submit(task_job({"t1": sleeper(1), "t2": sleeper(1)}, name="timeline"))
    api.wait_state(job_id, "COMPLETED", timeout=90)
    wait_for("the claims to be released", lambda: _idle(store), 60)

    # Small pages on purpose: the cursor must neither skip nor repeat an event.
    events = _all_pages(api, f"/jobs/{job_id}/events", limit=2)
    assert [e["id"] for e in events] == [e["id"] for e in _all_pages(api, f"/jobs/{job_id}/events", limit=1000)]
    assert len({e["id"] for e in events}) == len(events)
    assert all(e["job_id"] == job_id for e in events)
    assert [e["at"] for e in events] == sorted(e["at"] for e in events), "the timeline is not in time order"
    for e in events:
        assert dt.datetime.fromisoformat(e["time"].replace("Z", "+00:00")).timestamp() == pytest.approx(e["at"])

    kinds = [e["type"] for e in events]
    job_states = [e["data"]["state"] for e in events if e["type"] == "job_state"]
    assert job_states == ["QUEUED", "SCHEDULED", "RUNNING", "COMPLETED"], kinds

    def first(pred) -> int:
        return next(i for i, e in enumerate(events) if pred(e))

    placed = first(lambda e: e["type"] == "placement" and e["data"]["decision"] == "placed")
    assert events[placed]["data"]["strategy"] == api.get("/scheduler").json()["strategy"]
    scheduled = first(lambda e: e["type"] == "job_state" and e["data"]["state"] == "SCHEDULED")
    claims = [i for i, e in enumerate(events) if e["type"] == "claim"]
    assert sorted(events[i]["data"]["task"] for i in claims) == ["t1", "t2"]
    # Decide, claim, then commit.
    assert placed < min(claims) and max(claims) < scheduled

    for task in ("t1", "t2"):
        states = [e["data"]["state"] for e in events if e["type"] == "task_state" and e["data"]["task"] == task]
        assert states == sorted(states, key=lambda s: TASK_RANK[TaskState(s)]), (task, states)
        assert states[-1] == "COMPLETED" and "RUNNING" in states, (task, states)
        done = first(lambda e, t=task: e["type"] == "task_state" and e["data"]["task"] == t
                     and e["data"]["state"] == "COMPLETED")
        released = first(lambda e, t=task: e["type"] == "release" and e["data"]["task"] == t)
        assert done < released, f"{task} released before it completed"
    assert kinds.index("task_state") > scheduled
    assert job_states.index("COMPLETED") == len(job_states) - 1


def test_a_waiting_job_gets_one_event_per_reason_with_the_strategy(api: Api, store) -> None:
    ncores = len(store.workers.all()[0]["cores"])
    big = api.submit(task_job({f"t{i}": sleeper(300) for i in range(ncores)}, name="fills-the-node"))
    api.wait_tasks(big, "RUNNING", timeout=90)
    small = api.submit(task_job({"t": sleeper(0.5)}, name="waits"))
    wait_for("a reason on the waiting job", lambda: api.job(small)["reason"], 60)
    # More JobManager passes (each submission is one), none of which changes why `small` waits.
    others = [api.submit(task_job({"t": sleeper(0.5)}, name=f"also-waits-{i}")) for i in range(3)]
    for o in others:
        wait_for("a reason on another waiting job", lambda o=o: api.job(o)["reason"], 60)

    waiting = [e for e in _all_pages(api, f"/jobs/{small}/events", type="placement")
               if e["data"]["decision"] == "waiting"]
    assert waiting, "no waiting decision recorded"
    reasons = [e["data"]["reason"] for e in waiting]
    assert all(a != b for a, b in itertools.pairwise(reasons)), f"a reason recorded twice: {reasons}"
    assert len(waiting) < 1 + len(others), "a waiting decision was recorded on every pass"
    assert reasons[-1] == api.job(small)["reason"]
    assert waiting[-1]["data"]["strategy"] == api.get("/scheduler").json()["strategy"]

    for job_id in [big, *others]:
        api.delete(f"/jobs/{job_id}")
    api.wait_state(small, "COMPLETED", timeout=90)
    decisions = [e["data"]["decision"] for e in _all_pages(api, f"/jobs/{small}/events", type="placement")]
    assert decisions[-1] == "placed" and "waiting" in decisions


def test_events_filter_by_type_and_time_newest_first(api: Api, store) -> None:
    node_up = _all_pages(api, "/events", type="node_up")
    nodes = {w["_id"] for w in store.workers.all()}
    assert {e["data"]["node"] for e in node_up} >= nodes, "the Worker's registration is not an event"

    job_id = api.submit(task_job({"t": sleeper(0.2)}, name="filtered"))
    api.wait_state(job_id, "COMPLETED", timeout=90)
    mine = _all_pages(api, f"/jobs/{job_id}/events")
    t_first, t_last = mine[0]["at"], mine[-1]["at"]

    window = _all_pages(api, "/events", type="job_state,task_state", since=str(t_first),
                        until=dt.datetime.fromtimestamp(t_last + 0.001, dt.UTC).isoformat(), limit=3)
    assert window, "nothing in the window"
    assert {e["type"] for e in window} <= {"job_state", "task_state"}
    assert all(t_first <= e["at"] <= t_last + 0.001 for e in window)
    assert [e["at"] for e in window] == sorted((e["at"] for e in window), reverse=True), "not newest first"
    assert {e["id"] for e in mine if e["type"] in ("job_state", "task_state")} <= {e["id"] for e in window}
    # ISO-8601 with an offset means the same instant.
    since = dt.datetime.fromtimestamp(t_first, dt.timezone(dt.timedelta(hours=2))).isoformat()
    assert {e["id"] for e in _all_pages(api, "/events", type="job_state", since=since)} >= {
        e["id"] for e in mine if e["type"] == "job_state"}
    later = api.get("/events", params={"since": str(t_last + 3600)}).json()
    assert later == {"items": [], "next": None}


@pytest.mark.parametrize(("path", "params", "field"), [
    ("/events", {"type": "Job State"}, "type"),
    ("/events", {"type": ","}, "type"),
    ("/events", {"type": ",".join(f"k{i}" for i in range(21))}, "type"),
    ("/events", {"since": "yesterday"}, "since"),
    ("/events", {"since": "-5"}, "since"),
    ("/events", {"since": "nan"}, "since"),
    ("/events", {"until": "1e400"}, "until"),
    ("/events", {"until": "2026-13-01T00:00:00Z"}, "until"),
    ("/events", {"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "until"),
    ("/events", {"limit": "0"}, "limit"),
    ("/events", {"limit": "1001"}, "limit"),
    ("/events", {"limit": "ten"}, "limit"),
    ("/events", {"after": "job-1"}, "after"),
    ("/jobs/job-none/events", {"since": "soon"}, "since"),
])
def test_invalid_queries_are_400_naming_the_field(api: Api, path: str, params: dict[str, str], field: str) -> None:
    if path.startswith("/jobs/"):
        path = f"/jobs/{api.submit(task_job({'t': sleeper(0.1)}))}/events"
    r = api.get(path, params=params)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid" and r.json()["error"]["field"] == field, r.text


def test_unknown_job_has_no_timeline(api: Api) -> None:
    for job_id in ("job-000000000000-000000", "no such job"):
        r = api.get(f"/jobs/{job_id}/events")
        assert r.status_code == 404 and r.json()["error"]["field"] == "job_id", r.text
