"""Every dashboard page and action, on SQLite and PostgreSQL."""

from __future__ import annotations

import html
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from sqlalchemy import insert, select

from jobtable.db import engine as db_engine
from jobtable.db import cancels_sql, claims_sql, clock, tables, workers_sql
from jobtable.dashboard import queries
from tests.conftest import ALL_DIALECTS

from . import dashboard_support as support
from .dashboard_client import DashboardClient, client

pytestmark = pytest.mark.dialects(*ALL_DIALECTS)


PAGES = ["/", "/?window=1h", "/?window=7d", "/requests", "/requests?state=scheduled", "/processes", "/results",
         "/results?status=ERRORED", "/workers", "/schedules"]


@pytest.fixture
def dash(db_url: str) -> DashboardClient:
    queries.clear_cache()
    support.Flaky.failing = True
    return client()


def _requests(**where: Any) -> list[Any]:
    with db_engine.connect() as conn, conn.begin():
        stmt = select(tables.request)
        for key, value in where.items():
            stmt = stmt.where(tables.request.c[key] == value)
        return list(conn.execute(stmt.order_by(tables.request.c.id)))


def _results(**where: Any) -> list[Any]:
    with db_engine.connect() as conn, conn.begin():
        stmt = select(tables.result)
        for key, value in where.items():
            stmt = stmt.where(tables.result.c[key] == value)
        return list(conn.execute(stmt.order_by(tables.result.c.id)))


@pytest.mark.parametrize("path", PAGES)
def test_every_page_renders_on_an_empty_queue(dash: DashboardClient, path: str) -> None:
    response = dash.get(path)
    assert response.status_code == 200, response.text
    assert "text/html" in response.headers["content-type"]
    assert response.headers["x-frame-options"] == "DENY"
    assert "script-src 'self'" in response.headers["content-security-policy"]


@pytest.mark.parametrize("path", PAGES)
def test_live_fragments_render_without_the_page_frame(dash: DashboardClient, path: str) -> None:
    support.Noop(1).run_in_worker()
    response = dash.get(path, headers={"X-Jobtable-Fragment": "1"})
    assert response.status_code == 200
    assert "<html" not in response.text and "<nav>" not in response.text


def test_overview_cards_queues_and_charts(dash: DashboardClient) -> None:
    for i in range(3):
        support.Noop(i).run_in_worker()
    support.Noop(9).run_in_worker(queue="slow", delay=3600)
    support.add_result(tables.SUCCESSFUL)
    support.add_result(tables.SUCCESSFUL, ago=timedelta(hours=2))
    support.add_result(tables.ERRORED, error_type="ValueError", retried=True)
    support.add_result(tables.LOST, ago=timedelta(days=3))
    page = dash.get("/?window=1h").text
    assert _card(page, "pending") == "3"
    assert _card(page, "scheduled") == "1"
    assert _card(page, "successful") == "1"  # the 2-hour-old one is outside the window
    assert _card(page, "errored") == "1"
    assert _card(page, "retried") == "1"
    assert _card(page, "lost") == "0"
    assert _card(dash.get("/?window=7d").text, "lost") == "1"
    assert _card(dash.get("/?window=24h").text, "successful") == "2"
    assert "<svg" in page and "Jobs finished per interval" in page
    assert ">slow</a>" in page and ">default</a>" in page


def _card(page: str, key: str) -> str:
    chunk = page.split(f'data-card="{key}"', 1)[1]
    return chunk.split('<span class="value">', 1)[1].split("<", 1)[0].replace(",", "")


def test_chart_buckets_count_results_from_the_stats_table(dash: DashboardClient) -> None:
    now = datetime.now(timezone.utc)
    support.add_result(tables.SUCCESSFUL, ago=timedelta(minutes=30))
    support.add_result(tables.ERRORED, ago=timedelta(minutes=30))
    with db_engine.connect() as conn, conn.begin():
        first = queries.buckets(conn, now=now, window=timedelta(hours=24))
    assert sum(b.successful for b in first) == 1 and sum(b.failed for b in first) == 1
    assert any(b.wait is not None and abs(b.wait - 2.0) < 0.01 for b in first)
    # Nothing is cached in the process: a result written into a past bucket
    # (the triggers add it to the stats) is seen at once.
    support.add_result(tables.SUCCESSFUL, ago=timedelta(hours=5))
    with db_engine.connect() as conn, conn.begin():
        again = queries.buckets(conn, now=now, window=timedelta(hours=24))
    assert sum(b.successful for b in again) == 2


