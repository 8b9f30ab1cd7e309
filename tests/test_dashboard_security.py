"""Access control, CSRF, read-only mode and escaping of user data."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from markupsafe import escape
from sqlalchemy import select

from jobtable.db import engine as db_engine
from jobtable.db import tables
from jobtable.dashboard import security

from . import dashboard_support as support
from .dashboard_client import client

XSS = '<script>alert("pwned")</script>'


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def pending_job(db_url: str) -> Any:
    job = support.Noop(1).run_in_worker()
    assert job is not None
    return job


def _pending() -> int:
    with db_engine.connect() as conn, conn.begin():
        return len(list(conn.execute(select(tables.request.c.id))))


# -- who may see it -------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "127.0.0.2"])
def test_default_allows_loopback(db_url: str, host: str) -> None:
    c = client(authorize=None, client=(host, 40000))
    assert c.get("/").status_code == 200
    assert c.get("/static/dashboard.css").status_code == 200


@pytest.mark.parametrize("host", ["10.0.0.5", "192.168.1.20", "2001:db8::1", "testclient"])
def test_default_refuses_other_hosts(db_url: str, host: str) -> None:
    c = client(authorize=None, client=(host, 40000))
    for path in ("/", "/results", "/static/dashboard.js"):
        response = c.get(path)
        assert response.status_code == 403, path
        assert "only local requests" in response.text
    assert c.post("/actions/cancel", data={"ids": "1"}).status_code == 403


@pytest.mark.parametrize("header", ["X-Forwarded-For", "Forwarded", "X-Real-IP"])
def test_default_refuses_proxied_requests_even_from_loopback(db_url: str, header: str) -> None:
    c = client(authorize=None, client=("127.0.0.1", 40000))
    assert c.get("/", headers={header: "203.0.113.9"}).status_code == 403


def test_authorize_hook_sync_and_async(db_url: str) -> None:
    def only_admins(request: Any) -> bool:
        return request.headers.get("x-user") == "admin"

    async def async_admins(request: Any) -> bool:
        return request.headers.get("x-user") == "admin"

    for hook in (only_admins, async_admins):
        c = client(authorize=hook, client=("10.0.0.5", 1))
        assert c.get("/").status_code == 403
        assert c.get("/", headers={"x-user": "admin"}).status_code == 200


def test_basic_auth(db_url: str) -> None:
    c = client(authorize=None, basic_auth=("ops", "s3cret"), client=("10.0.0.5", 1))
    missing = c.get("/")
    assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Basic")
    assert c.get("/", headers=_basic("ops", "wrong")).status_code == 401
    assert c.get("/", headers={"Authorization": "Basic !!notbase64"}).status_code == 401
    assert c.get("/", headers=_basic("ops", "s3cret")).status_code == 200


def test_token(db_url: str) -> None:
    c = client(authorize=None, token="tok-123", client=("10.0.0.5", 1))
    assert c.get("/").status_code == 401
    assert c.get("/", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert c.get("/", headers={"Authorization": "Bearer tok-123"}).status_code == 200
    assert c.get("/", headers=_basic("anyone", "tok-123")).status_code == 200


def test_async_hook_and_token_together(db_url: str) -> None:
    async def header_says_so(request: Any) -> bool:
        return request.headers.get("x-user") == "admin"

    c = client(authorize=header_says_so, token="tok", client=("10.0.0.5", 1))
    assert c.get("/").status_code == 401
    assert c.get("/", headers={"x-user": "admin"}).status_code == 200
    assert c.get("/", headers={"Authorization": "Bearer tok"}).status_code == 200


def test_hook_and_basic_auth_together(db_url: str) -> None:
    c = client(authorize=security.loopback_only, basic_auth=("ops", "pw"), client=("10.0.0.5", 1))
    assert c.get("/").status_code == 401
    assert c.get("/", headers=_basic("ops", "pw")).status_code == 200
    local = client(authorize=security.loopback_only, basic_auth=("ops", "pw"), client=("127.0.0.1", 1))
    assert local.get("/").status_code == 200


# -- CSRF -------------------------------------------------------------------------------


def test_post_without_or_with_a_wrong_token_is_refused(pending_job: Any) -> None:
    c = client()
    form = {"ids": [str(pending_job.id)], "confirmed": "1"}
    assert c.post("/actions/cancel", data=form).status_code == 403  # no cookie, no field
    token = c.csrf()
    assert c.post("/actions/cancel", data=form).status_code == 403  # cookie, no field
    assert c.post("/actions/cancel", data={**form, "csrf_token": "x" * 43}).status_code == 403
    other = client()
    other_token = other.csrf()
    assert other_token != token
    assert c.post("/actions/cancel", data={**form, "csrf_token": other_token}).status_code == 403
    assert _pending() == 1
    ok = c.post("/actions/cancel", data={**form, "csrf_token": token}, follow_redirects=False)
    assert ok.status_code == 303 and _pending() == 0


def test_confirmation_step_needs_the_token_too(pending_job: Any) -> None:
    c = client()
    c.csrf()
    response = c.post("/actions/cancel", data={"ids": [str(pending_job.id)]})
    assert response.status_code == 403 and "CSRF" in response.text


def test_cross_origin_post_is_refused_even_with_the_token(pending_job: Any) -> None:
    c = client()
    token = c.csrf()
    form = {"ids": [str(pending_job.id)], "confirmed": "1", "csrf_token": token}
    for origin in ("https://evil.example", "null"):
        assert c.post("/actions/cancel", data=form, headers={"Origin": origin}).status_code == 403
    assert c.post("/actions/cancel", data=form, headers={"Referer": "http://evil.example/x"}).status_code == 403
    assert _pending() == 1
    same = c.post("/actions/cancel", data=form, headers={"Origin": "http://testserver"}, follow_redirects=False)
    assert same.status_code == 303


def test_csrf_cookie_is_strict_and_http_only(db_url: str) -> None:
    c = client()
    cookie = c.get("/").headers["set-cookie"].lower()
    assert "jobtable_csrf=" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    # Not reissued once the browser has it (tabs keep working).
    assert "set-cookie" not in c.get("/results").headers


def test_every_form_carries_the_token(db_url: str) -> None:
    support.Flaky("a").run_in_worker()
    support.run_next()
    support.Noop(1).run_in_worker(delay=600)
    c = client()
    token = c.csrf()
    with db_engine.connect() as conn, conn.begin():
        result_id = conn.execute(select(tables.result.c.id)).scalar_one()
        request_id = conn.execute(select(tables.request.c.id)).scalar_one()
    for path in ("/results", "/requests?state=scheduled", f"/results/{result_id}", f"/requests/{request_id}"):
        page = c.get(path).text
        forms = page.count('method="post"')
        assert forms >= 1, path
        assert page.count(f'name="csrf_token" value="{token}"') == forms, path


# -- read-only --------------------------------------------------------------------------


def test_read_only_mode_hides_and_refuses_actions(pending_job: Any) -> None:
    support.Flaky("a").run_in_worker()
    support.run_next()
    c = client(read_only=True)
    for path in ("/requests", "/results", f"/requests/{pending_job.id}"):
        page = c.get(path).text
        assert 'method="post"' not in page and "data-action" not in page, path
        assert "read-only" in page
    token = c.csrf()
    response = c.post("/actions/cancel", data={"ids": [str(pending_job.id)], "confirmed": "1", "csrf_token": token})
    assert response.status_code == 403 and "read-only" in response.text
    assert _pending() == 1


# -- escaping ---------------------------------------------------------------------------


def test_user_data_is_escaped_everywhere(db_url: str) -> None:
    support.Flaky.failing = True
    support.Flaky(XSS).run_in_worker(queue=XSS, concurrency_key=XSS)
    assert support.run_next(queues=(XSS,)) == tables.ERRORED
    support.Noop(1).run_in_worker(queue=XSS)
    support.add_result(tables.SUCCESSFUL, task_name=XSS, queue=XSS, return_value=f'"{XSS}"', meta=f'{{"x": "{XSS}"}}')
    c = client()
    with db_engine.connect() as conn, conn.begin():
        results = [r.id for r in conn.execute(select(tables.result.c.id).order_by(tables.result.c.status))]
        requests = [r.id for r in conn.execute(select(tables.request.c.id))]
    paths = ["/", "/requests", f"/requests?queue={XSS}", "/results", f"/results?queue={XSS}&job={XSS}&uuid={XSS}",
             "/processes", "/schedules"]
    paths += [f"/results/{i}" for i in results] + [f"/requests/{i}" for i in requests]
    seen_escaped = 0
    for path in paths:
        for headers in ({}, {"X-Jobtable-Fragment": "1"}):
            page = c.get(path, headers=headers).text
            assert "<script>alert" not in page, path
            seen_escaped += page.count("&lt;script&gt;alert")
    assert seen_escaped > 10
    detail = c.get(f"/results/{results[0]}").text
    # In the parameters, the exception message and the traceback.
    assert detail.count("&lt;script&gt;") >= 4
    assert "cannot handle " + str(escape(XSS)) in detail
    # The confirmation page names the job: escaped too.
    token = c.csrf()
    confirm = c.post("/actions/retry", data={"ids": [str(results[1])], "csrf_token": token}).text
    assert "<script>alert" not in confirm and "&lt;script&gt;" in confirm
