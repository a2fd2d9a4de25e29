"""EVM states: ordered, only ever moving forward within one EPM attempt (like task states).

PENDING (recorded, no agent has it yet) → DEPLOYING (its agent started creating it) → READY | ERROR →
DELETED. A write is conditional on the stored state being earlier, so late, duplicate and reordered
reports change nothing. When an EPM gets a new attempt (a new container, e.g. after a preemption), its
EVMs are re-bound to that attempt and start again at PENDING; reports about older attempts are ignored.
"""

from __future__ import annotations

from enum import StrEnum


class EvmState(StrEnum):
    PENDING = "PENDING"
    DEPLOYING = "DEPLOYING"
    READY = "READY"
    ERROR = "ERROR"  # creation failed and was rolled back; the message says why
    DELETED = "DELETED"


EVM_RANK: dict[EvmState, int] = {
    EvmState.PENDING: 0,
    EvmState.DEPLOYING: 1,
    EvmState.READY: 2,
    EvmState.ERROR: 2,
    EvmState.DELETED: 3,
}

# States in which an EVM still counts against its EPM and its subnet.
EVM_LIVE = frozenset(s for s in EvmState if s is not EvmState.DELETED)


def evm_states_before(state: EvmState) -> list[str]:
    """The stored states from which an EVM may move to ``state``."""
    return [s.value for s, r in EVM_RANK.items() if r < EVM_RANK[state]]


MAX_REPORT_ITEMS = 500
MAX_ERROR_CHARS = 1000


def check_report_items(items: object) -> None:
    """An agent's reports as relayed by its Worker: [[seq, state, {state: time}, ms | None, error | None], ...].

    ValueError naming what is wrong; the messaging layer drops such a frame.
    """
    if not isinstance(items, list) or len(items) > MAX_REPORT_ITEMS:
        raise ValueError(f"items must be a list of at most {MAX_REPORT_ITEMS}")
    for item in items:
        if not isinstance(item, list) or len(item) != 5:
            raise ValueError("each item is [seq, state, times, ms, error]")
        seq, state, times, ms, error = item
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
            raise ValueError("seq must be an integer >= 1")
        if state not in EvmState.__members__:
            raise ValueError(f"unknown EVM state {state!r}")
        if not isinstance(times, dict) or not all(
                k in EvmState.__members__ and isinstance(v, int | float) and not isinstance(v, bool)
                for k, v in times.items()):
            raise ValueError("times must map EVM states to timestamps")
        if ms is not None and (isinstance(ms, bool) or not isinstance(ms, int | float)):
            raise ValueError("ms must be a number or null")
        if error is not None and (not isinstance(error, str) or len(error) > MAX_ERROR_CHARS):
            raise ValueError(f"error must be a string of at most {MAX_ERROR_CHARS} characters or null")