def test_requests_pages_in_claim_order_without_offset(dash: DashboardClient) -> None:
    for i in range(120):
        support.Noop(i).run_in_worker(priority=i % 3)
    expected = [r.task_id for r in sorted(_requests(state="pending"), key=lambda r: (-r.priority, r.id))]
    seen: list[str] = []
    url = "/requests?state=pending"
    pages = 0
    while url:
        page = dash.get(url).text
        pages += 1
        seen += [chunk.split("<", 1)[0] for chunk in page.split('<td class="mono">')[1:]]
        nxt = page.split('rel="next"', 1)[0].rsplit('href="', 1)[1].split('"', 1)[0] if 'rel="next"' in page else None
        url = "/requests" + nxt.replace("&amp;", "&") if nxt else ""
    assert pages == 3
    assert seen == expected


def test_requests_filters_and_scheduled_tab(dash: DashboardClient) -> None:
    support.Noop(1).run_in_worker(queue="a")
    support.Noop(2).run_in_worker(queue="b")
    later = support.Noop(3).run_in_worker(queue="a", delay=600)
    page = dash.get("/requests?state=pending&queue=a").text
    assert page.count('<td class="mono">') == 1
    assert dash.get(f"/requests?state=pending&job={support.NOOP}").text.count('<td class="mono">') == 2
    assert dash.get("/requests?state=pending&job=nope").text.count('<td class="mono">') == 0
    scheduled = dash.get("/requests?state=scheduled").text
    assert later is not None and later.uuid in scheduled
    detail = html.unescape(dash.get(f"/requests/{later.id}").text)
    assert "3\n]" in detail and "SCHEDULED" in detail


def test_mangled_cursor_shows_the_first_page(dash: DashboardClient) -> None:
    support.add_result()
    for cursor in ("x", "abc|def", "2026-01-01|", "|"):
        assert dash.get(f"/results?cursor={cursor}").status_code == 200
        assert dash.get(f"/requests?cursor={cursor}").status_code == 200
        assert dash.get(f"/requests?state=scheduled&cursor={cursor}").status_code == 200


def test_results_keyset_pagination_with_equal_end_times(dash: DashboardClient) -> None:
    same = timedelta(minutes=1)
    ids = [support.add_result(ago=same) for _ in range(70)] + [support.add_result(ago=timedelta(minutes=2))]
    with db_engine.connect() as conn, conn.begin():
        first = queries.results_page(conn, queries.ResultFilter(), None)
        second = queries.results_page(conn, queries.ResultFilter(), first.next_cursor)
    assert len(first.rows) == 50 and first.next_cursor
    assert second.next_cursor is None
    got = [r.id for r in first.rows + second.rows]
    assert sorted(got) == sorted(ids) and len(set(got)) == 71
    assert got[-1] == ids[-1]  # the older one comes last


def test_results_filters(dash: DashboardClient) -> None:
    ok = support.add_result(tables.SUCCESSFUL, task_name="app.A", queue="q1")
    bad = support.add_result(tables.ERRORED, task_name="app.B", queue="q2", error_type="KeyError")
    rows = _results()
    uuid_of = {r.id: r.task_id for r in rows}

    def listed(query: str) -> set[int]:
        page = dash.get("/results" + query).text
        return {int(c.split('"', 1)[0]) for c in page.split('data-result="')[1:]}

    assert listed("") == {ok, bad}
    assert listed("?status=ERRORED") == {bad}
    assert listed("?status=bogus") == {ok, bad}
    assert listed("?queue=q1") == {ok}
    assert listed("?job=app.B") == {bad}
    assert listed(f"?uuid={uuid_of[ok]}") == {ok}
    again = support.add_result(tables.ERRORED, task_name="app.B", queue="q2", retried=True)
    assert listed("?retried=1") == {again}
    assert listed("?retried=1&status=SUCCESSFUL") == set()
    assert 'href="/results?retried=1"' in dash.get("/").text
    assert listed("?uuid=00000000-0000-0000-0000-000000000000") == set()


