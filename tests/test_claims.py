"""Claims against a real MongoDB wire server: processes racing never double-book, leak or go negative."""

from __future__ import annotations

import multiprocessing as mp
import random
import uuid

import pymongo
import pytest

from Common.store.events import EventLog
from Common.store.workers import Alloc, WorkerStore
from tests.helpers import admin_uri

pytestmark = pytest.mark.system

CORES = list(range(8))
MEM = 8 * 2**30


def _store(uri: str, db: str) -> WorkerStore:
    return WorkerStore(pymongo.MongoClient(uri)[db], EventLog(pymongo.MongoClient(uri)[db]))


def _racer(uri: str, db: str, seed: int, rounds: int, out: mp.Queue) -> None:
    rng = random.Random(seed)
    ws = _store(uri, db)
    held: list[Alloc] = []
    wins = losses = 0
    for i in range(rounds):
        if held and rng.random() < 0.4:
            a = held.pop(rng.randrange(len(held)))
            assert ws.release("w", a.key, a.token)
            continue
        doc = ws.get("w")
        free = doc["free_cores"]
        if not free:
            continue
        cores = tuple(rng.sample(free, min(len(free), rng.randint(1, 2))))
        a = Alloc(f"job{seed}", f"t{i}", cores, rng.randint(1, 4) * 2**28, uuid.uuid4().hex)
        # Claim from the snapshot just read: other racers change the worker in between.
        if ws.claim("w", [a], snapshot=doc) is not None:
            held.append(a)
            wins += 1
        else:
            losses += 1
    for a in held:
        assert ws.release("w", a.key, a.token)
        assert not ws.release("w", a.key, a.token), "released twice"
    out.put((wins, losses))


def test_racing_processes_keep_the_books_exact(system) -> None:
    db = f"claims_{uuid.uuid4().hex[:8]}"
    client = pymongo.MongoClient(admin_uri(system))
    try:
        ws = _store(admin_uri(system), db)
        ws.col.insert_one({"_id": "w", "cores": CORES, "free_cores": CORES, "mem_total": MEM, "mem_free": MEM,
                           "allocations": {}, "generation": 0, "state": "READY"})
        ctx = mp.get_context("spawn")
        out: mp.Queue = ctx.Queue()
        procs = [ctx.Process(target=_racer, args=(admin_uri(system), db, seed, 60, out)) for seed in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(300)
            assert p.exitcode == 0
        results = [out.get(timeout=10) for _ in procs]
        assert sum(w for w, _ in results) > 0 and sum(lost for _, lost in results) > 0, results
        doc = ws.get("w")
        assert doc["allocations"] == {}
        assert doc["free_cores"] == CORES  # every core back, none twice, sorted
        assert doc["mem_free"] == MEM
        claims = client[db]["events"].count_documents({"kind": "claim"})
        releases = client[db]["events"].count_documents({"kind": "release"})
        assert claims == releases == sum(w for w, _ in results)
    finally:
        client.drop_database(db)
