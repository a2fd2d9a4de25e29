"""Job overlay networks: which subnet each job holds, so that no two active networks overlap."""

from __future__ import annotations

import time
from typing import Any

from pymongo import ASCENDING
from pymongo.database import Database


class NetworkStore:
    def __init__(self, db: Database) -> None:
        self.col = db["networks"]

    def ensure_indexes(self) -> None:
        self.col.create_index([("state", ASCENDING)])
        self.col.create_index([("subnet", ASCENDING)], unique=True)

    def active(self) -> list[dict[str, Any]]:
        return list(self.col.find({"state": {"$ne": "removed"}}))

    def get(self, job_id: str) -> dict[str, Any] | None:
        return self.col.find_one({"_id": job_id})

    def reserve(self, job_id: str, subnet: str, docker_name: str) -> None:
        """Raises DuplicateKeyError if another network already holds exactly this subnet."""
        self.col.insert_one(
            {"_id": job_id, "subnet": subnet, "docker_name": docker_name, "state": "reserved",
             "docker_id": None, "created_at": time.time()}
        )

    def mark_created(self, job_id: str, docker_id: str) -> None:
        self.col.update_one({"_id": job_id}, {"$set": {"state": "created", "docker_id": docker_id}})

    def forget(self, job_id: str) -> None:
        """A removed network frees its subnet: delete the record (the unique index is on subnet)."""
        self.col.delete_one({"_id": job_id})
