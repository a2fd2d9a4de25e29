"""Replay traces: submit offsets and job templates from a CSV or JSON file.

CSV: a header row with an ``offset`` column (seconds from the start of the run) and optionally a
``template`` column (a template file, relative to the trace's folder; empty means the run's
``--template``)::

    offset,template
    0.0,small.json
    0.5,
    2.25,big.json

JSON: a list (or ``{"jobs": [...]}``) of ``{"offset": 0.5}`` objects, each optionally with
``"template": "file.json"`` or an inline ``"job": {...template...}``.

Rows may come in any order; the schedule is sorted by offset (stable, so equal offsets keep their order).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from StressClient.templates import Template, TemplateError


class TraceError(ValueError):
    """An unreadable or invalid trace; the message names the file and the row."""


@dataclass(frozen=True)
class TraceEntry:
    offset: float
    template: Template


def _offset(value: Any, where: str) -> float:
    try:
        off = float(value)
    except (TypeError, ValueError):
        raise TraceError(f"{where}: offset must be a number of seconds, got {value!r}") from None
    if not math.isfinite(off) or off < 0:
        raise TraceError(f"{where}: offset must be >= 0 s, got {value!r}")
    return off


def load_trace(path: str | Path, default: Template, speed: float = 1.0, with_evms: bool = False,
               fmt: str | None = None) -> list[TraceEntry]:
    """Entries sorted by offset, offsets divided by ``speed`` (2.0 replays twice as fast). ``fmt`` is
    "csv" or "json" (default: from the file's suffix)."""
    p = Path(path)
    if not speed > 0:
        raise TraceError(f"speed must be > 0, got {speed}")
    try:
        text = p.read_text()
    except OSError as exc:
        raise TraceError(f"{p}: cannot read: {exc.strerror or exc}") from None
    cache: dict[str, Template] = {}

    def template_file(name: str, where: str) -> Template:
        if name not in cache:
            try:
                cache[name] = Template.load(p.parent / name, with_evms)
            except TemplateError as exc:
                raise TraceError(f"{where}: {exc}") from None
        return cache[name]

    entries: list[TraceEntry] = []
    if (fmt or ("json" if p.suffix.lower() == ".json" else "csv")) == "json":
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise TraceError(f"{p}: not valid JSON: {exc}") from None
        if isinstance(raw, dict) and "jobs" in raw:
            raw = raw["jobs"]
        if not isinstance(raw, list):
            raise TraceError(f'{p}: expected a list of {{"offset": ...}} objects or {{"jobs": [...]}}')
        for i, row in enumerate(raw):
            where = f"{p}: jobs[{i}]"
            if not isinstance(row, dict) or "offset" not in row:
                raise TraceError(f"{where}: expected an object with an offset")
            extra = set(row) - {"offset", "template", "job"}
            if extra:
                raise TraceError(f"{where}: unknown field {sorted(extra)[0]!r}")
            if "job" in row and "template" in row:
                raise TraceError(f"{where}: give a template file or an inline job, not both")
            if "job" in row:
                try:
                    tpl = Template.from_dict(row["job"], where, with_evms)
                except TemplateError as exc:
                    raise TraceError(str(exc)) from None
            elif row.get("template"):
                tpl = template_file(str(row["template"]), where)
            else:
                tpl = default
            entries.append(TraceEntry(_offset(row["offset"], where) / speed, tpl))
    else:
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or "offset" not in [f.strip() for f in reader.fieldnames]:
            raise TraceError(f"{p}: a CSV trace needs a header row with an 'offset' column")
        for i, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            where = f"{p}: line {i}"
            tpl = template_file(row["template"], where) if row.get("template") else default
            entries.append(TraceEntry(_offset(row["offset"], where) / speed, tpl))
    if not entries:
        raise TraceError(f"{p}: the trace holds no job")
    entries.sort(key=lambda e: e.offset)
    return entries
