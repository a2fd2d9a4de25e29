"""Cluster-wide settings that must survive restarts (the active placement strategy, ...)."""

from __future__ import annotations

from typing import Any

from pymongo.database import Database


class SettingsStore:
    def __init__(self, db: Database) -> None:
        self.col = db["settings"]

    def get(self, key: str, default: Any = None) -> Any:
        doc = self.col.find_one({"_id": key})
        return default if doc is None else doc.get("value", default)

    def get_many(self, keys: list[str]) -> dict[str, Any]:
        """The stored values of ``keys`` in one round trip; absent keys are left out."""
        return {d["_id"]: d.get("value") for d in self.col.find({"_id": {"$in": keys}})}

    def put(self, key: str, value: Any) -> None:
        self.col.update_one({"_id": key}, {"$set": {"value": value}}, upsert=True)