def test_fail_retry_succeed_through_the_dashboard(dash: DashboardClient) -> None:
    support.Flaky("parcel-7").run_in_worker()
    assert support.run_next() == tables.ERRORED
    failed = _results()[0]
    detail = html.unescape(dash.get(f"/results/{failed.id}").text)
    assert "ValueError" in detail and "cannot handle parcel-7" in detail
    assert 'id="traceback"' in detail and "Traceback (most recent call last)" in detail
    assert '"parcel-7"' in detail  # the parameters
    assert 'data-action="retry"' in detail

    # First POST: a confirmation page, nothing done yet.
    confirm = dash.act("retry", [failed.id], confirmed=False, next=f"/results/{failed.id}")
    assert confirm.status_code == 200 and "Yes, retry 1 item(s)" in confirm.text
    assert _requests() == []

    done = dash.act("retry", [failed.id], next=f"/results/{failed.id}")
    assert done.status_code == 303
    assert done.headers["location"] == f"/results/{failed.id}?done=retry&n=1"
    waiting = _requests()
    assert [(r.task_id, r.attempt, r.state) for r in waiting] == [(failed.task_id, 2, tables.PENDING)]
    page = dash.get(done.headers["location"]).text
    assert "Retry: done for 1 item(s)." in page
    assert 'data-attempt="2" class="waiting"' in page and "PENDING" in page
    assert 'data-action="retry"' not in page  # already waiting again

    support.Flaky.failing = False
    assert support.run_next() == tables.SUCCESSFUL
    chain = _results(task_id=failed.task_id)
    assert [(r.attempt, r.status, r.retried) for r in chain] == [
        (1, tables.ERRORED, True),
        (2, tables.SUCCESSFUL, False),
    ]
    page = dash.get(f"/results/{failed.id}").text
    assert 'data-attempt="2"' in page and "SUCCESSFUL" in page
    success = html.unescape(dash.get(f"/results/{chain[1].id}").text)
    assert '"handled": "parcel-7"' in success
    # Retrying an older attempt again is refused with a reason.
    again = dash.act("retry", [failed.id])
    assert again.status_code == 303  # the latest attempt (2) is retried instead
    assert _requests()[0].attempt == 3


def test_retry_skips_jobs_already_waiting(dash: DashboardClient) -> None:
    support.Flaky("x").run_in_worker()
    support.run_next()
    failed = _results()[0]
    assert dash.act("retry", [failed.id]).status_code == 303
    second = dash.act("retry", [failed.id, 987654])
    assert second.status_code == 200
    assert "already waiting or running" in second.text and "not found" in second.text
    assert len(_requests()) == 1


def test_bulk_cancel_delete_and_run_now(dash: DashboardClient) -> None:
    jobs = [support.Noop(i).run_in_worker() for i in range(4)]
    later = support.Noop(99).run_in_worker(delay=3600)
    assert all(jobs) and later is not None
    confirm = dash.act("cancel", [jobs[0].id, jobs[1].id], confirmed=False, next="/requests")
    assert "Yes, cancel 2 item(s)" in confirm.text and jobs[0].uuid in confirm.text
    assert dash.act("cancel", [jobs[0].id, jobs[1].id], next="/requests").status_code == 303
    assert {r.task_id for r in _results(status=tables.CANCELLED)} == {jobs[0].uuid, jobs[1].uuid}
    assert dash.act("delete-requests", [jobs[2].id], next="/requests").status_code == 303
    assert {r.task_id for r in _requests()} == {jobs[3].uuid, later.uuid}
    assert len(_results()) == 2  # deleting leaves no result

    assert dash.act("run-now", [later.id], next="/requests?state=scheduled").status_code == 303
    row = _requests(task_id=later.uuid)[0]
    assert row.state == tables.PENDING and row.run_at <= datetime.now(timezone.utc)
    assert json.loads(row.message)["headers"]["eta"] is None

    # A running job is not deleted; its cancel is asked of its native worker
    # (a stored mark: tests/test_worker_cancel.py has the worker stop it).
    with db_engine.connect() as conn, conn.begin():
        claims_sql.claim(conn, ["default"], 10, worker_id="native:w1", now=clock.utcnow())
    assert dash.act("cancel", [jobs[3].id], next="/requests").status_code == 303
    with db_engine.connect() as conn:
        assert cancels_sql.asked(conn, [jobs[3].id], clock.utcnow()) == {jobs[3].id: cancels_sql.CANCELLED_ERROR}
    skipped = dash.act("delete-requests", [jobs[3].id])
    assert "already running or gone" in skipped.text

    results = [r.id for r in _results()]
    assert dash.act("delete-results", results, next="/results").status_code == 303
    assert _results() == []


def test_nothing_selected_and_unknown_action(dash: DashboardClient) -> None:
    assert dash.act("cancel", []).status_code == 400
    assert dash.act("cancel", ["abc"]).status_code == 400
    assert dash.act("explode", [1]).status_code == 404


