"""EVM records: one document per EVM (the seed's VM data model), plus per-job counters and batches.

``evms``         one per EVM: id, name, tenant, vpc, subnet, security group, ip, mac, gateway, host
                 ip/mac/name (its EPM container on the job network), EPM, node, job, state, times.
                 ``ip_key`` ("<job>|<ip>", unique, sparse) exists while the EVM is not DELETED, so an
                 address is never held twice within a job and is free again once its EVM is gone.
``evm_batches``  one per creation request (the job's initial EVMs, each POST): distribution and the
                 per-EPM rates the agents pace by.
``evm_jobs``     one per job: the next EVM number, the batch counter, a generation per EPM that
                 every change of the EPM's desired set bumps and a count per EPM of the agent's reports
                 applied (``gens`` and ``seen``: the Worker polls both to rewrite an EPM's desired
                 file when, and only when, its records moved);
                 ``gen``, the job-wide set generation, with the lease and ``spec`` (distribution and
                 rate) of resizes (PATCH .../evms: set_state, set_guard, set_release).

States only move forward (``Common.evmstates``); every report is a conditional update.
"""

from __future__ import annotations

import time
from typing import Any

from pymongo import ASCENDING, DESCENDING, ReturnDocument, UpdateOne
from pymongo.database import Database
from pymongo.errors import BulkWriteError

from Common.evmspec import Addition, Pool, allocate, mac_for, split_rate
from Common.evmstates import EVM_LIVE, EvmState, evm_states_before
from Common.store.events import EventLog

LIVE = sorted(s.value for s in EVM_LIVE)
INSERT_CHUNK = 5000
ALLOC_ROUNDS = 5


class PoolExhausted(Exception):
    """The job's subnet has no free address left for an EVM (a concurrent addition took it)."""


def evm_id(job_id: str, seq: int) -> str:
    return f"{job_id}.v{seq}"


def evm_name(seq: int) -> str:
    return f"vm{seq}"


def rates_on(batch_rates: dict[str, dict[str, Any]], epm: str) -> dict[str, dict[str, Any]]:
    """Each batch's creation rate on one EPM, from ``EvmStore.batch_rates`` (sequential where it names none)."""
    return {batch: rates.get(epm) or {"kind": "sequential"} for batch, rates in batch_rates.items()}


