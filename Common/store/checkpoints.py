"""Checkpoints (CRIU images of a task's container) and their files, kept in MongoDB (GridFS).

A checkpoint is a flat directory of CRIU image files. It is stored file by file, each with its size and
SHA-256, so that any node can fetch it through the same authenticated connection it already has to
MongoDB. Fetching never unpacks an archive: every name is checked against a strict pattern, written as
a regular file into a fresh directory, and verified against its size and digest.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

import gridfs
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.database import Database

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_FILES = 4096

REQUESTED, DONE, FAILED = "REQUESTED", "DONE", "FAILED"


class CheckpointError(Exception):
    pass


def new_checkpoint_id() -> str:
    return f"ck-{int(time.time() * 1000):012x}-{secrets.token_hex(3)}"


class CheckpointStore:
    def __init__(self, db: Database) -> None:
        self.col = db["checkpoints"]
        self.files = gridfs.GridFSBucket(db, bucket_name="checkpoint_files")

    def ensure_indexes(self) -> None:
        self.col.create_index([("node", ASCENDING), ("state", ASCENDING)])
        self.col.create_index([("job_id", ASCENDING), ("task", ASCENDING), ("created_at", DESCENDING)])
        # GridFS's own indexes, made here by the control plane: a Worker's first upload would otherwise try
        # to create them, and the worker role may not create indexes (Common/ops/mongo.py).
        db = self.col.database
        db["checkpoint_files.files"].create_index([("filename", ASCENDING), ("uploadDate", ASCENDING)])
        db["checkpoint_files.chunks"].create_index([("files_id", ASCENDING), ("n", ASCENDING)], unique=True)

    # ---- records --------------------------------------------------------------------------------
    def request(self, job_id: str, task: str, attempt: int, node: str, leave_running: bool,
                purpose: str = "user", migration_id: str | None = None, keep: bool = False) -> dict[str, Any]:
        """``keep``: the checkpoint outlives its job (only DELETE removes it); otherwise it goes when the job
        ends (a migration's own checkpoint goes when the migration ends)."""
        doc = {"_id": new_checkpoint_id(), "job_id": job_id, "task": task, "attempt": attempt, "node": node,
               "leave_running": leave_running, "purpose": purpose, "migration_id": migration_id, "keep": keep,
               "state": REQUESTED, "files": [], "size": 0, "created_at": time.time(), "reason": None,
               "timings": {}, "attempts": 0, "last_error": None}
        self.col.insert_one(doc)
        return doc

    def get(self, ckpt_id: str) -> dict[str, Any] | None:
        return self.col.find_one({"_id": ckpt_id})

    def pending_on(self, node: str) -> list[dict[str, Any]]:
        return list(self.col.find({"node": node, "state": REQUESTED, "purpose": "user"}).sort("created_at", 1))

    def for_task(self, job_id: str, task: str | None, limit: int) -> list[dict[str, Any]]:
        q: dict[str, Any] = {"job_id": job_id}
        if task:
            q["task"] = task
        return list(self.col.find(q).sort("created_at", DESCENDING).limit(limit))

    def finish(self, ckpt_id: str, state: str, reason: str | None = None, **fields: Any) -> dict[str, Any] | None:
        return self.col.find_one_and_update(
            {"_id": ckpt_id, "state": REQUESTED},
            {"$set": {"state": state, "reason": reason, "done_at": time.time(), **fields}},
            return_document=ReturnDocument.AFTER,
        )

    def failed_attempt(self, ckpt_id: str, error: str) -> int | None:
        """Count a failed try of a checkpoint still REQUESTED; the tries so far, or None if it is not."""
        doc = self.col.find_one_and_update({"_id": ckpt_id, "state": REQUESTED},
                                           {"$inc": {"attempts": 1}, "$set": {"last_error": error}},
                                           projection={"attempts": 1}, return_document=ReturnDocument.AFTER)
        return None if doc is None else int(doc["attempts"])

    def delete(self, ckpt_id: str) -> bool:
        for f in self.files.find({"metadata.checkpoint": ckpt_id}):
            self.files.delete(f._id)
        return self.col.delete_one({"_id": ckpt_id}).deleted_count == 1

    def delete_for_migration(self, mig_id: str) -> int:
        """Delete every checkpoint taken for migration ``mig_id`` (with its files); the number deleted."""
        ids = [c["_id"] for c in self.col.find({"migration_id": mig_id, "state": {"$ne": REQUESTED}}, {"_id": 1})]
        return sum(self.delete(i) for i in ids)

    def used_bytes(self) -> int:
        """Bytes stored in checkpoint files right now (GridFS), uploads in progress included."""
        files = self.col.database["checkpoint_files.files"]
        rows = list(files.aggregate([{"$group": {"_id": None, "n": {"$sum": "$length"}}}]))
        return int(rows[0]["n"]) if rows else 0

    # ---- files ----------------------------------------------------------------------------------
    def upload(self, ckpt_id: str, directory: Path) -> list[dict[str, Any]]:
        """Store every regular file of a flat checkpoint directory; returns their manifest."""
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
        if len(entries) > MAX_FILES:
            raise CheckpointError(f"{len(entries)} files in a checkpoint is more than {MAX_FILES}")
        manifest = []
        for e in entries:
            if not e.is_file(follow_symlinks=False) or not SAFE_NAME.match(e.name):
                raise CheckpointError(f"unexpected entry {e.name!r} in the checkpoint directory")
            digest = hashlib.sha256()
            with open(e.path, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
            with open(e.path, "rb") as f:
                self.files.upload_from_stream(f"{ckpt_id}/{e.name}", f, metadata={
                    "checkpoint": ckpt_id, "name": e.name, "sha256": digest.hexdigest()})
            manifest.append({"name": e.name, "size": e.stat().st_size, "sha256": digest.hexdigest()})
        return manifest

    def download(self, ckpt: dict[str, Any], directory: Path) -> int:
        """Write the checkpoint's files into the empty ``directory``, checking every name, size and digest."""
        directory.mkdir(parents=True, exist_ok=True)
        if any(directory.iterdir()):
            raise CheckpointError(f"{directory} is not empty")
        total = 0
        for entry in ckpt["files"]:
            name = entry["name"]
            if not SAFE_NAME.match(name):
                raise CheckpointError(f"refusing checkpoint file name {name!r}")
            target = directory / name
            digest = hashlib.sha256()
            size = 0
            grid = self.files.open_download_stream_by_name(f"{ckpt['_id']}/{name}")
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                while chunk := grid.read(1 << 20):
                    size += len(chunk)
                    if size > entry["size"]:
                        raise CheckpointError(f"{name} is larger than its manifest says")
                    digest.update(chunk)
                    out.write(chunk)
            if size != entry["size"] or digest.hexdigest() != entry["sha256"]:
                raise CheckpointError(f"{name} does not match its manifest (size or SHA-256)")
            total += size
        return total
