"""Job templates: what each generated job looks like, with fields randomised within ranges.

A template is a JSON object (see ``StressClient/templates/*.json`` and docs/stressclient.md)::

    {"name": "sleep-4x1", "tasks": 4, "cores": 1, "memory": "64m", "image": "rswarm/task:1",
     "duration": {"min": 1, "max": 3}, "priority": {"choice": [0, 10]}}

Any numeric field, ``memory`` and ``image`` may be a range ``{"min": lo, "max": hi}`` (uniform;
integers for integer fields, whole MiB for memory) or ``{"choice": [..]}``. ``command`` (a string or
a list of strings, where ``{duration}`` is replaced by the drawn duration) overrides ``duration``,
which otherwise runs ``sleep <duration>``. ``network`` becomes ``job_info.network``; ``evms`` is the
job's EVM section (docs/evms.md), sent as ``job_info.evms`` when the run asks for it (``--evms``): every
task is then an EPM (the template's ``image`` and ``command`` if it names them, else the EPM defaults;
``mem_limit`` only when the template gives ``memory``, else the FrontEnd sizes it from the EVMs), and
job 0 is checked by the FrontEnd's own validator when the template is loaded.

A template may also be a plain job definition, exactly what ``POST /api/v1/jobs`` takes (it has a
``job_info``): every job of the run is that job, named ``<job_name or "job">-<index>``.

Rendering is deterministic: job ``i`` of a run with seed ``s`` is drawn from its own generator, so it
does not depend on how many other jobs were rendered before it or in which thread.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_TEMPLATE: dict[str, Any] = {
    "name": "stress",
    "tasks": 1,
    "cores": 1,
    "memory": "64m",
    "image": "rswarm/task:1",
    "duration": 1.0,
    "priority": 0,
}

FIELDS = {"name", "description", "tasks", "cores", "memory", "image", "command", "duration", "priority",
          "network", "environment", "evms"}
JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,100}$")
MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([bkmg]?)b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30}


class TemplateError(ValueError):
    """An invalid template; the message names the file and the field."""


def parse_memory(text: Any, where: str) -> int:
    if isinstance(text, int) and not isinstance(text, bool) and text > 0:
        return text
    m = MEMORY.match(text) if isinstance(text, str) else None
    if not m:
        raise TemplateError(f"{where}: expected a size such as '64m' or '1g', got {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _check_range(value: Any, where: str, kind: type, lo: float, hi: float) -> None:
    """``value`` is a number, {"min","max"} or {"choice"}; every number of ``kind`` and in [lo, hi]."""
    if isinstance(value, dict):
        if set(value) == {"choice"}:
            if not isinstance(value["choice"], list) or not value["choice"]:
                raise TemplateError(f"{where}.choice must be a non-empty list")
            for i, v in enumerate(value["choice"]):
                _check_range(v, f"{where}.choice[{i}]", kind, lo, hi)
            return
        if set(value) == {"min", "max"}:
            _check_range(value["min"], f"{where}.min", kind, lo, hi)
            _check_range(value["max"], f"{where}.max", kind, lo, hi)
            if value["min"] > value["max"]:
                raise TemplateError(f"{where}: min {value['min']} is above max {value['max']}")
            return
        raise TemplateError(f'{where}: a range is {{"min": x, "max": y}} or {{"choice": [...]}}, got {value!r}')
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        ok = ok and float(value).is_integer()
    if not ok:
        raise TemplateError(f"{where}: expected {'an integer' if kind is int else 'a number'}, got {value!r}")
    if not lo <= value <= hi:
        raise TemplateError(f"{where}: must be between {lo} and {hi}, got {value}")


def _draw(value: Any, rng: random.Random, kind: type) -> Any:
    if isinstance(value, dict):
        if "choice" in value:
            return _draw(rng.choice(value["choice"]), rng, kind)
        if kind is int:
            return rng.randint(int(value["min"]), int(value["max"]))
        return rng.uniform(float(value["min"]), float(value["max"]))
    return int(value) if kind is int else float(value)


@dataclass
class Template:
    """A validated template; ``render(i, seed)`` gives job ``i``'s body for POST /api/v1/jobs."""

    spec: dict[str, Any]
    source: str = "<built-in>"
    with_evms: bool = False
    _memory: Any = field(default=None, repr=False)
    _explicit_memory: bool = field(default=True, repr=False)
    # What an EPM task takes from the template: only what it names itself (an EPM runs the default EPM
    # image and command otherwise; ``duration`` never applies to an EPM, which lives until its job ends).
    _explicit_epm: frozenset[str] = field(default=frozenset(), repr=False)

    @classmethod
    def load(cls, path: str | Path | None, with_evms: bool = False) -> Template:
        if path is None:
            return cls.from_dict(dict(DEFAULT_TEMPLATE), "<built-in>", with_evms)
        p = Path(path)
        try:
            raw = json.loads(p.read_text())
        except OSError as exc:
            raise TemplateError(f"{p}: cannot read: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise TemplateError(f"{p}: not valid JSON: {exc}") from None
        return cls.from_dict(raw, str(p), with_evms)

    @classmethod
    def from_dict(cls, raw: Any, source: str = "<inline>", with_evms: bool = False) -> Template:
        if not isinstance(raw, dict):
            raise TemplateError(f"{source}: a template is a JSON object")
        if "job_info" in raw:
            return JobTemplate.from_job(raw, source, with_evms)
        unknown = sorted(set(raw) - FIELDS)
        if unknown:
            raise TemplateError(f"{source}: unknown field {unknown[0]!r} (known: {', '.join(sorted(FIELDS))})")
        spec = {**DEFAULT_TEMPLATE, **raw}
        w = source
        name = spec["name"]
        if not isinstance(name, str) or not JOB_NAME.match(name):
            raise TemplateError(f"{w}: name: letters, digits, '.', '_' or '-' (1-101 chars), got {name!r}")
        _check_range(spec["tasks"], f"{w}: tasks", int, 1, 256)
        _check_range(spec["cores"], f"{w}: cores", int, 1, 1024)
        _check_range(spec["priority"], f"{w}: priority", int, 0, 1000)
        if spec["duration"] is not None:
            _check_range(spec["duration"], f"{w}: duration", float, 0, 86400)
        mem = spec["memory"]
        if isinstance(mem, dict):
            if set(mem) == {"min", "max"}:
                lo, hi = parse_memory(mem["min"], f"{w}: memory.min"), parse_memory(mem["max"], f"{w}: memory.max")
                if lo > hi:
                    raise TemplateError(f"{w}: memory: min {mem['min']} is above max {mem['max']}")
                memory: Any = {"min": lo, "max": hi}
            elif set(mem) == {"choice"} and isinstance(mem["choice"], list) and mem["choice"]:
                memory = {"choice": [parse_memory(m, f"{w}: memory.choice[{i}]") for i, m in enumerate(mem["choice"])]}
            else:
                raise TemplateError(f'{w}: memory: a size, {{"min": .., "max": ..}} or {{"choice": [..]}}')
        else:
            memory = parse_memory(mem, f"{w}: memory")
        image = spec["image"]
        images = image["choice"] if isinstance(image, dict) and set(image) == {"choice"} else [image]
        if not images or not all(isinstance(i, str) and i for i in images):
            raise TemplateError(f'{w}: image: an image reference or {{"choice": [..]}}, got {image!r}')
        cmd = spec.get("command")
        if cmd is not None and not (isinstance(cmd, str) and cmd) and not (
            isinstance(cmd, list) and cmd and all(isinstance(a, str) for a in cmd)
        ):
            raise TemplateError(f"{w}: command: a string or a non-empty list of strings, got {cmd!r}")
        if cmd is None and spec["duration"] is None:
            raise TemplateError(f"{w}: give a duration (seconds of sleep) or a command")
        for key in ("network", "environment", "evms"):
            if spec.get(key) is not None and not isinstance(spec[key], dict):
                raise TemplateError(f"{w}: {key} must be an object")
        env = spec.get("environment") or {}
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise TemplateError(f"{w}: environment maps names to strings")
        tpl = cls(spec, source, with_evms, memory, "memory" in raw, frozenset({"image", "command"} & set(raw)))
        if with_evms and spec.get("evms") is not None:
            _validate(tpl.render(0), source)
        return tpl

    @property
    def name(self) -> str:
        return self.spec["name"]

    def rng(self, index: int, seed: int) -> random.Random:
        return random.Random(f"rswarm-stress:{seed}:job:{self.source}:{index}")

    def render(self, index: int, seed: int = 1, prefix: str | None = None) -> dict[str, Any]:
        s = self.spec
        rng = self.rng(index, seed)
        tasks = _draw(s["tasks"], rng, int)
        cores = _draw(s["cores"], rng, int)
        priority = _draw(s["priority"], rng, int)
        duration = None if s["duration"] is None else round(_draw(s["duration"], rng, float), 3)
        memory = _draw(self._memory, rng, int)
        mem_text = f"{max(6, round(memory / 2**20))}m"
        image = s["image"]
        image = rng.choice(image["choice"]) if isinstance(image, dict) else image
        dur_text = "0" if duration is None else f"{duration:g}"
        cmd = s.get("command")
        if cmd is None:
            command: str | list[str] = ["sleep", dur_text]
        elif isinstance(cmd, str):
            command = cmd.replace("{duration}", dur_text)
        else:
            command = [a.replace("{duration}", dur_text) for a in cmd]
        task: dict[str, Any] = {"image": image, "command": command, "req_cores": cores, "mem_limit": mem_text}
        epms = self.with_evms and s.get("evms") is not None
        if epms:  # an EPM runs the default EPM image (rswarm/task:1 sleeping) unless the template names its own
            # image or command; memory is sized from its EVMs unless given
            task = {"req_cores": cores, **({"mem_limit": mem_text} if self._explicit_memory else {}),
                    **({"image": image} if "image" in self._explicit_epm else {}),
                    **({"command": command} if "command" in self._explicit_epm else {})}
        if s.get("environment"):
            task["environment"] = dict(s["environment"])
        body: dict[str, Any] = {
            "job_name": f"{prefix or self.name}-{index:06d}"[:127],
            "priority": priority,
            "job_info": {"tasks": {f"t{k}": dict(task) for k in range(tasks)}},
        }
        if s.get("network"):
            body["job_info"]["network"] = dict(s["network"])
        if epms:
            body["job_info"]["evms"] = json.loads(json.dumps(s["evms"]))
        return body


@dataclass
class JobTemplate(Template):
    """A plain job definition used as a template: rendered as itself, renamed per job."""

    @classmethod
    def from_job(cls, raw: dict[str, Any], source: str, with_evms: bool = False) -> JobTemplate:
        _validate(raw, source)
        name = raw.get("job_name") or "job"
        return cls({"name": name, "job": raw}, source, with_evms)

    def render(self, index: int, seed: int = 1, prefix: str | None = None) -> dict[str, Any]:
        body = json.loads(json.dumps(self.spec["job"]))
        body["job_name"] = f"{prefix or self.name}-{index:06d}"[:127]
        return body


def _validate(job: dict[str, Any], source: str) -> None:
    """The FrontEnd's own validator, so a definition the API takes is a template and one it refuses is
    refused here with the same field. Volume paths are checked by the FrontEnd against its own volume
    root, which this client cannot see, so they are left to it."""
    from Common.errors import Invalid
    from Common.jobspec import Limits, validate_job

    probe = json.loads(json.dumps(job))
    for t in ((probe.get("job_info") or {}).get("tasks") or {}).values():
        if isinstance(t, dict):
            t.pop("volumes", None)
    try:
        validate_job(probe, Limits())
    except Invalid as exc:
        raise TemplateError(f"{source}: {exc.field or 'job'}: {exc.message}") from None


def evm_count(body: dict[str, Any]) -> int:
    """How many EVMs a rendered (and valid) job body asks for: its job-level section or its tasks' sections."""
    info = body.get("job_info") or {}
    section = info.get("evms")
    if isinstance(section, dict):
        dist = section.get("distribution")
        if isinstance(dist, dict) and dist.get("kind") == "manual":
            return sum(int(n) for n in (dist.get("counts") or {}).values())
        return int(section.get("count") or 0)
    return sum(int((t.get("evms") or {}).get("count") or 0) for t in (info.get("tasks") or {}).values()
               if isinstance(t, dict))


def job_shape(body: dict[str, Any]) -> tuple[int, int]:
    """(number of tasks, total cores) of a rendered job body."""
    tasks = body["job_info"]["tasks"].values()
    return len(tasks), sum(int(t.get("req_cores", 1)) for t in tasks)
