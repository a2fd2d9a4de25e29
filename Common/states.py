"""Job and task states: ordered, only ever moving forward (swarmkit style).

A state write is a conditional update "only if the stored state is earlier", so a late, duplicate or
reordered report changes nothing. Jobs: QUEUED -> SCHEDULED -> RUNNING -> CANCELLING -> COMPLETED |
FAILED | CANCELLED (any step may be skipped, none taken back). Moving a task back (a lost node, a
preemption) is not a backward transition: it starts a new *attempt* of the task, and reports about
older attempts are ignored.
"""

from __future__ import annotations

from enum import StrEnum


class TaskState(StrEnum):
    PENDING = "PENDING"  # accepted, waiting for placement
    SCHEDULED = "SCHEDULED"  # node + cores claimed
    STARTING = "STARTING"  # container created on the node
    RUNNING = "RUNNING"  # container started
    COMPLETED = "COMPLETED"  # exited 0
    FAILED = "FAILED"  # exited non-zero, or could not start (reason recorded)
    CANCELLED = "CANCELLED"  # stopped on request
    LOST = "LOST"  # its node went away


class JobState(StrEnum):
    QUEUED = "QUEUED"
    SCHEDULED = "SCHEDULED"
    RUNNING = "RUNNING"
    CANCELLING = "CANCELLING"  # cancellation requested by a user: it ends CANCELLED whatever happens meanwhile
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


TASK_RANK: dict[TaskState, int] = {
    TaskState.PENDING: 0,
    TaskState.SCHEDULED: 1,
    TaskState.STARTING: 2,
    TaskState.RUNNING: 3,
    TaskState.COMPLETED: 4,
    TaskState.FAILED: 4,
    TaskState.CANCELLED: 4,
    TaskState.LOST: 4,
}

JOB_RANK: dict[JobState, int] = {
    JobState.QUEUED: 0,
    JobState.SCHEDULED: 1,
    JobState.RUNNING: 2,
    JobState.CANCELLING: 3,
    JobState.COMPLETED: 4,
    JobState.FAILED: 4,
    JobState.CANCELLED: 4,
}

TASK_TERMINAL = frozenset(s for s, r in TASK_RANK.items() if r == 4)
JOB_TERMINAL = frozenset(s for s, r in JOB_RANK.items() if r == 4)
JOB_ACTIVE = frozenset(JobState) - JOB_TERMINAL


def task_states_before(state: TaskState) -> list[str]:
    """The stored states from which a task may move to ``state``."""
    return [s.value for s, r in TASK_RANK.items() if r < TASK_RANK[state]]


def job_states_before(state: JobState) -> list[str]:
    return [s.value for s, r in JOB_RANK.items() if r < JOB_RANK[state]]


def derive_job_state(task_states: list[TaskState], user_cancelled: bool = False) -> JobState:
    """The job state its tasks imply.

    All terminal: CANCELLED if a user asked for the cancellation (whatever happened to its tasks
    meanwhile: a lost node, a vanished container), else FAILED if any failed or was lost, else CANCELLED
    if any was cancelled, else COMPLETED. Not all terminal: CANCELLING once a user asked, else RUNNING
    once every task has started, SCHEDULED once every task is placed, else QUEUED.
    """
    if all(s in TASK_TERMINAL for s in task_states):
        if user_cancelled:
            return JobState.CANCELLED
        if any(s in (TaskState.FAILED, TaskState.LOST) for s in task_states):
            return JobState.FAILED
        if TaskState.CANCELLED in task_states:
            return JobState.CANCELLED
        return JobState.COMPLETED
    if user_cancelled:
        return JobState.CANCELLING
    lowest = min(TASK_RANK[s] for s in task_states)
    if lowest >= TASK_RANK[TaskState.RUNNING]:
        return JobState.RUNNING
    if lowest >= TASK_RANK[TaskState.SCHEDULED]:
        return JobState.SCHEDULED
    return JobState.QUEUED
