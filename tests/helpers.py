"""Shared test helpers: polling with a liveness bound, REST client, Docker inspection."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any

import docker
import requests

from Common import http

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}


def admin_uri(cfg: Any) -> str:
    """The deployment's MongoDB URI authenticated as its admin user (tests only: for databases of their own and
    for processes that take a URI). Never printed or logged."""
    from urllib.parse import quote, urlsplit

    from Common.store.credentials import read_credentials, uri_has_credentials

    uri = cfg.mongo_uri
    cred = None if uri_has_credentials(uri) else read_credentials(cfg, "admin")
    if cred is None:
        return uri
    parts = urlsplit(uri)
    netloc = f"{quote(cred['user'], safe='')}:{quote(cred['password'], safe='')}@{parts.netloc}"
    query = "&".join(q for q in (parts.query, "authSource=admin") if q)
    return parts._replace(netloc=netloc, query=query).geturl()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 90.0, interval: float = 0.2) -> Any:
    """Poll until ``check()`` is truthy. ``timeout`` is a liveness bound (a hang), not a speed claim."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last value: {last!r}")


class Api:
    def __init__(self, base: str, token: str) -> None:
        self.base = base.rstrip("/") + "/api/v1"
        self.token = token
        self.s = http.Session()

    def headers(self, auth: bool = True) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if auth else {}

    def post(self, path: str, json: Any = None, auth: bool = True, headers: dict[str, str] | None = None,
             **kw: Any) -> requests.Response:
        return self.s.post(self.base + path, json=json, headers={**self.headers(auth), **(headers or {})},
                           timeout=30, **kw)

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.s.get(self.base + path, timeout=30, **kw)

    def delete(self, path: str, auth: bool = True) -> requests.Response:
        return self.s.delete(self.base + path, headers=self.headers(auth), timeout=30)

    def put(self, path: str, json: Any = None, auth: bool = True) -> requests.Response:
        return self.s.put(self.base + path, json=json, headers=self.headers(auth), timeout=30)

    def submit(self, body: dict[str, Any]) -> str:
        r = self.post("/jobs", json=body)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.get(f"/jobs/{job_id}", headers=self.headers())  # with the token: tasks' log tails included
        assert r.status_code == 200, r.text
        return r.json()

    def wait_state(self, job_id: str, states: set[str] | str, timeout: float = 120.0) -> dict[str, Any]:
        want = {states} if isinstance(states, str) else states

        def check() -> dict[str, Any] | None:
            j = self.job(job_id)
            return j if j["state"] in want else None

        return wait_for(f"job {job_id} to reach {sorted(want)}", check, timeout)

    def wait_tasks(self, job_id: str, state: str, timeout: float = 120.0) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            j = self.job(job_id)
            return j if all(t["state"] == state for t in j["tasks"].values()) else None

        return wait_for(f"every task of {job_id} to be {state}", check, timeout)


def task_job(tasks: dict[str, dict[str, Any]], name: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"job_info": {"tasks": tasks}, **extra}
    if name:
        body["job_name"] = name
    return body


def sleeper(seconds: float, cores: int = 1, mem: str = "64m", **extra: Any) -> dict[str, Any]:
    return {"image": "rswarm/task:1", "command": ["sleep", str(seconds)], "req_cores": cores, "mem_limit": mem,
            **extra}


def docker_client() -> docker.DockerClient:
    return docker.DockerClient(base_url="unix:///var/run/docker.sock")


def containers_of(cluster: str, job_id: str | None = None, all_: bool = True) -> list[dict[str, Any]]:
    filters = [f"rswarm.cluster={cluster}"] + ([f"rswarm.job={job_id}"] if job_id else [])
    return docker_client().api.containers(all=all_, filters={"label": filters})


def networks_named(name: str) -> list[str]:
    out = subprocess.run(["docker", "network", "ls", "--format", "{{.Name}}"], capture_output=True, text=True)
    return [n for n in out.stdout.split() if n == name]


def actor_pid(cfg: Any, name: str) -> int:
    """The pid of a process the deployment runs ("mongo", "worker", "discovery", ...): the one place tests
    look processes up, so that a change in how they are started or supervised is made here only."""
    import Management

    pid = Management.Processes(cfg).alive(name)
    assert pid is not None, f"{name} is not running"
    return pid


def signal_actor(cfg: Any, name: str, sig: int) -> int:
    """Send ``sig`` (SIGSTOP, SIGCONT, SIGKILL) to that process's group, as a real fault would hit it."""
    import os

    pid = actor_pid(cfg, name)
    os.killpg(pid, sig)
    return pid
