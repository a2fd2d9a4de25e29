"""Resource values: cpusets ("0-2,5") and memory sizes ("64m")."""

from __future__ import annotations

import re

_MEM = re.compile(r"^\s*(\d+)\s*([bkmgt]?)b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_CPUSET_PART = re.compile(r"^(\d{1,5})(?:-(\d{1,5}))?$")

MAX_CORE_ID = 4095
DOCKER_MIN_MEMORY = 6 * 1024**2  # the engine refuses a smaller memory limit


def parse_memory(value: str | int) -> int:
    """Bytes from a Docker-style size ("64m", "1g", "512k", 1048576). ValueError when invalid."""
    if isinstance(value, bool):
        raise ValueError("must be a size such as '64m' or a number of bytes")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError("must be > 0")
        return value
    if not isinstance(value, str):
        raise ValueError("must be a size such as '64m' or a number of bytes")
    m = _MEM.match(value)
    if not m:
        raise ValueError(f"{value!r} is not a size such as '64m', '1g' or a number of bytes")
    n = int(m.group(1)) * _UNITS[m.group(2).lower()]
    if n <= 0:
        raise ValueError("must be > 0")
    return n


def format_memory(n: int) -> str:
    for unit, size in (("g", 1024**3), ("m", 1024**2), ("k", 1024)):
        if n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def parse_cpuset(text: str) -> list[int]:
    """Sorted distinct core ids from a cpuset such as "0-2,5". ValueError when invalid."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("must be a cpuset such as '0-2,5'")
    cores: set[int] = set()
    for part in text.split(","):
        m = _CPUSET_PART.match(part.strip())
        if not m:
            raise ValueError(f"{text!r} is not a cpuset such as '0-2,5'")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise ValueError(f"{text!r}: range {lo}-{hi} runs backwards")
        if hi > MAX_CORE_ID:
            raise ValueError(f"{text!r}: core ids go up to {MAX_CORE_ID}")
        cores.update(range(lo, hi + 1))
    return sorted(cores)


def format_cpuset(cores: list[int] | tuple[int, ...] | set[int]) -> str:
    """The shortest cpuset text for ``cores``: [0, 1, 2, 5] -> "0-2,5"."""
    ordered = sorted(cores)
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)
