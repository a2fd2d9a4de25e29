"""Worker records and resource claims (OpenStack placement style).

A worker document holds its capacity, its free cores and memory, and one *allocation* per task placed
on it (``allocations["<job_id>:<task>"] = {cores, mem, token, ports}``; bounded: each holds at least one
core). A claim is a conditional update on the worker's ``generation``: if anything changed since the
caller's snapshot the update matches nothing, the caller re-reads and either claims the same cores
(still free) or gives up and re-plans. A release is guarded by the allocation's token, so it happens
exactly once, and bumps the generation so no claim computed before it can overwrite it. Free cores
and memory are therefore never double-booked, never leaked by a lost race, and never negative.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from pymongo import ASCENDING, ReturnDocument
from pymongo.database import Database

from Common.metrics import CLAIMS, RELEASES
from Common.placement.cores import pick_cores  # the same contiguous-core rule as placement
from Common.store.events import EventLog

READY = "READY"  # takes new work
DRAINING = "DRAINING"  # alive, but no new work and its work is moved away (``drain`` is set)
DOWN = "DOWN"  # stopped heartbeating; its work is moved away
REMOVED = "REMOVED"  # left the Swarm; a tombstone so its Worker process knows to stop


def alloc_key(job_id: str, task: str) -> str:
    return f"{job_id}:{task}"


@dataclass(frozen=True)
class Alloc:
    job_id: str
    task: str
    cores: tuple[int, ...]
    mem: int
    token: str
    ports: tuple[str, ...] = ()  # host ports the task publishes ("3000/tcp"), held like its cores

    @property
    def key(self) -> str:
        return alloc_key(self.job_id, self.task)

    def doc(self) -> dict[str, Any]:
        return {"cores": list(self.cores), "mem": self.mem, "token": self.token, "at": time.time(),
                "ports": list(self.ports)}


def ports_in_use(doc: dict[str, Any]) -> set[str]:
    """The host ports the worker's allocations hold (a release gives them back with the allocation)."""
    return {p for a in (doc.get("allocations") or {}).values() for p in a.get("ports", [])}