def test_next_must_stay_inside_the_dashboard(dash: DashboardClient) -> None:
    job = support.Noop(1).run_in_worker()
    assert job is not None
    for evil in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        response = dash.act("cancel", [job.id], next=evil)
        assert response.headers["location"].startswith("/?done=cancel")
        job = support.Noop(1).run_in_worker()
        assert job is not None


def test_processes_by_worker(dash: DashboardClient) -> None:
    for i in range(3):
        support.Noop(i).run_in_worker()
    now = clock.utcnow()
    with db_engine.connect() as conn, conn.begin():
        alpha = claims_sql.claim(conn, ["default"], 2, worker_id="native:alpha", now=now - timedelta(minutes=3))
        (beta,) = claims_sql.claim(conn, ["default"], 1, worker_id="native:beta", now=now)
        for worker_id in ("native:alpha", "native:beta"):
            workers_sql.register_worker(conn, worker_id, hostname="h", pid=1, queues=["default"], processes=1, now=now)
    page = dash.get("/processes").text
    assert "0 job(s) running" in page  # claimed, but no worker reports them started
    with db_engine.connect() as conn, conn.begin():
        # alpha runs its first job, its second waits its turn (claimed).
        workers_sql.heartbeat(conn, ["native:alpha", "native:beta"], now, {"native:alpha": alpha[0].id, "native:beta": beta.id})
    page = dash.get("/processes").text
    assert "2 job(s) running" in page
    assert alpha[1].task_id not in page and alpha[0].task_id in page
    assert page.index("native:alpha") < page.index("native:beta")
    assert "3m 0" in page  # running for three minutes


def _cells(row: str) -> list[str]:
    """The text of a table row's cells (links unwrapped)."""
    import re

    return [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]


def test_workers_live_and_stale(dash: DashboardClient) -> None:
    now = clock.utcnow()
    rows = [
        {"id": "native:live", "kind": "native", "hostname": "h1", "pid": 11, "queues": '["default", "slow"]',
         "processes": 4, "started_at": now - timedelta(hours=1), "heartbeat_at": now},
        {"id": "native:dead", "kind": "native", "hostname": "h2", "pid": 12, "queues": '["default"]',
         "processes": 2, "started_at": now - timedelta(hours=2), "heartbeat_at": now - timedelta(minutes=10)},
    ]
    with db_engine.connect() as conn, conn.begin():
        conn.execute(insert(tables.worker), rows)
    support.Noop(1).run_in_worker()
    with db_engine.connect() as conn, conn.begin():
        claims_sql.claim(conn, ["default"], 1, worker_id="native:live", now=now)
    page = dash.get("/workers").text
    assert "1 live, 1 stale" in page
    live_row = page.split("native:live", 1)[1].split("</tr>", 1)[0]
    # Claimed, not started: counted as claimed, not running.
    assert "default, slow" in live_row and ">0</a>" in live_row and ">live<" in live_row
    assert _cells(live_row)[-4] == "1", live_row
    with db_engine.connect() as conn, conn.begin():
        (row,) = conn.execute(select(tables.request.c.id).where(tables.request.c.worker_id == "native:live")).all()
        workers_sql.heartbeat(conn, ["native:live"], now, {"native:live": row.id})
    live_row = dash.get("/workers").text.split("native:live", 1)[1].split("</tr>", 1)[0]
    assert ">1</a>" in live_row and _cells(live_row)[-4] == "0", live_row
    assert ">stale<" in page.split("native:dead", 1)[1].split("</tr>", 1)[0]


def test_workers_page_lists_a_celery_style_kombu_consumer(dash: DashboardClient, db_url: str) -> None:
    # A Kombu consumer on the jobtable transport (what a Celery worker is)
    # keeps a heartbeat row: it is listed with its queues and held messages.
    from kombu import Connection, Consumer, Exchange, Queue

    import jobtable  # noqa: F401  (the transport alias)

    held: list[Any] = []
    with Connection("jobtable+" + db_url) as conn:
        queue = Queue("celery", Exchange("celery"), "celery")
        conn.SimpleQueue("celery").put({"task": "x"})
        with Consumer(conn, [queue], callbacks=[lambda body, message: held.append(message)]):
            conn.drain_events(timeout=10)
            consumer_id = conn.transport.consumer_id
            page = dash.get("/workers").text
            assert consumer_id in page
            row = page.split(consumer_id, 1)[1].split("</tr>", 1)[0]
            # Held, never started (no Celery task ran it): claimed, not running.
            assert ">kombu<" in row and ">celery<" in row and ">0</a>" in row and ">live<" in row
            assert _cells(row)[-4] == "1", row
            held[0].ack()
    # Closed: the row is gone.
    assert consumer_id not in dash.get("/workers").text