class EvmStore:
    def __init__(self, db: Database, events: EventLog) -> None:
        self.col = db["evms"]
        self.batches = db["evm_batches"]
        self.meta = db["evm_jobs"]
        self.events = events

    def ensure_indexes(self) -> None:
        self.col.create_index([("job_id", ASCENDING), ("seq", ASCENDING)], unique=True)
        self.col.create_index([("job_id", ASCENDING), ("state", ASCENDING), ("seq", ASCENDING)])
        self.col.create_index([("job_id", ASCENDING), ("epm", ASCENDING), ("seq", ASCENDING)])
        self.col.create_index([("job_id", ASCENDING), ("epm", ASCENDING), ("state", ASCENDING)])
        self.col.create_index([("ip_key", ASCENDING)], unique=True, sparse=True)
        self.col.create_index([("state", ASCENDING), ("job_id", ASCENDING)])
        self.batches.create_index([("job_id", ASCENDING), ("created_at", ASCENDING)])

    # ---- creation -----------------------------------------------------------------------------
    def _reserve(self, job_id: str, n: int) -> tuple[int, str]:
        """Numbers for ``n`` new EVMs and the batch's name, atomically (concurrent additions never collide)."""
        doc = self.meta.find_one_and_update(
            {"_id": job_id},
            {"$inc": {"next_seq": n, "batch_count": 1}, "$setOnInsert": {"created_at": time.time(), "gens": {}}},
            upsert=True, return_document=ReturnDocument.AFTER,
        )
        return doc["next_seq"] - n + 1, f"b{doc['batch_count'] - 1}"

    @staticmethod
    def _record(job_id: str, seq: int, batch: str, epm: str, cfg: dict[str, Any], labels: dict[str, str],
                ip: str, attempt: int, now: float) -> dict[str, Any]:
        return {
            "_id": evm_id(job_id, seq), "job_id": job_id, "seq": seq, "name": evm_name(seq), "batch": batch,
            "epm": epm, "tenant": labels["tenant"], "vpc": labels["vpc"], "security_group": labels["security_group"],
            "subnet": cfg["subnet"], "prefix": cfg["prefix"], "gateway": cfg["gateway"], "devices": cfg["devices"],
            "ip": ip, "ip_key": f"{job_id}|{ip}", "mac": mac_for(job_id, ip),
            "state": EvmState.PENDING.value, "attempt": attempt, "delete_requested": False,
            "node": None, "container": None, "host_ip": None, "host_mac": None, "host_name": None,
            "error": None, "create_ms": None, "delete_ms": None,
            "times": {EvmState.PENDING.value: now}, "created_at": now,
        }

    def _insert(self, docs: list[dict[str, Any]]) -> list[int]:
        """Insert; return the indexes of documents refused because their address was taken meanwhile."""
        refused: list[int] = []
        for start in range(0, len(docs), INSERT_CHUNK):
            chunk = docs[start:start + INSERT_CHUNK]
            try:
                self.col.insert_many(chunk, ordered=False)
            except BulkWriteError as exc:
                for err in exc.details.get("writeErrors", []):
                    where = str(err.get("errmsg", "")) + str(err.get("keyPattern"))
                    if err.get("code") != 11000 or "ip_key" not in where:
                        raise
                    refused.append(start + err["index"])
        return refused

    def insert_initial(self, job: dict[str, Any]) -> int:
        """The records of a new job's EVMs (batch b0), written before the job itself so it never lacks them."""
        job_id = job["_id"]
        epms = [(name, t["evms"]) for name, t in job["tasks"].items() if t.get("evms")]
        total = sum(cfg["count"] for _, cfg in epms)
        first, batch = self._reserve(job_id, total)
        now = time.time()
        plan = job.get("evms") or {}
        self.batches.insert_one({"_id": f"{job_id}:{batch}", "job_id": job_id, "batch": batch, "count": total,
                                 "counts": {n: c["count"] for n, c in epms}, "distribution": plan.get("distribution"),
                                 "rate": plan.get("rate"), "rates": {n: c["rate"] for n, c in epms},
                                 "created_at": now})
        used: dict[str, set[str]] = {}
        docs: list[dict[str, Any]] = []
        seq = first
        for name, cfg in epms:
            pool = Pool(cfg["subnet"], cfg["gateway"])
            taken = used.setdefault(pool.subnet, set())
            ips = allocate(pool, taken, cfg["count"])
            taken.update(ips)
            labels = {k: cfg[k] for k in ("vpc", "tenant", "security_group")}
            for ip in ips:
                docs.append(self._record(job_id, seq, batch, name, cfg, labels, ip, 0, now))
                seq += 1
        if self._insert(docs):
            raise RuntimeError(f"{job_id}: a new job's EVM addresses collided")  # a fresh job owns its subnet
        return total

    def used_addresses(self, job_id: str, subnet: str) -> set[str]:
        return {d["ip"] for d in self.col.find({"job_id": job_id, "subnet": subnet, "ip_key": {"$exists": True}},
                                               {"ip": 1, "_id": 0})}

    def add(self, job: dict[str, Any], addition: Addition) -> dict[str, Any]:
        """Record a new batch of EVMs for a placed or waiting job. PoolExhausted when addresses ran out."""
        job_id = job["_id"]
        counts = {e: n for e, n in addition.counts.items() if n > 0}
        cfgs = {e: job["tasks"][e]["evms"] for e in counts}
        first, batch = self._reserve(job_id, addition.count)
        now = time.time()
        rates = split_rate(addition.rate, counts)
        self.batches.insert_one({"_id": f"{job_id}:{batch}", "job_id": job_id, "batch": batch,
                                 "count": addition.count, "counts": counts,
                                 "distribution": addition.distribution.doc(), "rate": addition.rate.doc(),
                                 "rates": rates, "created_at": now})
        pending: list[tuple[int, str]] = []  # (seq, epm) still without an address
        seq = first
        for epm, n in counts.items():
            for _ in range(n):
                pending.append((seq, epm))
                seq += 1
        try:
            for _ in range(ALLOC_ROUNDS):
                if not pending:
                    break
                docs = []
                by_pool: dict[str, list[tuple[int, str]]] = {}
                for s, epm in pending:
                    by_pool.setdefault(cfgs[epm]["subnet"], []).append((s, epm))
                for subnet, members in by_pool.items():
                    cfg = cfgs[members[0][1]]
                    try:
                        ips = allocate(Pool(subnet, cfg["gateway"]), self.used_addresses(job_id, subnet), len(members))
                    except ValueError as exc:
                        raise PoolExhausted(str(exc)) from None
                    for (s, epm), ip in zip(members, ips, strict=True):
                        labels = {k: addition.labels.get(k, cfgs[epm][k]) for k in ("vpc", "tenant", "security_group")}
                        attempt = job["tasks"][epm].get("attempt", 0)
                        docs.append(self._record(job_id, s, batch, epm, cfgs[epm], labels, ip, attempt, now))
                refused = set(self._insert(docs))
                pending = [(d["seq"], d["epm"]) for i, d in enumerate(docs) if i in refused]
            if pending:
                raise PoolExhausted(f"addresses kept being taken by concurrent additions to {job_id}")
        except Exception:
            self.col.delete_many({"job_id": job_id, "batch": batch})
            self.batches.delete_one({"_id": f"{job_id}:{batch}"})
            raise
        self.bump(job_id, list(counts))
        self.events.record("evms_added", job_id, batch=batch, count=addition.count, counts=counts)
        return {"batch": batch, "count": addition.count, "counts": counts, "first": first, "last": seq - 1}

    # ---- reading ------------------------------------------------------------------------------
    def get(self, eid: str) -> dict[str, Any] | None:
        return self.col.find_one({"_id": eid})

    def page(self, job_id: str, state: str | None, epm: str | None, limit: int,
             after: int | None) -> list[dict[str, Any]]:
        query: dict[str, Any] = {"job_id": job_id}
        if state:
            query["state"] = state
        if epm:
            query["epm"] = epm
        if after is not None:
            query["seq"] = {"$gt": after}
        return list(self.col.find(query).sort("seq", ASCENDING).limit(limit))

    def epm_vms(self, job_id: str, epm: str, limit: int, after: int | None,
                state: str | None = None) -> list[dict[str, Any]]:
        """A page of one EPM's EVMs by number: its live ones (not DELETED), or those in ``state``."""
        query: dict[str, Any] = {"job_id": job_id, "epm": epm, "state": state or {"$in": LIVE}}
        if after is not None:
            query["seq"] = {"$gt": after}
        return list(self.col.find(query).sort("seq", ASCENDING).limit(limit))

    def epm_host(self, job_id: str, epm: str) -> dict[str, Any]:
        """The EPM's own address and MAC on the job network, as its agent last reported them."""
        doc = self.col.find_one({"job_id": job_id, "epm": epm, "host_ip": {"$ne": None}},
                                {"host_ip": 1, "host_mac": 1, "_id": 0}, sort=[("seq", DESCENDING)])
        return {"ip": (doc or {}).get("host_ip"), "mac": (doc or {}).get("host_mac")}

    def wanted_counts(self, job_id: str) -> dict[str, int]:
        """Live EVMs not being deleted, per EPM (what a job's EVM set holds once deletions are done)."""
        out: dict[str, int] = {}
        for d in self.col.aggregate([{"$match": {"job_id": job_id, "state": {"$in": LIVE},
                                                 "delete_requested": False}},
                                     {"$group": {"_id": "$epm", "n": {"$sum": 1}}}]):
            out[d["_id"]] = d["n"]
        return out

    def live_counts(self, job_id: str) -> dict[str, int]:
        """Non-deleted EVMs per EPM (what occupies its memory, bridge ports and addresses)."""
        out: dict[str, int] = {}
        for d in self.col.aggregate([{"$match": {"job_id": job_id, "state": {"$in": LIVE}}},
                                     {"$group": {"_id": "$epm", "n": {"$sum": 1}}}]):
            out[d["_id"]] = d["n"]
        return out

    def summary(self, job_id: str) -> dict[str, Any]:
        """Counts per state and per EPM; ``wanted`` are live EVMs not being deleted, ``ready`` those READY."""
        by_epm: dict[str, dict[str, int]] = {}
        by_state: dict[str, int] = {s.value: 0 for s in EvmState}
        wanted = ready = deleting = 0
        for d in self.col.aggregate([{"$match": {"job_id": job_id}},
                                     {"$group": {"_id": {"epm": "$epm", "state": "$state", "del": "$delete_requested"},
                                                 "n": {"$sum": 1}}}]):
            key = d["_id"]
            epm, state, n, deleted = key.get("epm"), key.get("state"), d["n"], bool(key.get("del"))
            by_state[state] = by_state.get(state, 0) + n
            per = by_epm.setdefault(epm, {s.value: 0 for s in EvmState})
            per[state] = per.get(state, 0) + n
            if state in LIVE:
                if deleted:
                    deleting += n
                else:
                    wanted += n
                    ready += n if state == EvmState.READY.value else 0
        errors = [{"id": d["_id"], "epm": d["epm"], "error": d.get("error")}
                  for d in self.col.find({"job_id": job_id, "state": EvmState.ERROR.value},
                                         {"epm": 1, "error": 1}).sort("seq", ASCENDING).limit(5)]
        return {"wanted": wanted, "ready": ready, "deleting": deleting, "by_state": by_state, "by_epm": by_epm,
                "errors": errors}

    # ---- deletion and labels (FrontEnd) -------------------------------------------------------
    def request_delete(self, job_id: str, epm: str | None = None, count: int | None = None,
                       ids: list[str] | None = None) -> dict[str, int]:
        """Mark EVMs for deletion (newest first when ``count`` is given). Those no agent has yet are
        DELETED at once; the others are removed by their agent, which reports DELETED."""
        query: dict[str, Any] = {"job_id": job_id, "state": {"$in": LIVE}, "delete_requested": False}
        if epm:
            query["epm"] = epm
        if ids is not None:
            query["_id"] = {"$in": ids}
        if count is not None:
            chosen = [d["_id"] for d in self.col.find(query, {"_id": 1}).sort("seq", DESCENDING).limit(count)]
            query = {"_id": {"$in": chosen}, "delete_requested": False}
        epms = self.col.distinct("epm", query)
        now = time.time()
        marked = self.col.update_many(query, {"$set": {"delete_requested": True, "delete_requested_at": now}})
        done_query = {**{k: v for k, v in query.items() if k != "delete_requested"},
                      "delete_requested": True, "state": EvmState.PENDING.value}
        done = self.col.update_many(done_query, {"$set": {"state": EvmState.DELETED.value,
                                                          f"times.{EvmState.DELETED.value}": now},
                                                 "$unset": {"ip_key": ""}})
        self.bump(job_id, epms)
        self.events.record("evms_delete_requested", job_id, epm=epm, count=marked.modified_count)
        return {"requested": marked.modified_count, "deleted_at_once": done.modified_count}

    def patch_labels(self, eid: str, labels: dict[str, str]) -> dict[str, Any] | None:
        doc = self.col.find_one_and_update(
            {"_id": eid, "state": {"$in": LIVE}},
            {"$set": {**labels, "updated_at": time.time()}},
            return_document=ReturnDocument.AFTER,
        )
        if doc is not None and "vpc" in labels:
            # The EPMs' VPC plugs and forwarding entries follow at once (Worker/evms.py polls ``gens``); the
            # job-wide ``gen`` stays: the set itself did not change.
            self.meta.update_one({"_id": doc["job_id"]}, {"$inc": {f"gens.{doc['epm']}": 1}})
        return doc

    # ---- the Worker's side --------------------------------------------------------------------
    def bump(self, job_id: str, epms: list[str]) -> None:
        # ``gen`` moves with every change of the job's set: the guard of PATCH .../evms (set_guard).
        if epms:
            self.meta.update_one({"_id": job_id}, {"$inc": {"gen": 1, **{f"gens.{e}": 1 for e in epms}}})

    # ---- changing the whole set (PATCH .../evms) ------------------------------------------------
    def set_state(self, job_id: str) -> dict[str, Any]:
        """The job's set generation and stored set spec (distribution, rate), read before planning a change."""
        doc = self.meta.find_one_and_update({"_id": job_id}, {"$inc": {"gen": 0}}, upsert=True,
                                            return_document=ReturnDocument.AFTER)
        return {"gen": doc.get("gen", 0), "spec": doc.get("spec") or {}, "lease": doc.get("lease")}

    def set_guard(self, job_id: str, gen: int, spec: dict[str, Any], lease_seconds: float = 60.0) -> bool:
        """Take the right to change the job's set, planned from generation ``gen``. False when the set
        changed since (an addition, a deletion, another update) or another update holds the lease; a
        crashed holder's lease expires after ``lease_seconds``."""
        now = time.time()
        doc = self.meta.find_one_and_update(
            {"_id": job_id, "gen": gen, "$or": [{"lease": None}, {"lease": {"$lt": now}}]},
            {"$inc": {"gen": 1}, "$set": {"lease": now + lease_seconds, "spec": spec}},
        )
        return doc is not None

    def set_release(self, job_id: str) -> None:
        self.meta.update_one({"_id": job_id}, {"$set": {"lease": None}, "$inc": {"gen": 1}})

    def versions(self, job_ids: list[str]) -> dict[str, tuple[dict[str, int], dict[str, int]]]:
        """Per job, in one query: each EPM's set generation (``gens``: EVMs added, deleted, relabelled) and its
        report count (``seen``: Discovery applied reports of its agent, so the recorded states moved)."""
        return {d["_id"]: (d.get("gens") or {}, d.get("seen") or {})
                for d in self.meta.find({"_id": {"$in": job_ids}}, {"gens": 1, "seen": 1})}

    def for_epm(self, job_id: str, epm: str) -> list[dict[str, Any]]:
        """What the EPM's agent should hold: its live EVMs with their recorded state."""
        return self.for_epms(job_id, [epm])[epm]

    def for_epms(self, job_id: str, epms: list[str]) -> dict[str, list[dict[str, Any]]]:
        """``for_epm`` for several EPMs of one job in one query (a Worker's pass rewrites every due EPM of a
        job at once), each EPM's list in ``seq`` order."""
        out: dict[str, list[dict[str, Any]]] = {e: [] for e in epms}
        for d in self.col.find({"job_id": job_id, "epm": {"$in": list(epms)}, "state": {"$in": LIVE}},
                               {"_id": 0, "epm": 1, "seq": 1, "ip": 1, "mac": 1, "batch": 1, "state": 1,
                                "delete_requested": 1, "attempt": 1, "vpc": 1}).sort("seq", ASCENDING):
            out[d.pop("epm")].append(d)
        return out

    def vpc_members(self, job_id: str) -> list[dict[str, Any]]:
        """Every live EVM of the job with its VPC, MAC and EPM: the VPC forwarding entries (Worker/evms.py)."""
        return list(self.col.find({"job_id": job_id, "state": {"$in": LIVE}},
                                  {"_id": 0, "mac": 1, "epm": 1, "vpc": 1}))

    def batch_rates(self, job_id: str) -> dict[str, dict[str, Any]]:
        """Each of the job's batches: its creation rate on each EPM (``rates``), by batch. A batch document
        is never changed once inserted, so a reader may keep this until a record names a batch it lacks."""
        docs = self.batches.find({"job_id": job_id}, {"batch": 1, "rates": 1})
        return {d["batch"]: d.get("rates") or {} for d in docs}

    def adopt(self, job_id: str, epm: str, attempt: int) -> int:
        """Bind an EPM's EVMs to its new attempt (a new container): they start again at PENDING.

        Not a backward transition: like a task's new attempt, reports about the old one no longer match.
        Those that were being deleted are simply gone with the old container.
        """
        now = time.time()
        old = {"job_id": job_id, "epm": epm, "attempt": {"$lt": attempt}, "state": {"$in": LIVE}}
        self.col.update_many({**old, "delete_requested": True},
                             {"$set": {"state": EvmState.DELETED.value, f"times.{EvmState.DELETED.value}": now},
                              "$unset": {"ip_key": ""}})
        res = self.col.update_many(old, {"$set": {"attempt": attempt, "state": EvmState.PENDING.value,
                                                  "times": {EvmState.PENDING.value: now}, "error": None,
                                                  "node": None, "container": None, "create_ms": None}})
        return res.modified_count

    # ---- Discovery's side ---------------------------------------------------------------------
    def apply_reports(self, job_id: str, epm: str, attempt: int, node: str, container: str,
                      host: dict[str, Any], items: list[list[Any]]) -> int:
        """Apply an agent's reports ([seq, state, {state: time}, ms, error]) forward-only. Returns how many moved."""
        ops = []
        now = time.time()
        for seq, state, times, ms, error in items:
            st = EvmState(state)
            update: dict[str, Any] = {"state": st.value, "node": node, "container": container, "updated_at": now}
            for name, at in times.items():
                update[f"times.{name}"] = at
            for key in ("ip", "mac", "name"):
                if host.get(key):
                    update[f"host_{key}"] = host[key]
            if st in (EvmState.READY, EvmState.ERROR) and ms is not None:
                update["create_ms"] = ms
            if st is EvmState.ERROR:
                update["error"] = error or "unknown error"
            doc: dict[str, Any] = {"$set": update}
            if st is EvmState.DELETED:
                if ms is not None:
                    update["delete_ms"] = ms
                doc["$unset"] = {"ip_key": ""}
            ops.append(UpdateOne({"_id": evm_id(job_id, seq), "epm": epm, "attempt": attempt,
                                  "state": {"$in": evm_states_before(st)}}, doc))
        if not ops:
            return 0
        moved = self.col.bulk_write(ops, ordered=False).modified_count
        # A report of an outcome, even one that moved nothing (a resend: the agent's desired file shows older
        # states than MongoDB), tells the EPM's Worker to rewrite that file from the records (Worker/evms.py).
        # DEPLOYING alone does not: the agent never compares against it, and a rewrite costs a query.
        if any(item[1] != EvmState.DEPLOYING.value for item in items):
            self.meta.update_one({"_id": job_id}, {"$inc": {f"seen.{epm}": 1}})
        return moved

    def finish(self, job_id: str, reason: str, epm: str | None = None, attempt: int | None = None) -> int:
        """Every live EVM of a job (or of one EPM, up to ``attempt``) is DELETED: its EPM is gone for good."""
        query: dict[str, Any] = {"job_id": job_id, "state": {"$in": LIVE}}
        if epm is not None:
            query["epm"] = epm
        if attempt is not None:
            query["attempt"] = {"$lte": attempt}
        now = time.time()
        res = self.col.update_many(query, {"$set": {"state": EvmState.DELETED.value,
                                                    f"times.{EvmState.DELETED.value}": now,
                                                    "deleted_reason": reason},
                                           "$unset": {"ip_key": ""}})
        if res.modified_count:
            self.events.record("evms_finished", job_id, epm=epm, count=res.modified_count, reason=reason)
        return res.modified_count

    def live_jobs(self) -> list[str]:
        return list(self.col.distinct("job_id", {"state": {"$in": LIVE}}))

    def forget_job(self, job_id: str) -> None:
        """Records of a job that does not exist (its insertion failed half-way)."""
        self.col.delete_many({"job_id": job_id})
        self.batches.delete_many({"job_id": job_id})
        self.meta.delete_one({"_id": job_id})

    def first_created(self, job_id: str) -> float | None:
        doc = self.meta.find_one({"_id": job_id}, {"created_at": 1})
        return None if doc is None else doc.get("created_at")
