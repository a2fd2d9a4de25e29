"""Discovery's side of the task lifecycle: applied resource updates and migration steps.

Every report is applied by a conditional update (forward-only), so replays are harmless. A migration's
end settles the claims: on DONE the source's claim is released, on FAILED the target's.
"""

from __future__ import annotations

import logging
from typing import Any

from Common.store import Store
from Common.store import migrations as mg
from Common.store.workers import alloc_key

log = logging.getLogger(__name__)


class Lifecycle:
    def __init__(self, store: Store, hint) -> None:
        self.store = store
        self.hint = hint

    def on_applied(self, body: dict[str, Any]) -> None:
        self.store.jobs.set_applied(body["job_id"], body["task"], body["attempt"], body["generation"], body["ok"],
                                    body.get("reason"))

    def on_migration(self, body: dict[str, Any]) -> None:
        m = self.store.migrations.get(body["migration_id"])
        if m is None:
            return
        state = body["state"]
        if state == mg.CHECKPOINTED and m["state"] == mg.PLACED and body["node"] == m["source"]:
            if self.store.migrations.advance(m["_id"], mg.CHECKPOINTED, checkpoint_id=body.get("checkpoint_id"),
                                             timings=body.get("timings")):
                log.info("migration %s: checkpointed on %s", m["_id"], m["source"])
                self.hint("migration", m["job_id"])
        elif state == mg.DONE and m["state"] == mg.CHECKPOINTED and body["node"] == m["target"]:
            self.finish(m, body.get("container_id") or "", body.get("timings"), body.get("addresses"))
        elif state == mg.FAILED and m["state"] in mg.ACTIVE and body["node"] in (m["source"], m.get("target")):
            self.fail(m, body.get("reason") or "failed", body.get("timings"))

    def finish(self, m: dict[str, Any], container_id: str, timings: dict[str, float] | None,
               addresses: dict[str, str] | None = None) -> None:
        if not self.store.jobs.apply_migration(m, container_id, addresses):
            self.fail(m, "the task changed (ended or was cancelled) during the migration", timings)
            return
        if self.store.migrations.advance(m["_id"], mg.DONE, container_id=container_id, timings=timings):
            self.store.workers.release(m["source"], alloc_key(m["job_id"], m["task"]), m["source_token"])
            self.store.checkpoints.delete_for_migration(m["_id"])  # restored: its checkpoint has served
            log.info("migration %s: %s/%s now runs on %s", m["_id"], m["job_id"], m["task"], m["target"])
            self.hint("migration", m["job_id"])

    def fail(self, m: dict[str, Any], reason: str, timings: dict[str, float] | None = None) -> None:
        if self.store.migrations.advance(m["_id"], mg.FAILED, reason=reason, timings=timings) is None:
            return
        self.store.jobs.clear_migration(m["job_id"], m["task"], m["_id"])
        if m.get("target") and m.get("token"):
            self.store.workers.release(m["target"], alloc_key(m["job_id"], m["task"]), m["token"])
        self.store.checkpoints.delete_for_migration(m["_id"])  # after the claims are settled
        log.warning("migration %s failed: %s (the task keeps running where it was)", m["_id"], reason)
        self.store.events.record("migration_failed", m["job_id"], task=m["task"], migration=m["_id"], reason=reason)
        self.hint("migration", m["job_id"])
