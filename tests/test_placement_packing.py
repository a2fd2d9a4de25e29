"""Packing quality and the bench.packing harness (pure: no MongoDB, no Docker)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import packing
from tests.test_placement_properties import textbook

# OR-Library's public instances, committed with the tests (tests/data/binpacking/README.md).
DATA = Path(__file__).resolve().parent / "data" / "binpacking" / "binpack1.txt"


def test_parse_reads_the_or_library_format_and_scales_decimals(tmp_path: Path) -> None:
    f = tmp_path / "two.txt"
    f.write_text("2\n u_a \n 10 3 2\n5\n5\n7\n t_b\n 100.0 2 1\n33.3\n66.7\n")
    a, b = packing.parse(f)
    assert (a.name, a.capacity, a.best, a.cores) == ("u_a", 10, 2, [5, 5, 7])
    assert (b.name, b.capacity, b.best, b.cores) == ("t_b", 1000, 1, [333, 667])


def test_a_truncated_file_is_an_error_naming_it(tmp_path: Path) -> None:
    f = tmp_path / "bad.txt"
    f.write_text("1\n x\n 10 3 2\n5\n")
    with pytest.raises(ValueError, match="ends early"):
        packing.parse(f)


def test_the_harness_prints_one_json_line_per_instance_and_strategy(tmp_path: Path, capsys) -> None:
    f = tmp_path / "one.txt"
    f.write_text("1\n tiny\n 10 6 2\n5\n4\n4\n3\n2\n2\n")
    assert packing.main([str(f), "--strategy", "first-fit-decreasing", "--strategy", "min-slack"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [(r["strategy"], r["bins"], r["best"]) for r in rows] == [("first-fit-decreasing", 3, 2),
                                                                     ("min-slack", 2, 2)]
    assert all(r["instance"] == "tiny" and r["seconds"] >= 0 for r in rows)


def test_two_dimensional_instances_respect_both_dimensions() -> None:
    for inst in packing.two_d(3, seed=5):
        for strategy in ("best-fit-decreasing", "min-slack"):
            row = packing.run(inst, strategy)  # run() checks cores and memory per worker itself
            assert row["bins"] >= inst.lower_bound


@pytest.mark.parametrize("strategy", ["first-fit-decreasing", "best-fit-decreasing"])
def test_decreasing_strategies_match_the_textbook_on_or_library_instances(strategy: str) -> None:
    for inst in packing.parse(DATA):
        expect = textbook(inst.cores, 2 * inst.lower_bound + 1, inst.capacity, True, strategy.startswith("best"))
        assert packing.run(inst, strategy)["bins"] == len(set(expect.values())), inst.name


def test_min_slack_reaches_the_best_known_packing_on_u120() -> None:
    rows = [packing.run(inst, "min-slack") for inst in packing.parse(DATA)]
    at_best = [r for r in rows if r["bins"] <= r["best"]]
    assert len(at_best) >= 0.9 * len(rows), rows
