"""The Alibaba trace replay without the system: both schemas, the mapping rules, the window, the caps,
and bad rows counted by line number (never a crash). Reads only the slices committed in tests/data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from StressClient import alibaba
from StressClient.__main__ import main
from StressClient.templates import parse_memory

DATA = Path(__file__).resolve().parent / "data"
S17 = DATA / "alibaba-2017-slice.csv"
S18 = DATA / "alibaba-2018-slice.csv"


def _rows(path: Path) -> list[list[str]]:
    return [line.split(",") for line in path.read_text().splitlines()]


def test_2017_slice_maps_each_trace_job_to_one_job_with_a_task_per_instance() -> None:
    opts = alibaba.Options(max_instances=1000, max_tasks=256)
    jobs, stats = alibaba.load(S17, "alibaba-2017", opts)
    raw = _rows(S17)[1:]
    good = [r for r in raw if r[5] != "" and r[6].strip() and r[7].strip() and float(r[1]) >= float(r[0])]
    assert {j.body["job_name"] for _, j in jobs} == {f"ali17-{r[2]}" for r in good}
    assert stats.jobs == len(jobs) and stats.rows == len(raw)
    first = min(float(r[0]) for r in good)
    for off, job in jobs:
        mine = [r for r in good if f"ali17-{r[2]}" == job.name]
        assert off == pytest.approx(min(float(r[0]) for r in mine) - first)
        want = sum(min(int(r[4]), 1000) for r in mine)
        assert len(job.body["job_info"]["tasks"]) == min(want, 256)
    assert [o for o, _ in jobs] == sorted(o for o, _ in jobs)


def test_2017_resources_and_duration_follow_the_documented_rules() -> None:
    opts = alibaba.Options(speed=2.0, cpu_scale=1.0, machine_memory=parse_memory("8g", "x"))
    jobs, _ = alibaba.load(S17, "alibaba-2017", opts)
    by_name = {j.name: j for _, j in jobs}
    # 5,191,7026,41416,33,Terminated,50,0.016007041: half a core -> 1 core; 0.016 x 8 GiB; (191-5)/2 s
    t = by_name["ali17-7026"].body["job_info"]["tasks"]["t41416-0"]
    assert t["req_cores"] == 1
    assert t["mem_limit"] == f"{int(0.016007041 * 8 * 2**30) // 2**20}m"
    assert t["command"] == ["sleep", "93"]


def test_a_failed_row_fails_after_its_duration() -> None:
    jobs, _ = alibaba.load(S18, "alibaba-2018", alibaba.Options())
    t = {j.name: j for _, j in jobs}["ali18-j_1004"].body["job_info"]["tasks"]["tM2-0"]
    assert t["command"] == ["sh", "-c", "sleep 6; exit 1"]


def test_bad_rows_are_counted_by_line_number_and_never_crash() -> None:
    _, s17 = alibaba.load(S17, "alibaba-2017", alibaba.Options())
    lines = S17.read_text().splitlines()
    for line, reason in s17.bad_examples:
        cells = lines[line - 1].split(",")
        assert (cells[5] == "Waiting" and not cells[6]) or float(cells[1]) < float(cells[0]) or not cells[6], reason
    assert s17.bad_rows == 12 and s17.used_rows + s17.bad_rows == s17.rows
    _, s18 = alibaba.load(S18, "alibaba-2018", alibaba.Options())
    assert dict(s18.bad_examples) == {7: "Waiting with no resources", 8: "negative time", 9: "end before start",
                                      10: "missing instance_num", 12: "plan_cpu is not a number",
                                      13: "missing field (expected 9 columns)"}


def test_2018_cores_memory_and_task_names() -> None:
    jobs, _ = alibaba.load(S18, "alibaba-2018", alibaba.Options(cpu_scale=1.0, machine_memory=100 * 2**20))
    by = {j.name: j.body["job_info"]["tasks"] for _, j in jobs}
    assert set(by["ali18-j_1001"]) == {"tM1-0", "tM1-1", "tR2_1-0"}
    assert by["ali18-j_1002"]["tM1-0"]["req_cores"] == 2
    assert by["ali18-j_1013"]["tM4-0"]["req_cores"] == 4 and by["ali18-j_1013"]["tM4-0"]["mem_limit"] == "6m"
    names = list(by["ali18-j_1003"])  # task_LTg...== : '=' is not a valid task name character
    assert len(names) == 1 and names[0].startswith("ttask_LTg") and "=" not in names[0]


def test_caps_are_applied_and_reported() -> None:
    jobs, stats = alibaba.load(S18, "alibaba-2018", alibaba.Options(max_instances=2, max_tasks=3))
    total = sum(len(j.body["job_info"]["tasks"]) for _, j in jobs)
    assert all(len(j.body["job_info"]["tasks"]) <= 3 for _, j in jobs)
    assert stats.instances_in_trace - stats.instances_capped == total == stats.tasks
    assert stats.cap == {"max_instances": 2, "max_tasks": 3} and stats.jobs_capped >= 2


def test_window_selects_by_trace_time_and_offsets_start_at_its_start() -> None:
    jobs, stats = alibaba.load(S18, "alibaba-2018", alibaba.Options(window=(86530.0, 86600.0), speed=10))
    # rows are selected by their own time: j_1001's second task (86560) is in, its first (86520) is not
    assert {j.name for _, j in jobs} == {"ali18-j_1001", "ali18-j_1004", "ali18-j_1005", "ali18-j_1010"}
    j1001 = next(j for _, j in jobs if j.name == "ali18-j_1001")
    assert set(j1001.body["job_info"]["tasks"]) == {"tR2_1-0"}
    assert sorted(o for o, _ in jobs) == pytest.approx([0.0, 0.1, 2.2, 3.0])
    assert stats.used_rows == 4 and stats.out_of_window == 4


def test_cli_replay_dry_run_reports_bad_rows_and_the_cap(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(S18), "--format", "alibaba-2018", "--speed", "5", "--window", "86520:",
                 "--dry-run"]) == 0
    cap = capsys.readouterr()
    assert "7 jobs" in cap.err and "unusable 1: negative time (lines 8)" in cap.err and "cap:" in cap.err
    body = json.loads(cap.out[cap.out.index("{"):])
    assert body["job_name"] == "ali18-j_1001"


@pytest.mark.parametrize("argv, needle", [
    (["replay", str(S17), "--format", "alibaba-2019"], "--format"),
    (["replay", str(S17), "--format", "alibaba-2017", "--window", "10"], "--window"),
    (["replay", str(S17), "--format", "alibaba-2017", "--window", "50:10"], "--window"),
    (["replay", str(S17), "--format", "alibaba-2017", "--window", "99999:"], "no usable job"),
    (["replay", str(S17), "--format", "alibaba-2017", "--machine-memory", "lots"], "--machine-memory"),
    (["replay", str(DATA / "missing.csv"), "--format", "alibaba-2017"], "cannot read"),
])
def test_bad_replay_flags_exit_2_naming_the_flag(argv: list[str], needle: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--dry-run"])
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


def test_a_file_of_garbage_counts_every_row_as_unusable(tmp_path: Path) -> None:
    p = tmp_path / "x.csv"
    p.write_bytes(b"1,2,3\nnot,a,trace,row,at,all,x,y\n\xff\xfe,,,\n")
    with pytest.raises(alibaba.AlibabaError, match="no usable job"):
        alibaba.load(p, "alibaba-2017", alibaba.Options())
    stats = alibaba.Stats("alibaba-2017")
    alibaba.read_rows(p.read_text(errors="replace").splitlines(), "alibaba-2017", stats)
    assert stats.bad_rows == 3 and [ln for ln, _ in stats.bad_examples] == [1, 2, 3]


def test_window_and_speed_apply_to_our_own_csv_traces_too(capsys: pytest.CaptureFixture[str]) -> None:
    trace = Path(__file__).resolve().parent.parent / "StressClient" / "templates" / "trace-example.csv"
    assert main(["replay", str(trace), "--format", "csv", "--window", "0.5:2", "--speed", "2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("2 arrivals") and "first offsets [0.0, 0.25]" in out