def test_schedules_page_and_run_now(dash: DashboardClient) -> None:
    import jobtable

    jobtable.configure(schedule=[[support.NOOP, "0 9 * * *"]])
    from jobtable.scheduling import schedule_entries

    entry = schedule_entries()[0]
    with db_engine.connect() as conn, conn.begin():
        conn.execute(insert(tables.schedule), [
            {"name": entry.name, "last_slot": clock.utcnow() - timedelta(hours=3), "updated_at": clock.utcnow()},
            {"name": "old-entry [@daily]", "last_slot": None, "updated_at": clock.utcnow()},
        ])
    page = dash.get("/schedules").text
    row = page.split(f"<td>{html.escape(entry.name, quote=False)}", 1)[1].split("</tr>", 1)[0]
    assert "0 9 * * *" in row and "3h 0" in row and "in " in row  # last run 3 h ago, next run ahead
    assert 'data-action="run-schedule"' in row
    old = page.split("old-entry [@daily]", 1)[1].split("</tr>", 1)[0]
    assert "not in code" in old and "data-action" not in old

    confirm = dash.act("run-schedule", [entry.name], confirmed=False, next="/schedules")
    assert "Yes, run now 1 item(s)" in confirm.text
    assert dash.act("run-schedule", [entry.name], next="/schedules").status_code == 303
    assert [r.task_name for r in _requests()] == [support.NOOP]
    unknown = dash.act("run-schedule", ["no-such-entry"])
    assert unknown.status_code == 200 and "no schedule entry is named" in unknown.text


def test_schedules_page_survives_a_broken_setting(dash: DashboardClient) -> None:
    import jobtable

    jobtable.configure(schedule=[["no.such.module.Job", "0 9 * * *"]])
    page = dash.get("/schedules")
    assert page.status_code == 200 and "The schedule setting is invalid" in page.text


