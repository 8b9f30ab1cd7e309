"""End to end in a real headless Chromium: see a failed job, open its
traceback, retry it, watch it succeed; bulk actions; escaping in the DOM.

Needs Debian's ``chromium`` package and the ``playwright`` Python package
(its own browser download is not used).  Set JOBTABLE_DASHBOARD_SCREENSHOTS
to a directory to keep the screenshots the tests take (the ones in
docs/dashboard come from ``python -m tests.dashboard_screenshots``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sqlalchemy import select

from jobtable.db import engine as db_engine
from jobtable.db import tables
from jobtable.dashboard import create_app, queries

from . import dashboard_support as support
from .dashboard_browser import CHROMIUM, Server, launch_browser

from playwright.sync_api import expect  # noqa: E402  (drives Debian's Chromium; no download)

expect.set_options(timeout=15_000)


@pytest.fixture(scope="module")
def browser_context() -> Iterator[Any]:
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does).", pytrace=False)
    yield from launch_browser()


@pytest.fixture
def server(db_url: str) -> Iterator[Server]:
    queries.clear_cache()
    support.Flaky.failing = True
    # No authorize hook: the default (loopback only) lets the local browser in.
    running = Server(create_app(refresh_seconds=0.3))
    yield running
    running.stop()


@pytest.fixture
def page(browser_context: Any) -> Iterator[Any]:
    tab = browser_context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    yield tab
    tab.close()
    assert errors == [], errors


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    target = os.environ.get("JOBTABLE_DASHBOARD_SCREENSHOTS")
    path = Path(target) if target else tmp_path
    path.mkdir(parents=True, exist_ok=True)
    return path


def _task_ids(table: Any) -> list[str]:
    with db_engine.connect() as conn, conn.begin():
        return list(conn.execute(select(table.c.task_id).order_by(table.c.id)).scalars())


def test_see_a_failure_open_its_traceback_retry_it_and_watch_it_succeed(
    server: Server, page: Any, shots: Path
) -> None:
    support.Flaky("invoice-42").run_in_worker()
    support.Noop(1).run_in_worker(queue="reports", delay=3600)
    assert support.run_next() == tables.ERRORED
    support.add_result(tables.SUCCESSFUL)

    page.goto(server.url + "/")
    errored = page.locator('[data-card="errored"] .value')
    expect(errored).to_have_text("1")
    page.screenshot(path=str(shots / "overview.png"), full_page=True)

    errored.click()
    expect(page).to_have_url(server.url + "/results?status=ERRORED")
    rows = page.locator("#results tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("ValueError: cannot handle invoice-42")
    page.screenshot(path=str(shots / "results.png"), full_page=True)

    rows.first.get_by_role("link", name=support.FLAKY).click()
    traceback = page.locator("#traceback")
    expect(traceback).to_contain_text("Traceback (most recent call last)")
    expect(traceback).to_contain_text('raise ValueError(f"cannot handle {self.payload}")')
    expect(page.locator("#args")).to_contain_text('"invoice-42"')
    page.screenshot(path=str(shots / "result-detail.png"), full_page=True)
    detail_url = page.url

    page.get_by_role("button", name="Retry").click()
    expect(page.locator("h1")).to_have_text("Retry?")
    expect(page.locator(".confirm-list")).to_contain_text("attempt 1 (ERRORED)")
    page.get_by_role("button", name="Yes, retry 1 item(s)").click()

    expect(page).to_have_url(detail_url + "?done=retry&n=1")
    expect(page.locator(".flash")).to_have_text("Retry: done for 1 item(s).")
    second = page.locator('#attempts tr[data-attempt="2"]')
    expect(second).to_contain_text("PENDING")
    expect(page.get_by_role("button", name="Retry")).to_have_count(0)

    # The "worker" runs the retry; the page updates itself.
    support.Flaky.failing = False
    assert support.run_next() == tables.SUCCESSFUL
    expect(second).to_contain_text("SUCCESSFUL")
    expect(page.locator('#attempts tr[data-attempt="1"]')).to_contain_text("ERRORED")

    second.get_by_role("link", name="2").click()
    expect(page.locator("#return-value")).to_contain_text('"handled": "invoice-42"')
    expect(page.locator("#status")).to_have_text("SUCCESSFUL")

    for name, path in [("requests", "/requests?state=scheduled"), ("workers", "/workers"),
                       ("processes", "/processes"), ("schedules", "/schedules")]:
        page.goto(server.url + path)
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)


def test_bulk_cancel_with_select_all_and_confirmation(server: Server, page: Any) -> None:
    jobs = [support.Noop(i).run_in_worker() for i in range(5)]
    page.goto(server.url + "/requests")
    expect(page.locator("#requests tbody tr")).to_have_count(5)

    # Nothing selected: the browser says so and nothing is posted.
    dialogs: list[str] = []
    page.once("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.get_by_role("button", name="Cancel selected").click()
    expect(page.locator("#requests tbody tr")).to_have_count(5)
    assert dialogs == ["Select one or more rows first."]

    page.locator("[data-check-all]").check()
    expect(page.locator("input[name=ids]:checked")).to_have_count(5)
    page.get_by_role("button", name="Cancel selected").click()
    expect(page.locator(".confirm-list li")).to_have_count(5)
    page.get_by_role("link", name="No, go back").click()
    expect(page.locator("#requests tbody tr")).to_have_count(5)

    page.locator("#requests tbody tr").nth(1).locator("input[name=ids]").check()
    page.locator("#requests tbody tr").nth(3).locator("input[name=ids]").check()
    page.get_by_role("button", name="Cancel selected").click()
    page.get_by_role("button", name="Yes, cancel 2 item(s)").click()
    expect(page.locator(".flash")).to_have_text("Cancel: done for 2 item(s).")
    expect(page.locator("#requests tbody tr")).to_have_count(3)
    assert len(_task_ids(tables.request)) == 3
    assert {j.uuid for j in jobs if j} - set(_task_ids(tables.request)) == set(_task_ids(tables.result))


def test_injected_markup_never_runs(server: Server, page: Any) -> None:
    payload = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
    support.Flaky(payload).run_in_worker(queue=payload)
    assert support.run_next(queues=(payload,)) == tables.ERRORED
    support.Noop(1).run_in_worker(queue=payload)
    with db_engine.connect() as conn, conn.begin():
        result_id = conn.execute(select(tables.result.c.id)).scalar_one()
    for path in ("/", "/requests", "/results", f"/results/{result_id}"):
        page.goto(server.url + path)
        # Wait for one live refresh, which goes through innerHTML.
        before = page.evaluate("document.body.getAttribute('data-refreshed')")
        page.wait_for_function(
            "prev => document.body.getAttribute('data-refreshed') !== prev", arg=before
        )
        assert page.evaluate("window.__pwned") is None, path
    expect(page.locator("#exception")).to_contain_text(payload)


def test_with_a_real_worker_process(server: Server, page: Any, tmp_path: Path, subprocess_env: dict[str, str],
                                    python: str) -> None:
    """The same flow with `jobtable worker --burst` running the jobs."""
    import subprocess

    gate = tmp_path / "gate"
    support.FileGate(str(gate)).run_in_worker()

    def work() -> None:
        done = subprocess.run(
            [python, "-m", "jobtable", "--app", "tests.dashboard_support", "worker", "--burst",
             "--max-processes", "1", "--stats-every", "0"],
            env=subprocess_env, capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr

    work()
    page.goto(server.url + "/results?status=ERRORED")
    page.locator("#results tbody tr").first.get_by_role("link", name=support.FileGate.job_name()).click()
    expect(page.locator("#traceback")).to_contain_text("RuntimeError: gate closed")
    page.get_by_role("button", name="Retry").click()
    page.get_by_role("button", name="Yes, retry 1 item(s)").click()
    second = page.locator('#attempts tr[data-attempt="2"]')
    expect(second).to_contain_text("PENDING")

    gate.write_text("open")
    work()
    expect(second).to_contain_text("SUCCESSFUL")
    second.get_by_role("link", name="2").click()
    expect(page.locator("#return-value")).to_contain_text(str(gate))
