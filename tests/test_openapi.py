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


def test_pod_view_and_set_resize_are_documented_with_schemas_and_examples(system) -> None:
    doc = requests.get(f"{system.frontend_url}/api/v1/swagger.json", timeout=10).json()
    pods, pod = doc["paths"]["/jobs/{job_id}/epms"]["get"], doc["paths"]["/jobs/{job_id}/epms/{name}"]["get"]
    assert pods["responses"]["200"]["schema"]["$ref"].endswith("/EpmList")
    assert pod["responses"]["200"]["schema"]["$ref"].endswith("/Epm")
    assert {p["name"] for p in pod["parameters"]} >= {"vm_limit", "vm_after", "vm_state"}
    assert pod["responses"]["404"]["examples"]["application/json"]["error"]["field"] == "name"
    assert doc["definitions"]["Epm"]["example"]["vms"][0]["name"] == "vm1"
    resize = doc["paths"]["/jobs/{job_id}/evms"]["patch"]
    assert set(resize["responses"]) >= {"202", "400", "401", "404", "409"} and resize.get("security")
    assert resize["responses"]["409"]["examples"]["application/json"]["error"]["field"] == "job_id"
    assert doc["definitions"]["EvmSetUpdate"]["example"]["count"] == 40
    task = doc["definitions"]["Job"]["properties"]["tasks"]["additionalProperties"]
    assert {"ip", "addresses"} <= set(task["properties"])
    assert doc["definitions"]["Job"]["example"]["tasks"]["t1"]["ip"] == "10.201.3.2"
