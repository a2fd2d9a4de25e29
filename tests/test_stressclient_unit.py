"""StressClient without the system: templates, traces, the open-loop runner on a fake FrontEnd, figures,
files and the CLI's flag checks."""

from __future__ import annotations

import csv
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from StressClient import measure, report
from StressClient.__main__ import main
from StressClient.client import Reply
from StressClient.records import JobRecord, Sample
from StressClient.runner import Arrival, Runner, RunOptions
from StressClient.templates import Template, TemplateError, evm_count, job_shape
from StressClient.trace import TraceError, load_trace

TEMPLATES = Path(__file__).resolve().parent.parent / "StressClient" / "templates"


# ---- templates ------------------------------------------------------------------------------------
def test_every_shipped_template_loads_and_renders_a_valid_looking_job() -> None:
    for path in sorted(TEMPLATES.glob("*.json")):
        if path.name.startswith("trace-"):
            continue
        body = Template.load(path).render(0, seed=1)
        assert set(body) == {"job_name", "priority", "job_info"}, path.name  # no evms unless asked
        for task in body["job_info"]["tasks"].values():
            assert task["req_cores"] >= 1 and task["mem_limit"].endswith("m") and task["image"]


def test_template_ranges_are_drawn_within_bounds_and_deterministically() -> None:
    tpl = Template.from_dict({"name": "r", "tasks": {"min": 1, "max": 3}, "cores": {"choice": [1, 2]},
                              "memory": {"min": "32m", "max": "64m"}, "duration": {"min": 0.5, "max": 1.5},
                              "priority": {"min": 0, "max": 5}})
    bodies = [tpl.render(i, seed=9) for i in range(300)]
    assert bodies == [tpl.render(i, seed=9) for i in range(300)]
    assert bodies != [tpl.render(i, seed=10) for i in range(300)]
    shapes = {job_shape(b)[0] for b in bodies}
    assert shapes == {1, 2, 3}
    for b in bodies:
        assert 0 <= b["priority"] <= 5
        for t in b["job_info"]["tasks"].values():
            assert t["req_cores"] in (1, 2)
            assert 32 <= int(t["mem_limit"][:-1]) <= 64
            assert t["command"][0] == "sleep" and 0.5 <= float(t["command"][1]) <= 1.5


def test_template_evms_become_the_jobs_evm_section_only_when_asked() -> None:
    section = {"count": 4, "subnet": "10.60.0.0/24", "devices": "lean"}
    raw = {"tasks": 2, "command": ["sh", "-c", "sleep {duration}"], "duration": 2, "evms": section}
    off = Template.from_dict(raw).render(3)
    on = Template.from_dict(raw, with_evms=True).render(3)
    assert "evms" not in off["job_info"] and off["job_info"]["tasks"]["t1"]["command"] == ["sh", "-c", "sleep 2"]
    # Every task an EPM: the command the template names (no image named: the default EPM image; duration never
    # applies to an EPM), memory sized by the FrontEnd unless given.
    assert on["job_info"]["evms"] == section and "evms" not in on
    assert on["job_info"]["tasks"] == {f"t{k}": {"req_cores": 1, "command": ["sh", "-c", "sleep 2"]} for k in (0, 1)}
    bare = Template.from_dict({"tasks": 1, "duration": 2, "evms": section}, with_evms=True).render(0)
    assert bare["job_info"]["tasks"] == {"t0": {"req_cores": 1}}
    named = Template.from_dict({"tasks": 1, "image": "busybox:1", "evms": section}, with_evms=True).render(0)
    assert named["job_info"]["tasks"] == {"t0": {"req_cores": 1, "image": "busybox:1"}}
    assert on["job_name"] == "stress-000003" and evm_count(on) == 4 and evm_count(off) == 0
    sized = Template.from_dict({**raw, "memory": "128m"}, with_evms=True).render(0)
    assert sized["job_info"]["tasks"]["t0"] == {"req_cores": 1, "mem_limit": "128m", "command": ["sh", "-c", "sleep 2"]}
    shipped = Template.load(TEMPLATES / "epm-evms.json", with_evms=True).render(0)
    assert evm_count(shipped) == 8 and set(shipped["job_info"]["tasks"]) == {"t0", "t1"}
    job = {"job_name": "vms", "job_info": {"evms": {"count": 5, "subnet": "10.61.0.0/24",
                                                    "distribution": {"kind": "manual", "counts": {"a": 2, "b": 3}}},
                                           "tasks": {"a": {"req_cores": 1}, "b": {"req_cores": 1}}}}
    assert evm_count(Template.from_dict(job).render(1)) == 5  # a job definition carries its own section


