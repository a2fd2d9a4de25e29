"""Schemathesis against the FrontEnd's and the GlobalManager's OpenAPI documents, authenticated:
no 5xx, no undocumented status code, no response that violates its documented schema."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import requests

pytestmark = [pytest.mark.system, pytest.mark.usefixtures("idle_cluster")]

CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance"


def _schemathesis(url: str, token: str, examples: int, tmp_path: Path) -> tuple[int, str]:
    exe = Path(sys.executable).parent / "schemathesis"
    out = subprocess.run(
        [str(exe), "run", url, "-H", f"Authorization: Bearer {token}", "-c", CHECKS, "-n", str(examples),
         "--seed", "20261122", "--generation-database", "none", "--no-color", "--workers", "1",
         "--request-timeout", "30"],
        capture_output=True, text=True, cwd=tmp_path, timeout=900,
    )
    return out.returncode, out.stdout + out.stderr


def _generated(output: str) -> int:
    for line in output.splitlines():
        if "generated" in line and "passed" in line:
            return int(line.split()[0])
    return 0


@pytest.mark.parametrize("actor", ["frontend", "globalmanager"])
def test_schemathesis_finds_no_5xx_and_no_schema_violation(system, store, actor: str, tmp_path: Path) -> None:
    base = system.frontend_url if actor == "frontend" else system.globalmanager_url
    doc = requests.get(f"{base}/api/v1/swagger.json", timeout=10)
    assert doc.status_code == 200 and doc.json()["paths"]
    try:
        code, output = _schemathesis(f"{base}/api/v1/swagger.json", system.token(), 60, tmp_path)
    finally:
        # Generated, valid PUT /scheduler bodies persist: put the default strategy back for later tests.
        store.settings.col.delete_many({})
    assert code == 0, output[-4000:]
    assert _generated(output) >= 150, output[-2000:]


def test_every_operation_documents_its_error_responses(system) -> None:
    doc = requests.get(f"{system.frontend_url}/api/v1/swagger.json", timeout=10).json()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if method == "parameters":
                continue
            codes = set(op["responses"])
            assert codes & {"200", "201", "202"}, (path, method)
            if method in ("post", "put", "delete", "patch"):
                assert "401" in codes, (path, method)
                assert op.get("security"), (path, method)
