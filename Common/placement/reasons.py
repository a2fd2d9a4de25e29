"""Why a job waits, in sentences a person understands."""

from __future__ import annotations

from Common.placement.model import JobRequest, TaskRequest
from Common.placement.state import ClusterState
from Common.resources import format_cpuset


def cores(n: int) -> str:
    return f"{n} core{'' if n == 1 else 's'}"


def mem(n: int) -> str:
    for unit, size in (("g", 1024**3), ("m", 1024**2), ("k", 1024)):
        if n >= size:
            return f"{n / size:.4g}{unit}"
    return f"{n}b"


def _need(task: TaskRequest) -> str:
    return f"task {task.name} needs {cores(task.cores)} and {mem(task.mem)}"


def pinned_task(task: TaskRequest, state: ClusterState) -> str:
    i = state.index.get(task.node or "")
    need = _need(task)
    if i is None:
        return f"{need} on node {task.node}, which is not ready"
    if state.blocked[i]:
        return f"{need} on {task.node}, which is reserved for a job ahead of it"
    if task.cpuset is not None:
        busy = sorted(set(task.cpuset) - set(state.free[i]))
        if busy:
            holders = sorted({state.holder(i, c) for c in busy})
            return (f"{need} on {task.node} with cores {format_cpuset(list(task.cpuset))}; "
                    f"core{'s' if len(busy) > 1 else ''} {format_cpuset(busy)} there "
                    f"{'are' if len(busy) > 1 else 'is'} held by {', '.join(holders)}")
    return (f"{need} on {task.node}, which has {cores(state.nfree[i])} "
            f"(largest contiguous block {state.largest_block(i)}) and {mem(state.mem[i])} free")


def unpinned_task(task: TaskRequest, state: ClusterState) -> str:
    need = f"{_need(task)} on one node"
    by_cores, by_mem = state.summary()
    if by_cores is None or by_mem is None:
        return f"{need}; no worker is ready"
    c_node, m_node = state.names[by_cores], state.names[by_mem]
    most_cores = (f"the most free cores is {state.nfree[by_cores]} on {c_node} "
                  f"(largest contiguous block {state.largest_block(by_cores)})")
    if state.nfree[by_cores] < task.cores:
        return f"{need}; {most_cores}"
    if state.mem[by_mem] < task.mem:
        return f"{need}; the most free memory is {mem(state.mem[by_mem])} on {m_node}"
    return (f"{need}; no node has both: {most_cores} with {mem(state.mem[by_cores])} free, "
            f"the most free memory is {mem(state.mem[by_mem])} on {m_node} with {cores(state.nfree[by_mem])}")


def task_reason(job: JobRequest, task: TaskRequest, state: ClusterState, placed_siblings: int) -> str:
    """Why ``task`` of ``job`` fits nowhere in ``state`` (with ``placed_siblings`` tentatively placed)."""
    text = ports_reason(task, state) or (pinned_task(task, state) if task.pinned else unpinned_task(task, state))
    if len(job.tasks) > 1:
        gang = f"its {len(job.tasks)} tasks run together or not at all"
        if placed_siblings:
            gang += f"; once {placed_siblings} of them are placed"
        text = f"{gang}: {text}"
    return text


def ports_reason(task: TaskRequest, state: ClusterState) -> str | None:
    """When host ports are what keeps ``task`` out (some node has room for it, but on every such node
    one of its ports is in use): which ports and who holds them. None otherwise."""
    if not task.ports:
        return None
    room = [i for i in range(len(state)) if not state.blocked[i] and state.nfree[i] >= task.cores
            and state.mem[i] >= task.mem and (task.node is None or state.names[i] == task.node)]
    if not room or any(state.ports_free(i, task.ports) for i in room):
        return None
    held = sorted({f"{p} on {state.names[i]} by {state.ports[i][p]}" for i in room for p in task.ports
                   if p in state.ports[i]})
    return (f"task {task.name} publishes host port{'s' if len(task.ports) > 1 else ''} "
            f"{', '.join(sorted(task.ports))}, in use on every node with room for it ({'; '.join(held)}); "
            "it waits for them to be free")


def never(reason: str) -> str:
    return f"can never fit the current cluster (re-evaluated when workers join): {reason}"


def manual_only(job: JobRequest) -> str:
    names = [t.name for t in job.tasks if not t.pinned]
    return (f"the manual strategy places only tasks that name their node; task{'s' if len(names) > 1 else ''} "
            f"{', '.join(names)} name{'s' if len(names) == 1 else ''} none (pin them, or choose another strategy)")