def test_an_invalid_evm_section_is_refused_when_loaded_naming_the_field() -> None:
    with pytest.raises(TemplateError, match=r"job_info\.evms\.subnet"):
        Template.from_dict({"evms": {"count": 4}}, "t.json", with_evms=True)
    with pytest.raises(TemplateError, match=r"job_info\.tasks\.t0\.mem_limit"):
        Template.from_dict({"memory": "16m", "evms": {"count": 4, "subnet": "10.60.0.0/24"}}, "t.json",
                           with_evms=True)


@pytest.mark.parametrize(("raw", "needle"), [
    ({"tasks": 0}, "tasks: must be between 1 and 256"),
    ({"cores": 1.5}, "cores: expected an integer"),
    ({"memory": "lots"}, "memory: expected a size"),
    ({"memory": {"min": "64m", "max": "32m"}}, "memory: min 64m is above max 32m"),
    ({"priority": {"min": 5, "max": 1}}, "priority: min 5 is above max 1"),
    ({"tasks": {"between": [1, 2]}}, "a range is"),
    ({"duration": None}, "give a duration"),
    ({"colour": "blue"}, "unknown field 'colour'"),
    ({"name": "bad name"}, "name:"),
    ({"evms": [1]}, "evms must be an object"),
])
def test_template_errors_name_the_field(raw: dict[str, Any], needle: str) -> None:
    with pytest.raises(TemplateError, match=needle.replace("(", r"\(")):
        Template.from_dict(raw, "t.json")


# ---- traces -------------------------------------------------------------------------------------
def test_csv_and_json_traces(tmp_path: Path) -> None:
    default = Template.from_dict({"name": "dflt"})
    (tmp_path / "big.json").write_text(json.dumps({"name": "big", "tasks": 2}))
    (tmp_path / "t.csv").write_text("offset,template\n2.0,big.json\n0.5,\n1.0,big.json\n")
    entries = load_trace(tmp_path / "t.csv", default, speed=2.0)
    assert [e.offset for e in entries] == [0.25, 0.5, 1.0]
    assert [e.template.name for e in entries] == ["dflt", "big", "big"]
    (tmp_path / "t.json").write_text(json.dumps([{"offset": 1}, {"offset": 0, "job": {"name": "inl"}}]))
    entries = load_trace(tmp_path / "t.json", default)
    assert [(e.offset, e.template.name) for e in entries] == [(0.0, "inl"), (1.0, "dflt")]
    for name in ("trace-example.csv", "trace-example.json"):
        assert load_trace(TEMPLATES / name, default)


