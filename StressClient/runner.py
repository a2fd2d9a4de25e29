"""The open-loop submitter: arrivals follow the schedule whatever the response times.

One dispatcher thread sleeps until each arrival's absolute due time (``start + offset`` on the
monotonic clock, so lateness never accumulates) and hands the job to a bounded pool of sender
threads. When every sender is busy the job waits in a client-side backlog; its latencies still start
at its scheduled arrival (no coordinated omission), and how late it was sent is recorded. Past
``max_backlog`` waiting jobs an arrival is dropped and counted as a "client backlog" error, so a
stalled FrontEnd cannot make the client's memory grow without bound.

A poller learns the jobs' fates from the FrontEnd (one listing per active state, one GET per job
that left them) and a sampler records each worker's cores in use. A job with EVMs never ends by itself
(its EPMs run until deleted): the poller reads its EVM summary until every EVM is READY or ERROR, then
its EVM records once (when each became READY, how long each took), and deletes the job
``evm_hold`` seconds later. Timestamps of job progress are the
system's own, so how often we poll changes nothing measured.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from StressClient.client import FrontEnd, Reply
from StressClient.records import JobRecord, Sample
from StressClient.templates import Template, evm_count, job_shape

ACTIVE_STATES = ("QUEUED", "SCHEDULED", "RUNNING", "CANCELLING")


def longest_run(cpuset: str) -> int:
    """The longest run of consecutive core ids in a cpuset such as "0-3,6,8-9" (4); 0 when empty."""
    best = 0
    for part in cpuset.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            n = int(hi or lo) - int(lo) + 1 if lo else 0
        except ValueError:
            n = 0
        best = max(best, n)
    return best


@dataclass(frozen=True)
class Arrival:
    seq: int
    offset: float
    template: Template


@dataclass
class RunOptions:
    seed: int = 1
    concurrency: int = 16
    max_backlog: int = 10_000
    drain_seconds: float = 300.0
    cancel_at_end: bool = True
    poll_interval: float = 1.0
    sample_interval: float = 1.0
    http_timeout: float = 30.0
    evm_hold: float = 1.0  # seconds an EVM job is left running once its EVMs settled, then deleted
    # > 0: a submission refused for want of a FrontEnd or MongoDB (no HTTP answer, or 503) is sent again, with
    # the same Idempotency-Key (so a request stored before its answer was lost is not stored twice), with a
    # backoff of 0.5 s doubling to 4 s, for up to this many seconds; each refusal is counted in the record.
    retry_refused_seconds: float = 0.0


def _refused(reply: Reply) -> bool:
    """Nothing was stored for certain or the FrontEnd said so: no answer at all, or 503 (MongoDB away)."""
    return reply.status is None or reply.status in (502, 503, 504)


@dataclass
class RunResult:
    records: list[JobRecord]
    samples: list[Sample]
    started_at: float
    arrivals_done_at: float
    ended_at: float
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass
class Progress:
    """Counters the live display reads (updated under the runner's lock)."""

    planned: int = 0
    due: int = 0
    sent: int = 0
    accepted: int = 0
    errors: int = 0
    active: int = 0
    finished: int = 0
    failed: int = 0
    elapsed: float = 0.0
    phase: str = "submitting"


class Runner:
    def __init__(self, fe: FrontEnd, arrivals: list[Arrival], opts: RunOptions,
                 on_progress: Callable[[Progress], None] | None = None) -> None:
        self.fe = fe
        self.arrivals = arrivals
        self.opts = opts
        self.on_progress = on_progress
        self.records: list[JobRecord] = []
        self.samples: list[Sample] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()  # interrupt: stop submitting, clean up
        self.finished = threading.Event()  # the run is over: poller and sampler end
        self.sendq: queue.Queue[tuple[JobRecord, Template] | None] = queue.Queue()
        self.active: dict[str, JobRecord] = {}
        self.progress = Progress(planned=len(arrivals))
        self.t0_mono = 0.0
        self.t0 = 0.0
        self.notes: list[str] = []
        self.evms_settled: dict[str, float] = {}  # EVM job -> when (monotonic) its EVMs were seen settled

    # ---- threads --------------------------------------------------------------------------------
    def _sender(self) -> None:
        while True:
            item = self.sendq.get()
            if item is None:
                return
            rec, tpl = item
            body = tpl.render(rec.seq, self.opts.seed)
            rec.tasks, rec.cores = job_shape(body)
            rec.evms_requested = evm_count(body)
            rec.sent_at = time.time()
            reply = self._submit(rec, body)
            rec.response_at = time.time()
            rec.status = reply.status
            with self.lock:
                self.progress.sent += 1
                if reply.status in (200, 201) and isinstance(reply.body, dict) and reply.body.get("id"):
                    rec.job_id = str(reply.body["id"])
                    rec.state = str(reply.body.get("state", "QUEUED"))
                    self.active[rec.job_id] = rec
                    self.progress.accepted += 1
                else:
                    rec.error = reply.error or f"HTTP {reply.status} unexpected answer"
                    rec.message = reply.message
                    self.progress.errors += 1

    def _submit(self, rec: JobRecord, body: dict) -> Reply:
        """One submission, retried while refused (``retry_refused_seconds``). A 200 is the replay of our own
        Idempotency-Key: the job an earlier attempt stored, whose 201 was lost."""
        if self.opts.retry_refused_seconds <= 0:
            return self.fe.submit(body)
        key = f"stress-{uuid.uuid4().hex}"
        deadline = time.monotonic() + self.opts.retry_refused_seconds
        delay = 0.5
        while True:
            reply = self.fe.submit(body, idempotency_key=key)
            if not _refused(reply) or time.monotonic() + delay > deadline or self.stop.is_set():
                return reply
            rec.refusals += 1
            rec.last_refusal = reply.error
            if self.stop.wait(delay):
                return reply
            delay = min(delay * 2, 4.0)

    def _dispatch(self) -> None:
        for a in self.arrivals:
            delay = self.t0_mono + a.offset - time.monotonic()
            if delay > 0 and self.stop.wait(delay):
                return
            if self.stop.is_set():
                return
            rec = JobRecord(seq=a.seq, offset=a.offset, submit_at=self.t0 + a.offset, template=a.template.name)
            with self.lock:
                self.records.append(rec)
                self.progress.due += 1
                if self.sendq.qsize() >= self.opts.max_backlog:
                    rec.error = "client backlog"
                    rec.message = f"more than {self.opts.max_backlog} jobs waiting for a sender"
                    self.progress.errors += 1
                    continue
            self.sendq.put((rec, a.template))

    def _poll_once(self) -> None:
        with self.lock:
            watching = dict(self.active)
        if not watching:
            return
        seen: set[str] = set()
        for state in ACTIVE_STATES:
            if len(seen) == len(watching):
                break
            for view in self.fe.jobs_in_state(state):
                rec = watching.get(view.get("id", ""))
                if rec is not None:
                    rec.apply_view(view)
                    seen.add(rec.job_id)  # type: ignore[arg-type]
        for job_id, rec in watching.items():
            if job_id in seen:
                continue
            reply = self.fe.job(job_id)
            if reply.status == 200 and isinstance(reply.body, dict):
                rec.apply_view(reply.body)
            elif reply.status == 404:
                rec.state, rec.reason = "CANCELLED", "vanished: 404 from the FrontEnd"
        for rec in watching.values():
            if rec.evms_requested and not rec.final and not rec.evms_released:
                self._poll_evms(rec)
        with self.lock:
            for job_id, rec in watching.items():
                if rec.final and self.active.pop(job_id, None) is not None:
                    self.progress.finished += 1
                    if rec.state != "COMPLETED" and not rec.evms_released:
                        self.progress.failed += 1

    def _poll_evms(self, rec: JobRecord) -> None:
        """Follow an EVM job until its EVMs settle; read their records once; delete it after the hold."""
        job_id = rec.job_id
        assert job_id is not None
        if job_id not in self.evms_settled:
            reply = self.fe.evm_summary(job_id)
            if reply.status != 200 or not isinstance(reply.body, dict):
                return
            errors = int((reply.body.get("by_state") or {}).get("ERROR", 0))
            if int(reply.body.get("ready", 0)) + errors < rec.evms_requested:
                return
            ready = self.fe.evms(job_id, "READY")
            if ready is None:
                return
            rec.evms_ready, rec.evms_errors = len(ready), errors
            times = [e["times"]["READY"] for e in ready if (e.get("times") or {}).get("READY") is not None]
            rec.evms_ready_at = max(times) if times and not errors else None
            rec.evm_create_ms = [float(e["create_ms"]) for e in ready if e.get("create_ms") is not None]
            self.evms_settled[job_id] = time.monotonic()
        if time.monotonic() - self.evms_settled[job_id] >= self.opts.evm_hold:
            reply = self.fe.cancel(job_id)
            rec.evms_released = reply.status in (200, 202)

    def _poller(self) -> None:
        while not self.finished.is_set():
            started = time.monotonic()
            self._poll_once()
            self._report()
            self.finished.wait(max(0.05, self.opts.poll_interval - (time.monotonic() - started)))

    def _sample_once(self) -> None:
        reply = self.fe.workers()
        if reply.status != 200 or not isinstance(reply.body, dict):
            return
        now = time.time()
        for w in reply.body.get("items", []):
            cap = int(w.get("capacity_cores", 0))
            self.samples.append(Sample(
                t=now, worker=str(w.get("id")), state=str(w.get("state")), cores=cap,
                used=cap - int(w.get("free_core_count", cap)), mem_total=int(w.get("mem_total", 0)),
                mem_used=int(w.get("mem_total", 0)) - int(w.get("mem_free", 0)), tasks=int(w.get("tasks", 0)),
                hollow=bool(w.get("hollow")), free_block=longest_run(str(w.get("free_cores") or "")),
            ))

    def _sampler(self) -> None:
        while not self.finished.is_set():
            started = time.monotonic()
            self._sample_once()
            self.finished.wait(max(0.05, self.opts.sample_interval - (time.monotonic() - started)))

    def _report(self) -> None:
        if self.on_progress is None:
            return
        with self.lock:
            self.progress.active = len(self.active)
            self.progress.elapsed = time.monotonic() - self.t0_mono
            snapshot = Progress(**vars(self.progress))
        self.on_progress(snapshot)

    # ---- the run ----------------------------------------------------------------------------------
    def _wait_active(self, seconds: float) -> bool:
        """Until every accepted job is final (True) or ``seconds`` pass or an interrupt (False)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with self.lock:
                if not self.active:
                    return True
            if self.stop.wait(0.2):
                return False
        with self.lock:
            return not self.active

    def run(self) -> RunResult:
        self.t0_mono = time.monotonic()
        self.t0 = time.time()
        senders = [threading.Thread(target=self._sender, name=f"stress-send-{i}", daemon=True)
                   for i in range(self.opts.concurrency)]
        helpers = [threading.Thread(target=self._poller, name="stress-poll", daemon=True),
                   threading.Thread(target=self._sampler, name="stress-sample", daemon=True)]
        for t in senders + helpers:
            t.start()
        interrupted = False
        try:
            self._dispatch()
            for _ in senders:
                self.sendq.put(None)
            while any(t.is_alive() for t in senders):
                for t in senders:
                    t.join(0.2)
                if self.stop.is_set():
                    break
            arrivals_done = time.time()
            with self.lock:
                self.progress.phase = "draining"
            drained = self.stop.is_set() or self._wait_active(self.opts.drain_seconds)
            if not drained and not self.stop.is_set():
                self.notes.append(f"{len(self.active)} jobs were not finished {self.opts.drain_seconds:g} s "
                                  "after the last arrival")
        except KeyboardInterrupt:
            interrupted = True
            self.stop.set()
            arrivals_done = time.time()
        interrupted = interrupted or self.stop.is_set()
        if interrupted:
            self.notes.append("interrupted: arrivals stopped early")
            # Senders still blocked on a request finish it; queued arrivals are dropped.
            while True:
                try:
                    item = self.sendq.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[0].error, item[0].message = "not sent", "the run was interrupted"
            for _ in senders:
                self.sendq.put(None)
            for t in senders:
                t.join(self.opts.http_timeout + 5)
        self._poll_once()
        with self.lock:
            leftovers = list(self.active.values())
        if leftovers and self.opts.cancel_at_end:
            with self.lock:
                self.progress.phase = "cancelling"
            for rec in leftovers:
                reply = self.fe.cancel(rec.job_id)  # type: ignore[arg-type]
                rec.cancelled_by_client = reply.status in (200, 202)
            self.notes.append(f"cancelled {len(leftovers)} unfinished jobs at the end of the run")
            self.stop.clear()
            self._wait_active(60.0)
        self.finished.set()
        for t in helpers:
            t.join(self.opts.http_timeout + 5)
        if self.active:
            self._poll_once()
        self._report()
        return RunResult(records=sorted(self.records, key=lambda r: r.seq), samples=self.samples,
                         started_at=self.t0, arrivals_done_at=arrivals_done, ended_at=time.time(),
                         interrupted=interrupted, notes=self.notes)
