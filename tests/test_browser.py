"""In a real (headless) browser: Swagger UI submits a job and follows it; the status page shows it.

Debian's Chromium driven by Python playwright (``executable_path``; never ``playwright install``).
Screenshots go to ``test-artifacts/`` (PNG) for a person to look at.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from Common.config import Config
from tests.helpers import Api, sleeper, task_job, wait_for

pytestmark = [pytest.mark.system, pytest.mark.usefixtures("idle_cluster")]

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
UI_TIMEOUT_MS = 60_000  # a liveness bound for one UI step on a busy 2-core machine, not a speed claim


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run `bash dependences.sh test`"
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rswarm-chromium-") as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, args=CHROMIUM_FLAGS,
                                                       headless=True, viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(UI_TIMEOUT_MS)
        yield context
        context.close()


@pytest.fixture()
def page(browser: Any) -> Iterator[Any]:
    pg = browser.new_page()
    yield pg
    pg.close()


def _execute(op: Any) -> tuple[int, dict[str, Any]]:
    """Click Execute in an expanded operation and read the live response (status, body) from the page."""
    live = op.locator(".live-responses-table")
    clear = op.locator("button.btn-clear")
    if clear.count():  # the previous response goes first, so the one read below is new
        clear.click()
        live.wait_for(state="detached")
    op.locator("button.execute").click()
    code = live.locator("tbody td.response-col_status").first
    code.wait_for()
    body = live.locator("tbody td.response-col_description pre").first.inner_text()
    return int(code.inner_text().strip()), json.loads(body)


def _screenshot(page: Any, op: Any, name: str) -> None:
    """The operation's live response (status code and body) at the top of the window."""
    op.locator(".request-url").evaluate("e => e.scrollIntoView({block: 'start'})")
    page.screenshot(path=str(ARTIFACTS / name))


def test_swagger_ui_submits_a_job_and_follows_it_to_running(page: Any, system: Config, api: Api) -> None:
    page.goto(f"{system.frontend_url}/api/v1/docs")
    page.locator(".swagger-ui .info .title").wait_for()
    assert "RESTfulSwarm FrontEnd" in page.locator(".swagger-ui .info .title").inner_text()

    # Authorise with the API token, as a person would.
    page.locator("button.authorize").first.click()
    dialog = page.locator(".dialog-ux .modal-ux")
    dialog.locator("input[type=text], input[type=password]").first.fill(f"Bearer {system.token()}")
    dialog.locator("button.authorize").click()
    dialog.locator("button.btn-done, button.close-modal").first.click()

    # POST /api/v1/jobs: Try it out with the sample body the document carries, then Execute.
    post = page.locator("#operations-jobs-post_jobs")
    post.locator(".opblock-summary").click()
    post.locator("button.try-out__btn").click()
    body = post.locator("textarea.body-param__text")
    sample = json.loads(body.input_value())
    assert sample["job_info"]["tasks"] and all(t["image"] == "rswarm/task:1"
                                               for t in sample["job_info"]["tasks"].values())
    sample["job_name"] = "from-swagger-ui"
    body.fill(json.dumps(sample, indent=2))
    status, created = _execute(post)
    assert status == 201, created
    job_id = created["id"]
    assert created["state"] == "QUEUED" and created["url"].endswith(job_id)
    _screenshot(page, post, "swagger-ui-submit.png")

    # GET /api/v1/jobs/{job_id} in the same UI until the job runs (or has already finished).
    get = page.locator("#operations-jobs-get_job")
    get.locator(".opblock-summary").click()
    get.locator("button.try-out__btn").click()
    get.locator("input[placeholder='job_id']").fill(job_id)
    seen: list[str] = []

    def running() -> dict[str, Any] | None:
        code, job = _execute(get)
        assert code == 200, job
        seen.append(job["state"])
        return job if job["state"] in ("RUNNING", "COMPLETED") else None

    job = wait_for(f"{job_id} to run, as Swagger UI shows it", running, 120, interval=1.0)
    assert job["id"] == job_id and job["name"] == "from-swagger-ui"
    assert all(t["node"] and t["cpuset"] for t in job["tasks"].values())
    _screenshot(page, get, "swagger-ui-job-running.png")
    # What the page showed is what the API says.
    assert api.job(job_id)["state"] in ("RUNNING", "COMPLETED")
    api.wait_state(job_id, "COMPLETED", timeout=120)


def test_status_page_shows_a_job_submitted_through_the_api(page: Any, system: Config, api: Api, store) -> None:
    ncores = len(store.workers.all()[0]["cores"])
    big = api.submit(task_job({f"t{i}": sleeper(300) for i in range(ncores)}, name="fills-the-node"))
    api.wait_tasks(big, "RUNNING", timeout=90)
    small = api.submit(task_job({"t": sleeper(1)}, name="waits-for-cores"))
    wait_for("a reason on the waiting job", lambda: api.job(small)["reason"], 60)

    page.goto(f"{system.frontend_url}/status?refresh=1")
    big_row = page.locator(f"#job-{big}")
    big_row.wait_for()
    assert "RUNNING" in big_row.inner_text() and "fills-the-node" in big_row.inner_text()
    queue = page.locator("#queue")
    assert small in queue.inner_text() and api.job(small)["reason"] in queue.inner_text()
    workers = page.locator("#workers")
    assert store.workers.all()[0]["_id"] in workers.inner_text()
    assert f"{ncores} / {ncores}" in workers.inner_text()
    assert page.locator("#workers .core.busy").count() == ncores
    assert page.locator("#evms").count() == 1
    html = page.content()
    assert system.token() not in html, "the status page shows the API token"
    assert re.search(r'http-equiv="refresh" content="1"', html)
    page.screenshot(path=str(ARTIFACTS / "status-page.png"), full_page=True)

    # It refreshes by itself: no reload from here on, the page follows the jobs.
    assert api.delete(f"/jobs/{big}").status_code == 202
    wait_for("the status page to show the cancellation",
             lambda: "CANCELLED" in page.locator(f"#job-{big}").inner_text(), 60, interval=0.5)
    small_row = page.locator(f"#job-{small}")
    wait_for("the status page to show the waiting job completed",
             lambda: small_row.count() and "COMPLETED" in small_row.inner_text(), 120, interval=0.5)
    assert "nothing waits" in page.locator("#queue").inner_text()


def test_status_page_is_read_only_and_validates_its_query(system: Config) -> None:
    base = system.frontend_url
    r = requests.get(f"{base}/status", timeout=30)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert system.token() not in r.text
    for bad in ("0", "abc", "99999", "-1", "1.5"):
        r = requests.get(f"{base}/status", params={"refresh": bad}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["field"] == "refresh", (bad, r.text)
    assert requests.post(f"{base}/status", timeout=30).status_code == 405


def test_openapi_examples_cover_every_body_and_error_response(system: Config) -> None:
    doc = requests.get(f"{system.frontend_url}/api/v1/swagger.json", timeout=30).json()
    defs = doc["definitions"]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if method == "parameters":
                continue
            for p in op.get("parameters", []):
                if p["in"] == "body":
                    schema = defs[p["schema"]["$ref"].rsplit("/", 1)[1]]
                    assert "example" in schema, (method, path)
            for code, resp in op["responses"].items():
                if int(code) >= 400:
                    example = resp.get("examples", {}).get("application/json")
                    assert example and example["error"]["code"] and example["error"]["message"], (method, path, code)