def test_mounted_under_a_prefix(db_url: str) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from jobtable.dashboard import create_app

    outer = Starlette(routes=[Mount("/ops/jobs", app=create_app(authorize=lambda r: True))])
    with DashboardClient(outer) as c:
        page = c.get("/ops/jobs/").text
        assert 'href="/ops/jobs/static/dashboard.css"' in page
        assert 'href="/ops/jobs/results"' in page
        assert c.get("/ops/jobs/static/dashboard.js").status_code == 200
        job = support.Noop(1).run_in_worker()
        assert job is not None
        token = c.cookies["jobtable_csrf"]
        response = c.post("/ops/jobs/actions/cancel", data={"csrf_token": token, "ids": [str(job.id)], "confirmed": "1",
                                                              "next": "/ops/jobs/requests"}, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"].startswith("/ops/jobs/requests?")


@pytest.mark.parametrize("strip_path", [False, True])
def test_dispatched_by_root_path_as_django_or_a_wsgi_adapter_would(db_url: str, strip_path: bool) -> None:
    """Django's ASGI dispatch (full path + root_path) and adapters that strip
    the prefix from the path both work, links and action redirects included."""
    from jobtable.dashboard import create_app

    dashboard = create_app(authorize=lambda r: True)

    async def outer(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await dashboard(scope, receive, send)
            return
        assert scope["path"].startswith("/jobs")
        path = (scope["path"][len("/jobs"):] or "/") if strip_path else scope["path"]
        await dashboard(dict(scope, root_path="/jobs", path=path), receive, send)

    with DashboardClient(outer) as c:
        page = c.get("/jobs/results?status=ERRORED").text
        assert 'href="/jobs/static/dashboard.css"' in page
        assert 'name="next" value="/jobs/results?status=ERRORED"' in page
        assert c.get("/jobs/static/dashboard.js").status_code == 200
        job = support.Noop(1).run_in_worker()
        assert job is not None
        response = c.post("/jobs/actions/cancel", data={"csrf_token": c.cookies["jobtable_csrf"], "ids": [str(job.id)],
                                                         "confirmed": "1", "next": "/jobs/requests"},
                          follow_redirects=False)
        assert response.headers["location"] == "/jobs/requests?done=cancel&n=1"


def test_unmigrated_database_is_a_clear_error(tmp_path: Any) -> None:
    c = client(database_url=f"sqlite:///{tmp_path}/empty.sqlite3")
    response = c.get("/")
    assert response.status_code == 503 and "jobtable migrate" in response.text


def test_cli_dashboard_command_is_registered() -> None:
    from click.testing import CliRunner

    from jobtable.cli import main

    result = CliRunner().invoke(main, ["dashboard", "--help"])
    assert result.exit_code == 0 and "--port" in result.output and "--token" in result.output
    bad = CliRunner().invoke(main, ["dashboard", "--basic-auth", "nocolon"])
    assert bad.exit_code != 0 and "USER:PASSWORD" in bad.output


# -- big parts: shown cut, whole at .../full/<part> ----------------------------------------


def test_big_parameters_and_traceback_are_cut_with_a_link_to_the_full_text(dash: DashboardClient) -> None:
    from jobtable.dashboard.formatting import PREVIEW_CHARS

    big = "<b>" + "x" * (3 * PREVIEW_CHARS) + "ZZENDZZ"
    request = support.Noop(big).run_in_worker()
    assert request is not None
    page = dash.get(f"/requests/{request.id}").text
    shown = html.unescape(page.split('id="args">', 1)[1].split("</pre>", 1)[0])
    assert "ZZENDZZ" not in shown and len(shown) == PREVIEW_CHARS and "<b>x" not in page and "&lt;b&gt;x" in page
    assert len(page) < 2 * PREVIEW_CHARS  # not the 30,000-character argument
    assert f"/requests/{request.id}/full/args" in page and "Full text" in page
    full = dash.get(f"/requests/{request.id}/full/args")
    assert full.status_code == 200 and full.headers["content-type"].startswith("text/plain")
    assert full.headers["x-content-type-options"] == "nosniff"
    assert "ZZENDZZ" in full.text and "<b>" in full.text  # text/plain: nothing to escape, nothing rendered

    # PostgreSQL text cannot hold NUL; SQLite's can, and the route escapes it.
    nul = "\x00" if db_engine.get_engine().dialect.name == "sqlite" else "<0>"
    trace = "Traceback\n" + f"frame{nul}\n" * (PREVIEW_CHARS // 3) + "LAST LINE"
    result_id = support.add_result(tables.ERRORED, error_type="ValueError", error_message="m" * (2 * PREVIEW_CHARS) + "ZZTAILZZ",
                                   traceback=trace, return_value=None)
    page = dash.get(f"/results/{result_id}").text
    assert "LAST LINE" not in page and "ZZTAILZZ" not in page
    assert f"/results/{result_id}/full/traceback" in page and f"/results/{result_id}/full/error-message" in page
    text = dash.get(f"/results/{result_id}/full/traceback").text
    assert text.endswith("LAST LINE") and "\x00" not in text and ("\\x00" in text or nul == "<0>")
    assert dash.get(f"/results/{result_id}/full/error-message").text.endswith("ZZTAILZZ")


def test_full_text_routes_refuse_unknown_parts_and_rows(dash: DashboardClient) -> None:
    request = support.Noop(1).run_in_worker()
    assert request is not None
    assert dash.get(f"/requests/{request.id}/full/message").status_code == 404
    assert dash.get(f"/requests/{request.id}/full/traceback").status_code == 404
    assert dash.get("/results/999999/full/traceback").status_code == 404
    assert dash.get(f"/other/{request.id}/full/args").status_code == 404


def test_full_text_follows_the_dashboard_access_rules(db_url: str) -> None:
    queries.clear_cache()
    request = support.Noop("x").run_in_worker()
    assert request is not None
    guarded = client(authorize=None, token="s3cret-token")
    assert guarded.get(f"/requests/{request.id}/full/args").status_code in (401, 403)
    assert guarded.get(f"/requests/{request.id}/full/args", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200


def test_live_refresh_does_not_reload_the_big_parts(dash: DashboardClient) -> None:
    request = support.Noop("BIGPART" * 1000).run_in_worker()
    assert request is not None
    fragment = dash.get(f"/requests/{request.id}", headers={"X-Jobtable-Fragment": "1"}).text
    assert "BIGPART" not in fragment and "Queue" in fragment
    result_id = support.add_result(tables.ERRORED, traceback="TRACEBACKTEXT" * 1000, error_type="E", error_message="e")
    fragment = dash.get(f"/results/{result_id}", headers={"X-Jobtable-Fragment": "1"}).text
    assert "TRACEBACKTEXT" not in fragment and "Attempts" in fragment