@pytest.mark.parametrize(("name", "text", "needle"), [
    ("a.csv", "when\n1\n", "'offset' column"),
    ("a.csv", "offset\n-1\n", "line 2: offset must be >= 0"),
    ("a.csv", "offset,template\n1,missing.json\n", "line 2: .*cannot read"),
    ("a.json", "{", "not valid JSON"),
    ("a.json", "[{\"at\": 1}]", "jobs\\[0\\]: expected an object with an offset"),
    ("a.json", "[]", "holds no job"),
])
def test_trace_errors_name_the_row(tmp_path: Path, name: str, text: str, needle: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(TraceError, match=needle):
        load_trace(tmp_path / name, Template.from_dict({}))


# ---- the runner on a fake FrontEnd -------------------------------------------------------------------
class FakeFrontEnd:
    """Accepts jobs after ``latency`` seconds; each job is placed, runs and completes on a fixed timeline."""

    def __init__(self, latency: float = 0.0, reject_every: int = 0) -> None:
        self.latency = latency
        self.reject_every = reject_every
        self.jobs: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.cancelled: list[str] = []
        self.n = 0

    def submit(self, body: dict[str, Any]) -> Reply:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.n += 1
            n = self.n
        time.sleep(self.latency)
        with self.lock:
            self.in_flight -= 1
        if self.reject_every and n % self.reject_every == 0:
            return Reply(422, {}, "HTTP 422 unschedulable", "can never run")
        now = time.time()
        job_id = f"job-{n:04d}"
        self.jobs[job_id] = {"created": now, "tasks": list(body["job_info"]["tasks"]), "life": 0.05}
        return Reply(201, {"id": job_id, "state": "QUEUED"})

    def view(self, job_id: str) -> dict[str, Any]:
        j = self.jobs[job_id]
        c, now = j["created"], time.time()
        times = {"QUEUED": c}
        state = "QUEUED"
        for name, at in (("SCHEDULED", c + 0.01), ("RUNNING", c + 0.02), ("COMPLETED", c + j["life"])):
            if now >= at:
                times[name], state = at, name
        if job_id in self.cancelled:
            times["CANCELLED"], state = now, "CANCELLED"
        tstate = {"QUEUED": "PENDING"}.get(state, state)
        tasks = {t: {"state": tstate, "node": "n1", "state_times": {k: v for k, v in times.items()
                                                                      if k in ("RUNNING", "COMPLETED")}}
                 for t in j["tasks"]}
        return {"id": job_id, "state": state, "created_at": c, "state_times": times, "tasks": tasks}

    def job(self, job_id: str) -> Reply:
        return Reply(200, self.view(job_id))

    def jobs_in_state(self, state: str):
        return [v for v in (self.view(j) for j in list(self.jobs)) if v["state"] == state]

    def cancel(self, job_id: str) -> Reply:
        self.cancelled.append(job_id)
        return Reply(202, {})

    def workers(self) -> Reply:
        return Reply(200, {"items": [{"id": "n1", "state": "READY", "capacity_cores": 2, "free_core_count": 1,
                                      "mem_total": 100, "mem_free": 40, "tasks": 1}]})


def _arrivals(n: int, gap: float, tpl: Template | None = None) -> list[Arrival]:
    tpl = tpl or Template.from_dict({"name": "u", "tasks": 2})
    return [Arrival(i, i * gap, tpl) for i in range(n)]


def _opts(**kw: Any) -> RunOptions:
    base = {"concurrency": 8, "drain_seconds": 30, "poll_interval": 0.05, "sample_interval": 0.05}
    return RunOptions(**{**base, **kw})


def test_runner_is_open_loop_submissions_overlap_slow_responses() -> None:
    # Responses take 0.3 s while arrivals come every 0.02 s: a closed loop would have one request in
    # flight at a time; the open loop keeps several (a structural check, not a timing threshold).
    fe = FakeFrontEnd(latency=0.3)
    res = Runner(fe, _arrivals(20, 0.02), _opts()).run()  # type: ignore[arg-type]
    assert fe.max_in_flight >= 3
    assert all(r.state == "COMPLETED" for r in res.records)
    r = res.records[5]
    assert r.accepted_at <= r.scheduled_at <= r.running_at <= r.finished_at
    assert r.tasks == 2 and r.cores == 2 and len(r.task_running) == 2
    assert res.samples and res.samples[0].used == 1


def test_runner_counts_rejections_by_reason_and_drops_past_the_backlog() -> None:
    fe = FakeFrontEnd(latency=0.0, reject_every=3)
    res = Runner(fe, _arrivals(30, 0.0), _opts()).run()  # type: ignore[arg-type]
    out = measure.outcomes(res.records)
    assert out["rejected_by_reason"] == {"HTTP 422 unschedulable": 10}
    assert out["final_states"] == {"COMPLETED": 20}

    slow = FakeFrontEnd(latency=0.2)
    res = Runner(slow, _arrivals(30, 0.0), _opts(concurrency=1, max_backlog=5)).run()  # type: ignore[arg-type]
    dropped = [r for r in res.records if r.error == "client backlog"]
    assert dropped and len(dropped) + sum(r.accepted for r in res.records) == 30


def test_runner_cancels_what_is_unfinished_after_the_drain() -> None:
    fe = FakeFrontEnd()
    orig = fe.submit

    def long_lived(body: dict[str, Any]) -> Reply:
        r = orig(body)
        fe.jobs[r.body["id"]]["life"] = 3600
        return r

    fe.submit = long_lived  # type: ignore[method-assign]
    res = Runner(fe, _arrivals(3, 0.0), _opts(drain_seconds=0.2)).run()  # type: ignore[arg-type]
    assert sorted(fe.cancelled) == ["job-0001", "job-0002", "job-0003"]
    assert all(r.state == "CANCELLED" and r.cancelled_by_client for r in res.records)
    assert any("cancelled 3 unfinished" in n for n in res.notes)


# ---- figures and files ----------------------------------------------------------------------------
def _synthetic(n: int = 50) -> dict[str, Any]:
    t0 = 1_700_000_000.0
    recs = []
    for i in range(n):
        s = t0 + i
        r = JobRecord(seq=i, offset=float(i), submit_at=s, template="t", tasks=2, cores=2, sent_at=s + 0.001,
                      response_at=s + 0.011, status=201, job_id=f"job-{i}", state="COMPLETED",
                      accepted_at=s + 0.005, scheduled_at=s + 0.105, running_at=s + 0.605, finished_at=s + 2.605,
                      task_running=[s + 0.5, s + 0.605], nodes=["n1"])
        recs.append(r)
    recs.append(JobRecord(seq=n, offset=float(n), submit_at=t0 + n, template="t", sent_at=t0 + n, status=422,
                          response_at=t0 + n + 0.01, error="HTTP 422 unschedulable", message="never fits"))
    samples = [Sample(t0 + k, "n1", "READY", 2, k % 3, 100, 50, 1) for k in range(60)]
    return report.build({"mode": "steady", "params": {"rate": 1.0}, "seed": 1, "templates": ["t.json"],
                         "url": "http://x"}, recs, samples, t0, t0 + n, t0 + n + 3, float(n + 1))


def test_summary_figures_of_a_known_run() -> None:
    data = _synthetic()
    st = data["summary"]["stages"]
    assert st["submit_to_running"]["p50"] == pytest.approx(0.605)
    assert st["accepted_to_scheduled"]["p99"] == pytest.approx(0.1)
    assert st["submit_to_completed"]["max"] == pytest.approx(2.605)
    assert st["http_response"]["n"] == 51
    rt = data["summary"]["rates"]
    assert rt["arrivals"] == 51 and rt["accepted"] == 50 and rt["tasks_started"] == 100
    assert rt["offered_jobs_per_s"] == pytest.approx(1.0)
    assert data["summary"]["outcomes"]["rejected_by_reason"] == {"HTTP 422 unschedulable": 1}
    assert data["summary"]["latency_trend_s_per_s"] == pytest.approx(0.0, abs=1e-9)
    assert data["summary"]["utilisation"]["n1"]["mean_used_fraction"] == pytest.approx(0.5)
    tl = measure.timeline(report.records_of(data), data["started_at"], data["ended_at"])
    assert sum(tl["arrivals"]) == 51 and sum(tl["completed"]) == 50
    assert max(tl["running"]) >= 2  # each job runs 2 s, one arrives per second


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_files_and_report_regeneration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _synthetic()
    files = report.write_all(tmp_path, data)
    assert {f.name for f in files} >= {"results.json", "jobs.csv", "summary.txt", *report.PLOTS}
    for name in report.PLOTS:
        assert _is_png(tmp_path / name), name
    rows = list(csv.DictReader((tmp_path / "jobs.csv").open()))
    assert len(rows) == 51 and float(rows[0]["submit_to_running"]) == pytest.approx(0.605)
    assert "submit → all running" in (tmp_path / "summary.txt").read_text()
    for name in report.PLOTS:
        (tmp_path / name).unlink()
    assert main(["report", str(tmp_path)]) == 0
    for name in report.PLOTS:
        assert _is_png(tmp_path / name), name
    assert "p99" in capsys.readouterr().out


# ---- CLI flag checks --------------------------------------------------------------------------------
@pytest.mark.parametrize(("argv", "needle"), [
    (["steady", "--rate", "0", "--duration", "5"], "argument --rate: must be > 0"),
    (["steady", "--rate", "x", "--duration", "5"], "argument --rate: expected a number"),
    (["steady", "--rate", "1"], "give --duration S or --count N"),
    (["steady", "--rate", "1", "--duration", "-3"], "argument --duration: must be > 0"),
    (["steady", "--rate", "1", "--count", "0"], "argument --count: must be >= 1"),
    (["steady", "--rate", "1", "--count", "5", "--concurrency", "0"], "argument --concurrency"),
    (["random", "--low", "5", "--high", "1", "--duration", "5"], "argument --low: must be <= --high"),
    (["bursty", "--rate", "1", "--off", "2", "--duration", "5"], "argument --on: must be > 0"),
    (["steady", "--rate", "1", "--count", "5", "--template", "/nonexistent.json"], "argument --template"),
    (["replay", "/nonexistent.csv"], "argument TRACE"),
    (["steady", "--rate", "1", "--count", "5", "--url", "ftp://x", "--token", "t"], "argument --url"),
    (["steady", "--rate", "1", "--count", "5", "--process", "chaos"], "argument --process"),
])
def test_bad_flags_exit_2_naming_the_flag(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


def test_report_of_a_missing_dir_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "results.json" in capsys.readouterr().err


def test_dry_run_submits_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["incremental", "-a", "0.5", "-b", "1", "--duration", "10", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "35 arrivals over 10 s" in out and '"job_name": "sleep-1x1-000000"' in out


def test_management_stress_forwards_to_the_stressclient(capsys: pytest.CaptureFixture[str]) -> None:
    import Management

    assert Management.main(["stress", "--help"]) == 0
    assert "steady" in capsys.readouterr().out
    assert Management.main(["stress", "steady", "--rate", "0", "--count", "1"]) == 2
    assert "argument --rate" in capsys.readouterr().err
    assert Management.main(["stress", "steady", "--rate", "2", "--count", "3", "--dry-run"]) == 0
    assert "3 arrivals" in capsys.readouterr().out


def test_a_plain_job_definition_is_a_template_rendered_as_itself_renamed_per_job(tmp_path) -> None:
    from Common.jobspec import Limits, validate_job

    job = {"job_name": "hello", "priority": 3, "job_info": {
        "network": {"name": "hello-net", "driver": "overlay"},
        "tasks": {"t1": {"image": "rswarm/task:1", "command": "sleep 5", "req_cores": 1, "mem_limit": "64m"}}}}
    f = tmp_path / "job.json"
    f.write_text(json.dumps(job))
    t = Template.load(f)
    a, b = t.render(0, seed=1), t.render(1, seed=1, prefix="run")
    assert a["job_name"] == "hello-000000" and b["job_name"] == "run-000001"
    assert a["job_info"] == job["job_info"] and a["priority"] == 3
    validate_job(a, Limits())  # what the FrontEnd takes


def test_a_plain_job_definition_the_api_would_refuse_is_refused_naming_the_field() -> None:
    bad = {"job_info": {"tasks": {"t1": {"image": "rswarm/task:1", "req_cores": 0}}}}
    with pytest.raises(TemplateError, match="req_cores"):
        Template.from_dict(bad, "bad.json")
