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

    def put(self, key: str, value: Any) -> None:
        self.col.update_one({"_id": key}, {"$set": {"value": value}}, upsert=True)
