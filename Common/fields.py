"""The small checks every request validator is built from; each raises ``Invalid`` naming the field."""

from __future__ import annotations

from typing import Any

from Common.errors import Invalid


def require_object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Invalid(f"{where} must be an object", field=where)
    return value


def reject_unknown(obj: dict[str, Any], allowed: set[str], where: str) -> None:
    for key in obj:
        if key not in allowed:
            path = f"{where}.{key}" if where else key
            raise Invalid(f"unknown field {path!r}", field=path)


def require_int(value: Any, where: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(f"{where} must be an integer", field=where)
    if not lo <= value <= hi:
        raise Invalid(f"{where} must be between {lo} and {hi}, got {value}", field=where)
    return value