class WorkerStore:
    max_claim_attempts = 8

    def __init__(self, db: Database, events: EventLog) -> None:
        self.col = db["workers"]
        self.hosts = db["hollow_hosts"]  # one heartbeat per hollow host, standing for all its nodes
        self.events = events

    def ensure_indexes(self) -> None:
        self.col.create_index([("state", ASCENDING)])

    # ---- registration and liveness ------------------------------------------------------------
    def register(self, name: str, cores: list[int], mem_total: int, info: dict[str, Any],
                 hollow: bool = False) -> dict[str, Any]:
        """Create or refresh a worker's record without disturbing its existing allocations.

        Free resources are recomputed as capacity minus allocations, under the generation guard.
        ``hollow`` marks an emulated node that runs no container (Worker/hollow.py).
        """
        now = time.time()
        self.col.update_one(
            {"_id": name},
            {"$setOnInsert": {"allocations": {}, "generation": 0, "registered_at": now,
                              "free_cores": list(cores), "mem_free": mem_total, "cores": list(cores),
                              "mem_total": mem_total}},
            upsert=True,
        )
        for _ in range(self.max_claim_attempts):
            doc = self.col.find_one({"_id": name})
            assert doc is not None
            used = {c for a in doc["allocations"].values() for c in a["cores"]}
            used_mem = sum(a["mem"] for a in doc["allocations"].values())
            if doc.get("state") == REMOVED:
                return doc
            update = {
                "cores": list(cores),
                "mem_total": mem_total,
                "free_cores": [c for c in cores if c not in used],
                "mem_free": mem_total - used_mem,
                "state": DRAINING if doc.get("drain") else READY,
                "heartbeat_at": now,
                "info": info,
                "hollow": hollow,
            }
            res = self.col.find_one_and_update(
                {"_id": name, "generation": doc["generation"]},
                {"$set": update, "$unset": {"forget_requested": ""}, "$inc": {"generation": 1}},
                return_document=ReturnDocument.AFTER,
            )
            if res is not None:
                if doc.get("state") != READY:
                    self.events.record("node_up", node=name, cores=len(cores), mem=mem_total)
                return res
        raise RuntimeError(f"worker {name}: registration kept racing with claims")

    def heartbeat(self, name: str, at: float | None = None) -> bool:
        res = self.col.update_one({"_id": name}, {"$set": {"heartbeat_at": at or time.time()}})
        return res.matched_count == 1

    # ---- hollow nodes (Worker/hollow.py) --------------------------------------------------------
    def insert_hollow(self, names: list[str], cores: list[int], mem_total: int, info: dict[str, Any]) -> int:
        """Register nodes that have no record yet in one write (thousands at a time); a name that exists
        meanwhile is skipped (its host registers it with ``register``). Returns how many were made."""
        from pymongo.errors import BulkWriteError

        now = time.time()
        docs = [{"_id": n, "allocations": {}, "generation": 1, "registered_at": now, "cores": list(cores),
                 "free_cores": list(cores), "mem_total": mem_total, "mem_free": mem_total, "state": READY,
                 "heartbeat_at": now, "info": info, "hollow": True} for n in names]
        if not docs:
            return 0
        try:
            made = len(self.col.insert_many(docs, ordered=False).inserted_ids)
        except BulkWriteError as exc:
            made = exc.details.get("nInserted", 0)
        self.events.record("node_up", node=info.get("prefix", "hollow"), nodes=made, cores=len(cores), mem=mem_total,
                           hollow=True)
        return made

    def heartbeat_host(self, host: str, at: float | None = None) -> None:
        """A hollow host's heartbeat: one write that keeps every node of that host alive (``info.prefix``).
        Writing each node's ``heartbeat_at`` instead costs ~0.25 ms per document on the embedded store:
        2.5 s of every 3 s for 10,000 nodes (BENCHMARKS.md)."""
        self.hosts.update_one({"_id": host}, {"$set": {"heartbeat_at": at or time.time()}}, upsert=True)

    def _live(self, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A hollow node's heartbeat is its host's, when that is later than its own."""
        if any(d.get("hollow") for d in docs):
            beats = {h["_id"]: h.get("heartbeat_at", 0.0) for h in self.hosts.find()}
            for d in docs:
                if d.get("hollow"):
                    host = (d.get("info") or {}).get("prefix")
                    d["heartbeat_at"] = max(d.get("heartbeat_at") or 0.0, beats.get(host, 0.0))
        return docs

    def hollow_among(self, names: list[str]) -> set[str]:
        return {d["_id"] for d in self.col.find({"_id": {"$in": names}, "hollow": True}, {"_id": 1})}

    def state_of(self, name: str) -> str | None:
        """The worker's state alone (None: not registered): the Worker's probe asks every few seconds, and
        its whole document (every allocation) is tens of KB at 250 EPMs per node."""
        doc = self.col.find_one({"_id": name}, {"state": 1})
        return None if doc is None else doc.get("state")

    def get(self, name: str) -> dict[str, Any] | None:
        doc = self.col.find_one({"_id": name})
        return None if doc is None else self._live([doc])[0]

    def all(self) -> list[dict[str, Any]]:
        return self._live(list(self.col.find().sort("_id", ASCENDING)))

    def ready(self) -> list[dict[str, Any]]:
        return self._live(list(self.col.find({"state": READY}).sort("_id", ASCENDING)))

    # ---- claims ------------------------------------------------------------------------------
    def claim(
        self, name: str, allocs: list[Alloc], snapshot: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """Atomically take exactly these cores and this memory for these tasks, or nothing.

        Returns the worker's new document, or None when it no longer has them (the caller re-plans).
        """
        want_cores = {c for a in allocs for c in a.cores}
        want_mem = sum(a.mem for a in allocs)
        want_ports = [p for a in allocs for p in a.ports]
        doc = snapshot
        for _ in range(self.max_claim_attempts):
            if doc is None:
                doc = self.col.find_one({"_id": name})
            # Host ports are guarded like cores: checked on this snapshot, written under its generation.
            if (doc is None or doc.get("state") != READY or not want_cores <= set(doc["free_cores"])
                    or want_mem > doc["mem_free"] or any(a.key in doc["allocations"] for a in allocs)
                    or len(set(want_ports)) < len(want_ports) or set(want_ports) & ports_in_use(doc)):
                CLAIMS.labels(name, "refused").inc()
                return None
            free = set(doc["free_cores"])
            update: dict[str, Any] = {
                "free_cores": sorted(free - want_cores),
                "mem_free": doc["mem_free"] - want_mem,
            }
            for a in allocs:
                update[f"allocations.{a.key}"] = a.doc()
            res = self.col.find_one_and_update(
                {"_id": name, "generation": doc["generation"]},
                {"$set": update, "$unset": {"forget_requested": ""}, "$inc": {"generation": 1}},
                return_document=ReturnDocument.AFTER,
            )
            if res is not None:
                CLAIMS.labels(name, "committed").inc()
                for a in allocs:
                    self.events.record("claim", a.job_id, task=a.task, node=name, cores=list(a.cores), mem=a.mem)
                return res
            CLAIMS.labels(name, "conflict").inc()
            doc = None  # lost a race: re-read and check again
        CLAIMS.labels(name, "refused").inc()
        return None

    def claim_many(self, claims: dict[str, tuple[list[Alloc], dict[str, Any]]]) -> dict[str, dict[str, Any]] | None:
        """``claim`` on several nodes in one round trip: each node's update is guarded by the generation
        of its snapshot, exactly as ``claim``'s, and sent together (an unordered bulk write). Returns each
        node's new document (computed: the update is known), or None when a snapshot no longer allows the
        claim or any node changed meanwhile; then whatever part did apply is released again (token-guarded)
        and nothing is held, so the caller re-reads and re-plans as after a lost race."""
        from pymongo import UpdateOne

        ops, after = [], {}
        for name, (allocs, doc) in claims.items():
            want_cores = {c for a in allocs for c in a.cores}
            want_mem = sum(a.mem for a in allocs)
            if (doc.get("state") != READY or not want_cores <= set(doc["free_cores"]) or want_mem > doc["mem_free"]
                    or any(a.key in doc["allocations"] for a in allocs)):
                CLAIMS.labels(name, "refused").inc()
                return None
            new_allocs = {a.key: a.doc() for a in allocs}
            update: dict[str, Any] = {"free_cores": sorted(set(doc["free_cores"]) - want_cores),
                                      "mem_free": doc["mem_free"] - want_mem,
                                      **{f"allocations.{k}": v for k, v in new_allocs.items()}}
            ops.append(UpdateOne({"_id": name, "generation": doc["generation"]},
                                 {"$set": update, "$inc": {"generation": 1}}))
            after[name] = {**doc, "free_cores": update["free_cores"], "mem_free": update["mem_free"],
                           "allocations": {**doc["allocations"], **new_allocs}, "generation": doc["generation"] + 1}
        if not ops:
            return {}
        if self.col.bulk_write(ops, ordered=False).modified_count == len(ops):
            for name, (allocs, _doc) in claims.items():
                CLAIMS.labels(name, "committed").inc()
                for a in allocs:
                    self.events.record("claim", a.job_id, task=a.task, node=name, cores=list(a.cores), mem=a.mem)
            return after
        for name, (allocs, _doc) in claims.items():  # some node changed: give back what did apply
            CLAIMS.labels(name, "conflict").inc()
            for a in allocs:
                self.release(name, a.key, a.token)
        return None

    def resize(self, name: str, key: str, token: str, cores: int, mem: int,
               exact: list[int] | None = None) -> dict[str, Any] | str:
        """Change one allocation in place: keep what it can of its cores, take contiguous free ones next to
        them when it grows (or exactly ``exact``). Returns the new allocation, or why it cannot."""
        for _ in range(self.max_claim_attempts):
            doc = self.col.find_one({"_id": name})
            if doc is None or doc.get("state") not in (READY, DRAINING):
                return f"worker {name} is not up"
            alloc = doc.get("allocations", {}).get(key)
            if alloc is None or alloc.get("token") != token:
                return "the task holds no claim on its node any more"
            held, free = list(alloc["cores"]), list(doc["free_cores"])
            if exact is not None:
                foreign = sorted(set(exact) - set(held) - set(free))
                if foreign:
                    return f"cores {foreign} on {name} are taken"
                new_cores = sorted(exact)
            elif cores <= len(held):
                new_cores = sorted(held)[:cores]
            else:
                extra = pick_cores(sorted(free), cores - len(held))
                if extra is None:
                    return (f"needs {cores - len(held)} more cores on {name}, which has {len(free)} free "
                            f"(the task holds {len(held)})")
                new_cores = sorted(held + extra)
            mem_free = doc["mem_free"] + alloc["mem"] - mem
            if mem_free < 0:
                return f"needs {mem - alloc['mem']} more bytes of memory on {name}, which has {doc['mem_free']} free"
            new_free = sorted((set(free) | set(held)) - set(new_cores))
            new_alloc = {**alloc, "cores": new_cores, "mem": mem}
            res = self.col.update_one(
                {"_id": name, "generation": doc["generation"]},
                {"$set": {"free_cores": new_free, "mem_free": mem_free, f"allocations.{key}": new_alloc},
                 "$inc": {"generation": 1}},
            )
            if res.modified_count == 1:
                job_id, _, task = key.partition(":")
                self.events.record("resize", job_id, task=task, node=name, cores=new_cores, mem=mem)
                return new_alloc
        return "the node's claims kept changing; retry"

    def release(self, name: str, key: str, token: str) -> bool:
        """Give back one allocation, exactly once (guarded by its token). True if this call released it."""
        doc = self.col.find_one({"_id": name, f"allocations.{key}.token": token}, {f"allocations.{key}": 1})
        if doc is None:
            return False
        alloc = doc["allocations"][key]
        res = self.col.update_one(
            {"_id": name, f"allocations.{key}.token": token},
            {
                "$unset": {f"allocations.{key}": ""},
                "$push": {"free_cores": {"$each": alloc["cores"], "$sort": 1}},
                "$inc": {"mem_free": alloc["mem"], "generation": 1},
            },
        )
        if res.modified_count == 1:
            RELEASES.labels(name).inc()
            job_id, _, task = key.partition(":")
            self.events.record("release", job_id, task=task, node=name, cores=alloc["cores"], mem=alloc["mem"])
            return True
        return False

    def release_many(self, name: str, items: list[tuple[str, str]]) -> list[str]:
        """Give back several allocations of one node in one write, each exactly once (token-guarded).

        Applies whole or not at all; when the node changed meanwhile each is released on its own.
        Returns the keys this call released."""
        doc = self.col.find_one({"_id": name}, {"allocations": 1})
        held = (doc or {}).get("allocations") or {}
        mine = {k: held[k] for k, token in items if k in held and held[k].get("token") == token}
        if not mine:
            return []
        if len(mine) == 1:
            (key, alloc), = mine.items()
            return [key] if self.release(name, key, alloc["token"]) else []
        guard: dict[str, Any] = {"_id": name, **{f"allocations.{k}.token": a["token"] for k, a in mine.items()}}
        res = self.col.update_one(guard, {
            "$unset": {f"allocations.{k}": "" for k in mine},
            "$push": {"free_cores": {"$each": sorted(c for a in mine.values() for c in a["cores"]), "$sort": 1}},
            "$inc": {"mem_free": sum(a["mem"] for a in mine.values()), "generation": 1},
        })
        if res.modified_count != 1:
            return [k for k, a in mine.items() if self.release(name, k, a["token"])]
        RELEASES.labels(name).inc(len(mine))
        self.events.record_many([("release", k.partition(":")[0], {"task": k.partition(":")[2], "node": name,
                                                                   "cores": a["cores"], "mem": a["mem"]})
                                 for k, a in mine.items()])
        return list(mine)

    # ---- liveness and maintenance ------------------------------------------------------------
    def mark_down(self, name: str, stale_before: float) -> bool:
        """READY/DRAINING -> DOWN, only if its last heartbeat is still older than ``stale_before``."""
        res = self.col.update_one(
            {"_id": name, "state": {"$in": [READY, DRAINING]}, "heartbeat_at": {"$lt": stale_before}},
            {"$set": {"state": DOWN, "down_at": time.time()}, "$inc": {"generation": 1}},
        )
        if res.modified_count == 1:
            self.events.record("node_down", node=name)
            return True
        return False

    def set_drain(self, name: str, drain: bool) -> dict[str, Any] | None:
        """Drain (no new work; work moved away) or undrain a live worker. None unless READY/DRAINING."""
        return self.col.find_one_and_update(
            {"_id": name, "state": {"$in": [READY, DRAINING]}},
            {"$set": {"drain": drain, "state": DRAINING if drain else READY}, "$inc": {"generation": 1}},
            return_document=ReturnDocument.AFTER,
        )

    def request_removal(self, name: str) -> dict[str, Any] | None:
        return self.col.find_one_and_update(
            {"_id": name, "state": {"$ne": REMOVED}},
            {"$set": {"drain": True, "remove_requested": True,
                      "state": DRAINING}, "$inc": {"generation": 1}},
            return_document=ReturnDocument.AFTER,
        )

    def forget(self, name: str) -> bool:
        """The operator took this node away for good (``cluster down``): delete its record now if it holds
        no claim (True); otherwise mark it DOWN and to be forgotten, so Discovery moves its work away and
        then deletes it (``purge_forgotten``). A Worker registering again under the name cancels this."""
        if self.col.delete_one({"_id": name, "allocations": {}}).deleted_count == 1:
            self.events.record("node_forgotten", node=name)
            return True
        self.col.update_one({"_id": name, "state": {"$ne": REMOVED}},
                            {"$set": {"state": DOWN, "forget_requested": True, "down_at": time.time()},
                             "$inc": {"generation": 1}})
        return False

    def purge_forgotten(self) -> list[str]:
        """Delete the records of forgotten nodes whose claims are all gone."""
        gone = []
        for doc in self.col.find({"forget_requested": True, "allocations": {}}, {"_id": 1}):
            if self.col.delete_one({"_id": doc["_id"], "forget_requested": True, "allocations": {}}).deleted_count:
                self.events.record("node_forgotten", node=doc["_id"])
                gone.append(doc["_id"])
        return gone

    def mark_removed(self, name: str, forced: bool = False) -> None:
        self.col.update_one({"_id": name}, {"$set": {"state": REMOVED, "removed_at": time.time()},
                                            "$inc": {"generation": 1}})
        self.events.record("node_removed", node=name, forced=forced)
