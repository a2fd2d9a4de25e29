"""/api/v1/events and /api/v1/jobs/{id}/events: the append-only timeline, filtered and paginated.

Every state transition, placement decision (strategy; why a job waits), claim, release and node
up/down is an event (``Common.store.events``; kept ``EventLog.retention_days`` by a TTL index).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from bson import ObjectId
from flask import request
from flask_restx import Namespace, Resource

from Common.api import ERROR_SCHEMA, int_arg
from Common.errors import Invalid, NotFound
from FrontEnd.context import ctx

# path "/" so that both /events and /jobs/<id>/events live under one "events" heading in Swagger UI
ns = Namespace("events", path="/", description="The timeline: state transitions, placement decisions, claims, "
                                                "releases, nodes up and down")

KNOWN_TYPES = {
    "job_state": "a job moved to data.state (QUEUED, SCHEDULED, RUNNING, COMPLETED, FAILED, CANCELLED)",
    "task_state": "a task (data.task, data.attempt) moved to data.state",
    "placement": "a placement decision: data.decision (placed, waiting, lost_race, preempting), data.strategy, "
                 "data.reason (waiting: recorded when the reason changes) or data.nodes",
    "claim": "cores and memory claimed on data.node for data.task",
    "release": "a claim given back on data.node",
    "preempted": "the job was sent back to the queue for data.by",
    "job_requeued": "the job was restarted because data.node was lost",
    "node_up": "a worker registered (data.node, data.cores, data.mem)",
    "node_down": "a worker missed its heartbeats",
    "node_drain": "a worker was drained", "node_undrain": "a worker takes work again",
    "node_removed": "a worker left the Swarm",
    "scheduler": "the strategy or its options changed",
}
TYPE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
JOB_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
CURSOR = re.compile(r"^(\d{1,15})-([0-9a-f]{24})$")
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
MAX_TYPES = 20
SAMPLE_ID = "job-0193f2a1b2c3-7f3a2b"

EVENT_SCHEMA = {
    "type": "object",
    "required": ["id", "type", "at", "time", "job_id", "data"],
    "properties": {
        "id": {"type": "string", "example": "6740c0de9b1e8a0c4f2d3e1a"},
        "type": {"type": "string", "example": "job_state", "description": "see the type parameter"},
        "at": {"type": "number", "example": 1795364132.241, "description": "epoch seconds (millisecond precision)"},
        "time": {"type": "string", "format": "date-time", "example": "2026-11-22T10:15:32.241Z"},
        "job_id": {"description": "the job it concerns (null for node and scheduler events)", "example": SAMPLE_ID},
        "data": {"type": "object", "example": {"state": "RUNNING"}},
    },
}
EVENT_PAGE_SCHEMA = {
    "type": "object",
    "required": ["items", "next"],
    "example": {"items": [
        {"id": "6740c0de9b1e8a0c4f2d3e1a", "type": "job_state", "at": 1795364130.100,
         "time": "2026-11-22T10:15:30.100Z", "job_id": SAMPLE_ID, "data": {"state": "QUEUED"}},
        {"id": "6740c0de9b1e8a0c4f2d3e1b", "type": "placement", "at": 1795364130.112,
         "time": "2026-11-22T10:15:30.112Z", "job_id": SAMPLE_ID,
         "data": {"decision": "placed", "strategy": "first-fit", "nodes": ["w1"]}},
        {"id": "6740c0de9b1e8a0c4f2d3e1c", "type": "claim", "at": 1795364130.120,
         "time": "2026-11-22T10:15:30.120Z", "job_id": SAMPLE_ID,
         "data": {"task": "t1", "node": "w1", "cores": [0], "mem": 67108864}},
    ], "next": "1795364130120-6740c0de9b1e8a0c4f2d3e1c"},
    "properties": {
        "items": {"type": "array", "items": EVENT_SCHEMA},
        "next": {"description": "pass as ?after= for the next page; null on the last page"},
    },
}

event_page = ns.schema_model("EventPage", EVENT_PAGE_SCHEMA)
error = ns.schema_model("EventError", ERROR_SCHEMA)

_TIME_HELP = "ISO-8601 (2026-11-22T10:00:00Z; no offset means UTC) or epoch seconds (1795364100.5)"
QUERY_DOC = {
    "type": {"description": "only these event types, comma-separated: " + ", ".join(sorted(KNOWN_TYPES)),
             "in": "query", "type": "string"},
    "since": {"description": f"only events at or after this time: {_TIME_HELP}", "in": "query", "type": "string"},
    "until": {"description": f"only events before this time: {_TIME_HELP}", "in": "query", "type": "string"},
    "limit": {"description": "page size (1-1000, default 100)", "in": "query", "type": "integer"},
    "after": {"description": "the `next` value of the previous page", "in": "query", "type": "string"},
}


def parse_time(name: str) -> dt.datetime | None:
    """A query parameter as an aware UTC datetime: ISO-8601 or epoch seconds; 400 naming it otherwise."""
    raw = request.args.get(name)
    if raw is None or raw.strip() == "":
        return None
    text = raw.strip()
    try:
        seconds = float(text)
    except ValueError:
        seconds = None
    if seconds is not None:
        if not 0 <= seconds < 1e11:  # finite, not negative, before the year 5138
            raise Invalid(f"{name} must be epoch seconds between 0 and 1e11, or ISO-8601", field=name)
        return EPOCH + dt.timedelta(seconds=seconds)
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise Invalid(f"{name} must be ISO-8601 (e.g. 2026-11-22T10:00:00Z) or epoch seconds", field=name) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    try:
        return when.astimezone(dt.UTC)
    except (OverflowError, ValueError):
        raise Invalid(f"{name} is out of range", field=name) from None


def parse_types() -> list[str] | None:
    raw = request.args.get("type")
    if raw is None or raw.strip() == "":
        return None
    types = [t.strip() for t in raw.split(",") if t.strip()]
    if not types or len(types) > MAX_TYPES:
        raise Invalid(f"type must name 1 to {MAX_TYPES} event types, comma-separated", field="type")
    for t in types:
        if not TYPE.match(t):
            raise Invalid(f"type {t[:70]!r} is not an event type (known: {', '.join(sorted(KNOWN_TYPES))})",
                          field="type")
    return sorted(set(types))


def parse_after() -> tuple[dt.datetime, ObjectId] | None:
    raw = request.args.get("after")
    if raw is None or raw == "":
        return None
    m = CURSOR.match(raw)
    if not m:
        raise Invalid("after must be the `next` value of a previous page", field="after")
    return EPOCH + dt.timedelta(milliseconds=int(m.group(1))), ObjectId(m.group(2))


def _ms(at: dt.datetime) -> int:
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    return (at - EPOCH) // dt.timedelta(milliseconds=1)


def event_view(doc: dict[str, Any]) -> dict[str, Any]:
    at: dt.datetime = doc["at"]
    ms = _ms(at)
    data = {k: v for k, v in doc.items() if k not in ("_id", "kind", "at", "job_id")}
    return {"id": str(doc["_id"]), "type": doc["kind"], "at": ms / 1000.0,
            "time": (EPOCH + dt.timedelta(milliseconds=ms)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "job_id": doc.get("job_id"), "data": data}


def page(job_id: str | None, newest_first: bool) -> dict[str, Any]:
    types = parse_types()
    since, until = parse_time("since"), parse_time("until")
    if since is not None and until is not None and until <= since:
        raise Invalid("until must be later than since", field="until")
    limit = int_arg("limit", 100, 1, 1000)
    after = parse_after()
    docs = ctx().store.events.query(types, job_id, since, until, after, limit, newest_first)
    nxt = f"{_ms(docs[-1]['at'])}-{docs[-1]['_id']}" if len(docs) == limit else None
    return {"items": [event_view(d) for d in docs], "next": nxt}


@ns.route("/events")
class Events(Resource):
    @ns.doc(params=QUERY_DOC)
    @ns.response(200, "Events, newest first", event_page)
    @ns.response(400, "Invalid query parameter (the field is named)", error)
    @ns.response(503, "MongoDB unavailable", error)
    def get(self):
        """Every recent event, newest first, by type and time. 200; 400."""
        return page(None, newest_first=True)


@ns.route("/jobs/<string:job_id>/events")
@ns.param("job_id", "the job's id")
class JobEvents(Resource):
    @ns.doc(params=QUERY_DOC)
    @ns.response(200, "The job's timeline, oldest first", event_page)
    @ns.response(400, "Invalid query parameter (the field is named)", error)
    @ns.response(404, "No such job", error)
    @ns.response(503, "MongoDB unavailable", error)
    def get(self, job_id: str):
        """A job's timeline in order: its transitions, placement decisions, claims and releases. 200; 400; 404."""
        if not JOB_ID.match(job_id) or ctx().store.jobs.get(job_id) is None:
            raise NotFound(f"no job {job_id!r}", field="job_id")
        return page(job_id, newest_first=False)
