"""Imports flow one way: the import-linter contracts in pyproject.toml hold on this tree, and each of them
breaks when one of the knots they exist to prevent is put back (so the check itself can fail)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["Common", "FrontEnd", "JobManager", "GlobalManager", "Discovery", "Worker", "StressClient"]
LINT = str(Path(sys.executable).with_name("lint-imports"))


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LINT, "--config", str(tree / "pyproject.toml"), "--no-cache"], cwd=tree,
                          capture_output=True, text=True, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
                          timeout=300)


def test_every_import_contract_is_kept_on_this_tree() -> None:
    r = lint(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


# Each knot that tree had before the layering work, put back as one added import line.
KNOTS = [
    ("the FrontEnd imports the JobManager", "FrontEnd/jobs.py", "import JobManager.manager",
     "Actors never import each other"),
    ("Common imports the Worker's EVM code", "Common/ops/cluster.py", "from Worker import evms",
     "Common, the shared core, imports no actor"),
    ("Common's worker store imports the JobManager", "Common/store/workers.py", "import JobManager.manager",
     "Common, the shared core, imports no actor"),
    ("the migrations import the manager back (even for type checking)", "JobManager/migrations.py",
     "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from JobManager.manager import JobManager",
     "No import cycle between the modules of a package"),
    ("the Worker's lifecycle imports the Worker back", "Worker/lifecycle.py", "import Worker.worker",
     "No import cycle between the modules of a package"),
    ("the placement pipeline reaches up to the registry", "Common/placement/pipeline.py",
     "from Common.placement.registry import get_strategy", "Inside placement, dependencies run one way"),
    ("placement reads MongoDB", "Common/placement/state.py", "import pymongo",
     "Placement is pure"),
]


@pytest.mark.parametrize(("what", "path", "line", "contract"), KNOTS, ids=[k[0] for k in KNOTS])
def test_a_contract_breaks_when_a_knot_is_put_back(tmp_path: Path, what: str, path: str, line: str,
                                                   contract: str) -> None:
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "templates"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / path
    target.write_text(target.read_text() + "\n" + line + "\n")
    r = lint(tmp_path)
    assert r.returncode != 0, f"{what}: every contract still kept\n{r.stdout}"
    broken = [ln for ln in r.stdout.splitlines() if ln.endswith("BROKEN")]
    assert any(ln.startswith(contract) for ln in broken), f"{what}: broke {broken}, not {contract!r}"
