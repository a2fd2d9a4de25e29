"""The append-only events timeline: every transition, decision, claim and release, for audit and plots.

Bounded by a TTL index (``retention_days``), so it never grows without limit.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
from collections.abc import Iterator
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING
from pymongo.database import Database
from pymongo.errors import PyMongoError

from Common.metrics import EVENTS, TRANSITIONS

log = logging.getLogger(__name__)


class EventLog:
    retention_days = 7

    def __init__(self, db: Database) -> None:
        self.col = db["events"]
        self._local = threading.local()  # this thread's open batch, if any

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Events this thread records inside the block are written together, in order, in one insert when
        it ends (each keeps the time it was recorded). A placement pass or a batch of reports writes its
        events once instead of once per event; like every event they are best effort."""
        if getattr(self._local, "buffer", None) is not None:
            yield  # nested: the outer batch writes them
            return
        self._local.buffer = []
        try:
            yield
        finally:
            docs, self._local.buffer = self._local.buffer, None
            self._insert(docs)

    def ensure_indexes(self) -> None:
        self.col.create_index([("at", ASCENDING)], expireAfterSeconds=self.retention_days * 86400)
        self.col.create_index([("job_id", ASCENDING), ("at", ASCENDING)])
        self.col.create_index([("kind", ASCENDING), ("at", DESCENDING)])

    def record(self, kind: str, job_id: str | None = None, **data: Any) -> None:
        """Best effort: an event that cannot be written is logged, never allowed to fail the caller."""
        doc = {"kind": kind, "at": dt.datetime.now(dt.UTC), "job_id": job_id, **data}
        buffer = getattr(self._local, "buffer", None)
        if buffer is not None:
            buffer.append(doc)
            return
        self._insert([doc])

    def record_many(self, events: list[tuple[str, str | None, dict[str, Any]]]) -> None:
        """Several events in one write (batched reports); best effort, like ``record``."""
        now = dt.datetime.now(dt.UTC)
        docs = [{"kind": kind, "at": now, "job_id": job_id, **data} for kind, job_id, data in events]
        buffer = getattr(self._local, "buffer", None)
        if buffer is not None:
            buffer.extend(docs)
            return
        self._insert(docs)

    def _insert(self, docs: list[dict[str, Any]]) -> None:
        if not docs:
            return
        try:
            if len(docs) == 1:
                self.col.insert_one(docs[0])
            else:
                self.col.insert_many(docs, ordered=True)
        except PyMongoError as exc:
            log.warning("%d events (%s for %s, ...) not recorded: %s", len(docs), docs[0]["kind"],
                        docs[0]["job_id"], exc)
            return
        for doc in docs:
            EVENTS.labels(doc["kind"]).inc()
            if doc["kind"] in ("job_state", "task_state") and isinstance(doc.get("state"), str):
                TRANSITIONS.labels(doc["kind"].removesuffix("_state"), doc["state"]).inc()

    def for_job(self, job_id: str, limit: int = 1000) -> list[dict[str, Any]]:
        return list(self.col.find({"job_id": job_id}, {"_id": 0}).sort("at", ASCENDING).limit(limit))

    def query(self, kinds: list[str] | None = None, job_id: str | None = None, since: dt.datetime | None = None,
              until: dt.datetime | None = None, after: tuple[dt.datetime, ObjectId] | None = None,
              limit: int = 100, newest_first: bool = False) -> list[dict[str, Any]]:
        """Events with ``since <= at < until``, in (at, _id) order (or its reverse).

        ``after`` is the (at, _id) of the last event of the previous page: the id breaks ties between
        events recorded in the same millisecond, so pages never skip or repeat one.
        """
        clauses: list[dict[str, Any]] = []
        if kinds:
            clauses.append({"kind": kinds[0]} if len(kinds) == 1 else {"kind": {"$in": kinds}})
        if job_id is not None:
            clauses.append({"job_id": job_id})
        if since is not None:
            clauses.append({"at": {"$gte": since}})
        if until is not None:
            clauses.append({"at": {"$lt": until}})
        if after is not None:
            at, oid = after
            op = "$lt" if newest_first else "$gt"
            clauses.append({"$or": [{"at": {op: at}}, {"at": at, "_id": {op: oid}}]})
        query: dict[str, Any] = {"$and": clauses} if clauses else {}
        order = DESCENDING if newest_first else ASCENDING
        return list(self.col.find(query).sort([("at", order), ("_id", order)]).limit(limit))
