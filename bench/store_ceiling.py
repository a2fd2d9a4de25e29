#!/usr/bin/env python3
"""The embedded store's ceiling: conditional update_one by _id on job-sized documents, from 1 and from 4
client threads at once, against the deployment's MongoDB (a scratch collection, dropped at the end).

    .venv/bin/python bench/store_ceiling.py --seconds 5
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from Common.config import load as load_config  # noqa: E402
from Common.store import Store  # noqa: E402


def run(col, threads: int, seconds: float, docs: int) -> float:
    count = [0] * threads
    stop = time.monotonic() + seconds

    def work(k: int) -> None:
        i = k
        while time.monotonic() < stop:
            col.update_one({"_id": f"d{i % docs}", "state": {"$in": ["A", "B"]}},
                           {"$set": {"state": "A", f"tasks.t{i % 4}.state": "RUNNING", "at": time.time()}})
            count[k] += 1
            i += threads

    ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(count) / seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--docs", type=int, default=2000)
    args = p.parse_args()
    store = Store.connect(load_config(), "bench-store")
    col = store.db["bench_store_ceiling"]
    col.drop()
    col.insert_many([{"_id": f"d{i}", "state": "A", "tasks": {f"t{k}": {"state": "PENDING", "pad": "x" * 200}
                                                               for k in range(4)}} for i in range(args.docs)])
    for threads in (1, 4):
        print(f"{threads} client thread(s): {run(col, threads, args.seconds, args.docs):.0f} conditional updates/s")
    col.drop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
