"""The MongoDB access layer: the only code that knows collection names and document shapes.

``Store.connect(cfg)`` gives one handle with ``jobs``, ``workers``, ``networks``, ``events`` and
``settings`` repositories, and ``evms`` (EVM records). Every write that races another actor is a conditional update.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pymongo
from pymongo.database import Database

from Common.config import Config
from Common.metrics import mongo_listener
from Common.store.checkpoints import CheckpointStore
from Common.store.credentials import client_options
from Common.store.events import EventLog
from Common.store.evms import EvmStore
from Common.store.jobs import JobStore
from Common.store.migrations import MigrationStore
from Common.store.networks import NetworkStore
from Common.store.settings import SettingsStore
from Common.store.workers import WorkerStore


def embedded_options(cfg: Config) -> dict[str, Any]:
    """Client options for the embedded SecantusDB only; a ``MONGO_URI`` deployment keeps pymongo's defaults.

    Retryable writes are off against the embedded server: it keeps every retryable-write record in memory
    and, once it holds 10,000 of them, sorts them all on every write, so each insert became 10x slower
    after ~10,000 writes (BENCHMARKS.md, FrontEnd acceptance). It is a single local process on loopback,
    where the failover those retries exist for cannot happen; a write that fails anyway is answered 503 to
    the client or redone by the actor's level-triggered sweep, as any other failure is.
    """
    return {} if cfg.mongo.uri else {"retryWrites": False}


class Store:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.events = EventLog(db)
        self.jobs = JobStore(db, self.events)
        self.workers = WorkerStore(db, self.events)
        self.networks = NetworkStore(db)
        self.settings = SettingsStore(db)
        self.evms = EvmStore(db, self.events)
        self.migrations = MigrationStore(db)
        self.checkpoints = CheckpointStore(db)

    @classmethod
    def connect(cls, cfg: Config, app_name: str = "rswarm", role: str | None = None) -> Store:
        """Connect as ``role`` ("control", "worker" or "admin"; default: "worker" for a Worker's app name,
        else "control"), with that role's credentials from its 0600 file (Common/store/credentials.py)."""
        role = role or ("worker" if app_name.startswith("worker") else "control")
        client: pymongo.MongoClient = pymongo.MongoClient(
            cfg.mongo_uri,
            appname=app_name,
            serverSelectionTimeoutMS=int(cfg.mongo.timeout_seconds * 1000),
            connectTimeoutMS=int(cfg.mongo.timeout_seconds * 1000),
            # A frozen server (SIGSTOP) accepts connections and never answers: without a socket timeout
            # every call would hang for ever. 4x the timeout leaves room for slow big queries.
            socketTimeoutMS=int(cfg.mongo.timeout_seconds * 4000),
            tz_aware=True,
            event_listeners=[mongo_listener()],  # rswarm_mongo_operation_seconds
            **embedded_options(cfg),
            **client_options(cfg, role),
        )
        return cls(client[cfg.mongo.database])

    def ensure_indexes(self) -> None:
        self.jobs.ensure_indexes()
        self.workers.ensure_indexes()
        self.networks.ensure_indexes()
        self.events.ensure_indexes()
        self.evms.ensure_indexes()
        self.migrations.ensure_indexes()
        self.checkpoints.ensure_indexes()

    def ensure_indexes_retrying(self, log: logging.Logger) -> None:
        """``ensure_indexes`` at an actor's start, waiting (backoff 0.5 s doubling to 10 s) while MongoDB is
        away, so that an actor (re)started during a database outage waits for it instead of dying."""
        delay = 0.5
        while True:
            try:
                self.ensure_indexes()
                return
            except pymongo.errors.PyMongoError as exc:
                log.warning("MongoDB unavailable at start (%s); retrying in %.1fs", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def ping(self) -> bool:
        try:
            self.db.command("ping")
            return True
        except pymongo.errors.PyMongoError:
            return False

    def close(self) -> None:
        self.db.client.close()
