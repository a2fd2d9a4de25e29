"""The append-only events timeline: every transition, decision, claim and release, for audit and plots.

Bounded by a TTL index (``retention_days``), so it never grows without limit.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.database import Database
from pymongo.errors import PyMongoError

log = logging.getLogger(__name__)


class EventLog:
    retention_days = 7

    def __init__(self, db: Database) -> None:
        self.col = db["events"]

    def ensure_indexes(self) -> None:
        self.col.create_index([("at", ASCENDING)], expireAfterSeconds=self.retention_days * 86400)
        self.col.create_index([("job_id", ASCENDING), ("at", ASCENDING)])
        self.col.create_index([("kind", ASCENDING), ("at", DESCENDING)])

    def record(self, kind: str, job_id: str | None = None, **data: Any) -> None:
        """Best effort: an event that cannot be written is logged, never allowed to fail the caller."""
        doc = {"kind": kind, "at": dt.datetime.now(dt.UTC), "job_id": job_id, **data}
        try:
            self.col.insert_one(doc)
        except PyMongoError as exc:
            log.warning("event %s for %s not recorded: %s", kind, job_id, exc)

    def for_job(self, job_id: str, limit: int = 1000) -> list[dict[str, Any]]:
        return list(self.col.find({"job_id": job_id}, {"_id": 0}).sort("at", ASCENDING).limit(limit))
