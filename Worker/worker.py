"""The Worker loop: make this node's containers match what MongoDB says should run here.

Level-triggered: every pass compares the tasks placed on this node (MongoDB) with the containers
this cluster has on the engine (found by label) and closes the gap - creates and starts what is
missing, stops what was cancelled, reports exits, removes what is finished. Hints from the GM, Docker
events and a slow sweep only decide *when* a pass runs; a lost hint delays, never loses, a task.
Reports go to Discovery, which applies them monotonically, so re-sending is always safe.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import docker
import requests

from Common.config import Config
from Common.logs import Throttled
from Common.messaging import Receiver, Sender
from Common.metrics import CONTAINER_EXITS, CONTAINER_START_SECONDS, CONTAINER_STARTS, RECONCILE_SECONDS
from Common.resources import parse_cpuset, parse_memory
from Common.states import TASK_RANK, TASK_TERMINAL, TaskState
from Common.store import Store
from Common.store.jobs import container_name
from Common.store.workers import DOWN, READY, REMOVED
from Worker.engine import Engine, Observed, StartFailed, StartTimedOut
from Worker.evms import EvmSync, is_epm
from Worker.lifecycle import Lifecycle
from Worker.volumes import job_paths

log = logging.getLogger(__name__)

ENGINE_DEAD_SECONDS = 30.0  # no engine answer for this long: stop heartbeating (the node is not alive)


def engine_gone(exc: BaseException) -> bool:
    """Nothing listens on the engine's address (connection refused, its socket file gone): the engine is
    dead, and the node stops heartbeating at once. A timeout or an error answer is a slow or busy engine,
    which gets ``ENGINE_DEAD_SECONDS`` of grace (a busy node is not a dead node)."""
    return isinstance(exc, requests.ConnectionError) and not isinstance(exc, requests.Timeout)
START_MAX_ATTEMPTS = 6  # transient engine errors creating a task's container: 1, 2, 4, 8, 16 s apart, then FAILED
START_BACKOFF_SECONDS = 1.0
NETWORKS_REMEMBERED = 4096


class Worker:
    def __init__(self, cfg: Config, store: Store, engine: Engine, reports: Sender) -> None:
        self.cfg = cfg
        self.name = cfg.worker_name
        self.store = store
        self.engine = engine
        self.reports = reports
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.rejoin = threading.Event()  # marked DOWN (or missing) while we were away: re-register
        self.engine_ok_at = time.monotonic()  # when the engine last answered a probe
        # (job, task, attempt) -> (transient create failures, monotonic time of the next try)
        self._retries: dict[tuple[str, str, int], tuple[int, float]] = {}
        # Ids of containers Docker said died. Its container list can still say "running" for a moment
        # after the event, so these are inspected (which reads the container's own state) instead.
        self._died: set[str] = set()
        self._died_lock = threading.Lock()
        # Jobs whose network the GlobalManager has made: a network only ever goes reserved -> created ->
        # forgotten with its job, so once seen created it need not be read again for each container start
        # (at 1,000 EPMs, one read per start). Bounded by NETWORKS_REMEMBERED.
        self._networks_made: dict[str, None] = {}
        self.lifecycle = Lifecycle(self)  # resource updates, checkpoints, migrations
        self.evms = EvmSync(cfg, store, engine.api, reports, self.name, self.wake.set)  # EPMs' EVMs
        parallelism = cfg.worker.parallelism
        self._pool = ThreadPoolExecutor(parallelism, thread_name_prefix="container-op") if parallelism > 1 else None

    # ---- start-up -----------------------------------------------------------------------------
    def register(self) -> dict[str, Any]:
        ncpu, mem_total, engine_name = self.engine.capacity()
        cores = parse_cpuset(self.cfg.worker.cores) if self.cfg.worker.cores else list(range(ncpu))
        mem = parse_memory(self.cfg.worker.memory) if self.cfg.worker.memory else mem_total
        info = {"engine": engine_name, "ncpu": ncpu, "engine_memory": mem_total,
                "docker_url": self.cfg.worker.docker_url,
                # lets the GM remove this node from the Swarm on the manager's side if its engine dies
                "swarm_node_id": (self.engine.client.info().get("Swarm") or {}).get("NodeID") or None}
        doc = self.store.workers.register(self.name, cores, mem, info)
        log.info("registered %s: cores %s, memory %d bytes", self.name, cores, mem)
        self.reports.send("worker_up", {"node": self.name, "at": time.time()})  # Discovery hints the JobManager
        return doc

    # ---- threads that only wake the loop ------------------------------------------------------
    def _listen_hints(self, receiver: Receiver) -> None:
        while not self.stopping.is_set():
            try:
                if receiver.recv(1.0) is not None:
                    self.wake.set()
            except Exception:  # whatever a peer sent, keep listening (the sweep runs passes anyway)
                log.exception("receiving a hint failed; going on")
                self.stopping.wait(0.5)

    def _watch_events(self) -> None:
        while not self.stopping.is_set():
            try:
                for ev in self.engine.events():
                    action = ev.get("Action")
                    if action == "die":
                        with self._died_lock:
                            self._died.add(ev.get("id", ""))
                    if action in ("die", "start", "oom", "destroy"):
                        self.wake.set()
                    if self.stopping.is_set():
                        return
            except Exception as exc:  # the engine restarted or went away (any transport error)
                log.warning("Docker events stream broke (%s); reconnecting", exc)
            # The stream ended: events may have been missed (an engine restart kills its containers), so
            # a pass reconciles whatever the engine holds now.
            self.wake.set()
            self.stopping.wait(1.0)

    def _heartbeat(self) -> None:
        """Beat every ``heartbeat_seconds`` from this thread alone: it never waits for the engine or
        MongoDB (a busy node whose engine answers slowly is alive). It stops beating when the engine is
        gone (``engine_gone``) or has not answered any probe for ``ENGINE_DEAD_SECONDS``: a node without
        its engine is not alive."""
        while not self.stopping.is_set():
            if time.monotonic() - self.engine_ok_at < ENGINE_DEAD_SECONDS:
                self.reports.send("heartbeat", {"node": self.name, "at": time.time()})
            self.stopping.wait(self.cfg.worker.heartbeat_seconds)

    def _probe(self) -> None:
        """Probe the engine and this node's record (each may be slow or away) apart from the beats."""
        while not self.stopping.is_set():
            try:
                self.engine.client.ping()
                if time.monotonic() - self.engine_ok_at > 2 * self.cfg.worker.heartbeat_seconds:
                    log.info("the Docker engine answers again: reconciling")
                    self.wake.set()  # the engine may have restarted: reconcile what it holds now
                self.engine_ok_at = time.monotonic()
            except (docker.errors.DockerException, requests.RequestException) as exc:
                if engine_gone(exc):
                    self.engine_ok_at = float("-inf")  # nothing listens there: the engine is dead, not slow
                log.warning("the Docker engine does not answer: %s", exc)
            try:
                state = self.store.workers.state_of(self.name)
            except Exception:  # MongoDB unreachable: try again at the next probe
                state = READY
            if state in (DOWN, None) or state == REMOVED:
                self.rejoin.set()
                self.wake.set()
            self.stopping.wait(self.cfg.worker.heartbeat_seconds)

    def run(self, receiver: Receiver | None) -> None:
        backoff = 0.5
        while not self.stopping.is_set():
            try:
                self.register()
                break
            except Exception as exc:  # MongoDB or the engine away at start: wait, do not die
                log.warning("cannot register yet (%s); retrying in %.1fs", exc, backoff)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 10.0)
        threads = [threading.Thread(target=self._watch_events, name="docker-events", daemon=True),
                   threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True),
                   threading.Thread(target=self._probe, name="engine-probe", daemon=True)]
        if receiver is not None:
            threads.append(threading.Thread(target=self._listen_hints, args=(receiver,), name="hints", daemon=True))
        for t in threads:
            t.start()
        self.evms.start()
        failures, engine_failures = Throttled(log), Throttled(log, level=logging.WARNING)
        while not self.stopping.is_set():
            self.wake.clear()
            try:
                if self.rejoin.is_set():
                    self.rejoin.clear()
                    # Remove the containers of work moved away while we were DOWN, then come back.
                    self.reconcile()
                    if self.register().get("state") == REMOVED:
                        log.warning("worker %s was removed from the cluster; stopping", self.name)
                        self.stop()
                        break
                self.reconcile()
            except (docker.errors.DockerException, requests.RequestException) as exc:
                engine_failures.failed(exc, "engine unavailable during reconcile; retrying at the next pass")
            except Exception as exc:  # MongoDB away, or a bug: one line per 30 s, not a traceback per pass
                failures.failed(exc, "reconcile failed; retrying at the next pass")
            else:
                failures.ok()
                engine_failures.ok()
            self.wake.wait(self.cfg.worker.sweep_seconds)

    def wake_at(self, when: float) -> None:
        """Run a pass at monotonic time ``when`` (a retry after backoff), whatever else wakes the loop."""
        timer = threading.Timer(max(0.0, when - time.monotonic()), self.wake.set)
        timer.daemon = True
        timer.start()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        self.evms.stop()

    # ---- reporting ----------------------------------------------------------------------------
    def report(self, job_id: str, task: str, attempt: int, state: TaskState, **extra: Any) -> None:
        body = {"job_id": job_id, "task": task, "attempt": attempt, "state": state.value, "node": self.name,
                "at": time.time(), **{k: v for k, v in extra.items() if v is not None}}
        self.reports.send("task_status", body)

    def report_exit(self, obs: Observed) -> None:
        obs = self.engine.inspect_exit(obs)
        tail = self.engine.log_tail(obs.id)
        CONTAINER_EXITS.labels(self.name, "oom" if obs.oom_killed else
                               "completed" if obs.exit_code == 0 else "failed").inc()
        if obs.exit_code == 0 and not obs.oom_killed:
            self.report(obs.job_id, obs.task, obs.attempt, TaskState.COMPLETED, exit_code=0,
                        container_id=obs.id, log_tail=tail)
            return
        if obs.oom_killed:
            reason = "killed by the kernel: out of memory (raise mem_limit)"
        elif obs.error:
            reason = obs.error
        else:
            reason = f"exited with code {obs.exit_code}"
        self.report(obs.job_id, obs.task, obs.attempt, TaskState.FAILED, exit_code=obs.exit_code,
                    reason=reason, container_id=obs.id, log_tail=tail)

    # ---- the reconcile pass -------------------------------------------------------------------
    def reconcile(self) -> None:
        with RECONCILE_SECONDS.labels(self.name).time():
            self._reconcile()

    def _reconcile(self) -> None:
        jobs = self.store.jobs.active_on(self.name)
        observed = self.engine.managed()
        with self._died_lock:
            died, self._died = self._died, set()
        for obs in observed.values():
            if obs.id in died and obs.status not in ("exited", "dead"):
                self.engine.refresh_status(obs)
        desired: dict[tuple[str, str, int], tuple[dict[str, Any], str, dict[str, Any]]] = {}
        for job in jobs:
            for name, t in job["tasks"].items():
                if t.get("node") == self.name:
                    desired[(job["_id"], name, t["attempt"])] = (job, name, t)

        work: list[Callable[[], None]] = []
        for key, obs in observed.items():
            if key not in desired:
                work.append(partial(self.cleanup_orphan, obs))
            else:
                work.append(partial(self.converge, obs, *desired[key]))
        for key, (job, name, t) in desired.items():
            if key not in observed:
                work.append(partial(self.ensure_started, job, name, t))
        self._run_all(work)
        for key in set(self._retries) - set(desired):
            self._retries.pop(key, None)
        self.lifecycle.run(desired, observed)
        epms = {key: obs for key, obs in observed.items()
                if key in desired and is_epm(desired[key][2]) and obs.status not in ("exited", "dead")}
        self.evms.observe({container_name(*key): (*key, desired[key][2]) for key in epms},
                          {container_name(*key) for key, obs in epms.items() if obs.status == "running"})

    def _run_all(self, work: list[Callable[[], None]]) -> None:
        """Run one pass's container operations, up to ``worker.parallelism`` at a time.

        Each operation concerns a different container, and Docker spends most of a create, start or
        remove waiting (on containerd, the network attachment, the stop timeout), so one slow container
        no longer holds up the others. The pass ends when all are done; the first error is re-raised.
        """
        if len(work) <= 1 or self._pool is None:
            for op in work:
                op()
            return
        errors = [f.exception() for f in [self._pool.submit(op) for op in work]]
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first

    def _draining(self, obs: Observed) -> bool:
        """A running EPM first removes its EVMs itself (Worker.evms explains why); removal waits."""
        return obs.status == "running" and self.evms.hold_removal(container_name(obs.job_id, obs.task, obs.attempt))

    def cleanup_orphan(self, obs: Observed) -> None:
        """A container whose task is finished, superseded or unknown: remove it (after its exit is known)."""
        # The migrations first, then the job: Discovery moves the job to the restored attempt before it
        # marks the migration DONE, so a restore that completes between the two reads is seen by one of
        # them (read the other way round, a freshly restored container looked orphaned and was removed).
        if self.lifecycle.protected(obs):
            return  # being restored here for a migration
        job = self.store.jobs.get(obs.job_id)
        t = (job or {}).get("tasks", {}).get(obs.task)
        if t is not None and t["attempt"] == obs.attempt and t["state"] not in TASK_TERMINAL:
            return  # not an orphan: the job document was read before this task was placed here
        if self._draining(obs):
            return
        log.info("removing container %s of %s/%s#%d", obs.id[:12], obs.job_id, obs.task, obs.attempt)
        self.engine.stop_and_remove(obs.id, self.cfg.worker.stop_timeout_seconds)

    def converge(self, obs: Observed, job: dict[str, Any], name: str, t: dict[str, Any]) -> None:
        state = TaskState(t["state"])
        if (state in TASK_TERMINAL or job.get("cancel_requested")) and self._draining(obs):
            return
        if state in TASK_TERMINAL:
            self.engine.stop_and_remove(obs.id, self.cfg.worker.stop_timeout_seconds)
            return
        if job.get("cancel_requested"):
            self.engine.stop_and_remove(obs.id, self.cfg.worker.stop_timeout_seconds)
            self.report(job["_id"], name, t["attempt"], TaskState.CANCELLED,
                        reason=job.get("cancel_reason") or "cancelled", container_id=obs.id)
            return
        if obs.status in ("exited", "dead"):
            self.report_exit(obs)
        elif obs.status == "created":
            # Created by a pass that died before starting it, or whose start timed out (retried with backoff).
            retry = self._retries.get((job["_id"], name, t["attempt"]))
            if retry is None or retry[1] <= time.monotonic():
                self.start(job["_id"], name, t, obs.id)
        elif obs.status == "running" and TASK_RANK[state] < TASK_RANK[TaskState.RUNNING]:
            self.report(job["_id"], name, t["attempt"], TaskState.RUNNING, container_id=obs.id,
                        addresses=self.engine.addresses(obs.id) or None)

    def ensure_started(self, job: dict[str, Any], name: str, t: dict[str, Any]) -> None:
        state = TaskState(t["state"])
        job_id = job["_id"]
        if state in TASK_TERMINAL:
            return
        if job.get("cancel_requested"):
            self.report(job_id, name, t["attempt"], TaskState.CANCELLED,
                        reason=job.get("cancel_reason") or "cancelled before it started")
            return
        if state != TaskState.SCHEDULED:
            # It was created here once and its container is gone (removed behind our back).
            self.report(job_id, name, t["attempt"], TaskState.FAILED,
                        reason="its container disappeared from the node")
            return
        if job_id not in self._networks_made:
            net = self.store.networks.get(job_id)
            if net is None or net.get("state") != "created":
                return  # the GlobalManager has not made the job's network yet; its dispatch will wake us
            if len(self._networks_made) >= NETWORKS_REMEMBERED:
                self._networks_made = {}  # forget all (a re-read each) rather than track age across threads
            self._networks_made[job_id] = None
        key = (job_id, name, t["attempt"])
        retry = self._retries.get(key)
        if retry is not None and retry[1] > time.monotonic():
            return  # backing off after a transient engine error (a timer wakes the loop for the retry)
        try:
            cid = self.engine.create(job_id, name, t, job["network"]["docker_name"],
                                     epm=self.evms.container_options(job, name, t), job_rels=job_paths(job))
        except StartFailed as exc:
            CONTAINER_STARTS.labels(self.name, "failed").inc()
            self.report(job_id, name, t["attempt"], TaskState.FAILED, reason=str(exc))
            return
        except OSError as exc:  # a volume's host directory cannot be made (e.g. the path is a file)
            CONTAINER_STARTS.labels(self.name, "failed").inc()
            self.report(job_id, name, t["attempt"], TaskState.FAILED, reason=f"invalid mount: {exc}")
            return
        except (docker.errors.DockerException, requests.RequestException) as exc:
            # Transient (the engine answered 5xx, timed out or restarted): retry with backoff, then fail.
            n = (retry[0] if retry else 0) + 1
            reason = f"{exc.explanation if isinstance(exc, docker.errors.APIError) else exc}"
            if n >= START_MAX_ATTEMPTS:
                self._retries.pop(key, None)
                CONTAINER_STARTS.labels(self.name, "failed").inc()
                self.report(job_id, name, t["attempt"], TaskState.FAILED,
                            reason=f"the engine failed {n} times to create the container; last error: {reason}")
                return
            delay = min(START_BACKOFF_SECONDS * 2 ** (n - 1), 60.0)
            self._retries[key] = (n, time.monotonic() + delay)
            log.warning("creating %s/%s#%d failed (%s); retry %d in %.0fs", job_id, name, t["attempt"], reason,
                        n, delay)
            self.wake_at(time.monotonic() + delay)
            return
        self._retries.pop(key, None)
        self.report(job_id, name, t["attempt"], TaskState.STARTING, container_id=cid)
        self.start(job_id, name, t, cid)

    def start(self, job_id: str, name: str, t: dict[str, Any], cid: str) -> None:
        try:
            with CONTAINER_START_SECONDS.labels(self.name).time():
                self.engine.start(cid)
        except StartFailed as exc:
            CONTAINER_STARTS.labels(self.name, "failed").inc()
            self.engine.remove(cid)
            self.report(job_id, name, t["attempt"], TaskState.FAILED, reason=str(exc), container_id=cid)
            return
        except StartTimedOut as exc:
            # Transient: the container stays created and a later pass starts it again (converge), with the
            # same backoff and cap as a transient create error.
            key = (job_id, name, t["attempt"])
            n = (self._retries.get(key, (0, 0.0))[0]) + 1
            if n >= START_MAX_ATTEMPTS:
                self._retries.pop(key, None)
                CONTAINER_STARTS.labels(self.name, "failed").inc()
                self.engine.remove(cid)
                self.report(job_id, name, t["attempt"], TaskState.FAILED, container_id=cid,
                            reason=f"the engine failed {n} times to start the container; last error: {exc}")
                return
            delay = min(START_BACKOFF_SECONDS * 2 ** (n - 1), 60.0)
            self._retries[key] = (n, time.monotonic() + delay)
            log.warning("starting %s/%s#%d failed (%s); retry %d in %.0fs", job_id, name, t["attempt"], exc, n,
                        delay)
            self.wake_at(time.monotonic() + delay)
            return
        self._retries.pop((job_id, name, t["attempt"]), None)
        CONTAINER_STARTS.labels(self.name, "started").inc()
        self.evms.started(container_name(job_id, name, t["attempt"]))
        log.info("started %s/%s#%d on cores %s", job_id, name, t["attempt"], t["cpuset"])
        self.report(job_id, name, t["attempt"], TaskState.RUNNING, container_id=cid,
                    addresses=self.engine.addresses(cid) or None)
