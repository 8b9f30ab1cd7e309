"""Access control, CSRF, read-only mode and escaping of user data."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markupsafe import escape
from sqlalchemy import select

from jobtable.db import engine as db_engine
from jobtable.db import tables
from jobtable.dashboard import create_app, hosts, security

from . import dashboard_support as support
from .dashboard_client import DashboardClient, client

XSS = '<script>alert("pwned")</script>'
LOCAL = "http://127.0.0.1:8000"


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
    c = client(authorize=None, client=(host, 40000), base_url=LOCAL)
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
    # Loopback admits without a password, so host names are restricted as
    # in local-only mode: the remote name must be allowed.
    c = client(
        authorize=security.loopback_only, basic_auth=("ops", "pw"), client=("10.0.0.5", 1), allowed_hosts=["testserver"]
    )
    assert c.get("/").status_code == 401
    assert c.get("/", headers=_basic("ops", "pw")).status_code == 200
    local = client(authorize=security.loopback_only, basic_auth=("ops", "pw"), client=("127.0.0.1", 1))
    assert local.get("/", headers={"Host": "localhost:8000"}).status_code == 200
    assert local.get("/", headers={"Host": "evil.example"}).status_code == 400


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


# -- DNS rebinding: which Host names are served ---------------------------------------------

LOOPBACK_HOSTS = [
    "localhost", "LOCALHOST:8000", "localhost.", "localhost.:8000", "app.localhost:8000", "127.0.0.1",
    "127.0.0.1:8000", "127.1.2.3:80", "[::1]", "[::1]:8000", "[0:0:0:0:0:0:0:1]:8000", "[::ffff:127.0.0.1]:1",
]
HOSTILE_HOSTS = [
    "evil.example", "evil.example:8000", "localhost.evil.example", "127.0.0.1.nip.io:8000", "0.0.0.0:8000",
    "10.0.0.1", "", " ", "localhost :8000", "[::1", "[::1]x", "::1", "127.0.0.1:99999", "127.0.0.1:0",
    "127.0.0.1:", "localhost:80:80", "localhost:8o", "[fe80::1%25lo]", "[::1%lo]:8000", "user@localhost",
    "localhost/x", "localhost..", ".localhost", "-localhost", "127.0.0.1\x00", "loc\xe9lhost", "[v1.fe]",
    "2130706433", "127.1", "0x7f.0.0.1",
]


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
def test_local_only_serves_loopback_names(db_url: str, host: str) -> None:
    c = client(authorize=None, client=("127.0.0.1", 40000))
    for path in ("/", "/static/dashboard.css"):
        assert c.get(path, headers={"Host": host}).status_code == 200, (host, path)


@pytest.mark.parametrize("host", HOSTILE_HOSTS)
def test_local_only_refuses_other_names_from_loopback(pending_job: Any, host: str) -> None:
    """A rebound page's requests come from 127.0.0.1 but carry its own name."""
    c = client(authorize=None, client=("127.0.0.1", 40000), base_url=LOCAL)
    token = c.csrf()  # the attacker cannot read it, but even with it:
    headers = {"Host": host.encode("latin-1")}
    for path in ("/", "/results", f"/requests/{pending_job.id}", "/static/dashboard.js"):
        response = c.get(path, headers=headers)
        assert response.status_code == 400, (host, path)
        assert "--allowed-host" in response.text and "allowed_hosts=" in response.text
        assert response.headers["content-type"].startswith("text/plain")
        assert "jobtable_csrf" not in response.headers.get("set-cookie", "")
    form = {"ids": [str(pending_job.id)], "confirmed": "1", "csrf_token": token}
    assert c.post("/actions/delete-requests", data=form, headers=headers).status_code == 400
    assert _pending() == 1


def test_refusal_names_the_host_to_allow(db_url: str) -> None:
    c = client(authorize=None, client=("127.0.0.1", 1))
    text = c.get("/", headers={"Host": "Dash.Internal:8000"}).text
    assert "'Dash.Internal:8000'" in text and "--allowed-host dash.internal:8000" in text


def _raw_http(url: str, request: bytes) -> bytes:
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_missing_or_repeated_host_header_over_real_http(db_url: str) -> None:
    from .dashboard_browser import Server

    server = Server(create_app(refresh_seconds=0))
    try:
        # HTTP/1.0 may leave Host out; h11 passes such a request on.
        missing = _raw_http(server.url, b"GET / HTTP/1.0\r\n\r\n")
        assert missing.startswith(b"HTTP/1.1 400") and b"no Host header" in missing
        twice = _raw_http(server.url, b"GET / HTTP/1.0\r\nHost: localhost\r\nHost: evil.example\r\n\r\n")
        assert twice.startswith(b"HTTP/1.1 400")
        ok = _raw_http(server.url, b"GET / HTTP/1.0\r\nHost: localhost:1\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200")
        rebound = _raw_http(server.url, b"GET /results HTTP/1.0\r\nHost: evil.example\r\n\r\n")
        assert rebound.startswith(b"HTTP/1.1 400") and b"DNS rebinding" in rebound
    finally:
        server.stop()


def test_allowed_hosts_in_local_only_mode(db_url: str) -> None:
    c = client(authorize=None, client=("127.0.0.1", 1), allowed_hosts=["dash.internal", "*.corp.example", "box:9000"])
    for host in ("dash.internal", "DASH.INTERNAL.:8000", "a.b.corp.example", "box:9000", "localhost:8000"):
        assert c.get("/", headers={"Host": host}).status_code == 200, host
    for host in ("corp.example", "xcorp.example", "box:9001", "box", "evil.example", "dash.internal.evil"):
        assert c.get("/", headers={"Host": host}).status_code == 400, host
    # The address check still applies: an allowed name does not admit strangers.
    remote = client(authorize=None, client=("10.0.0.5", 1), allowed_hosts=["dash.internal"])
    assert remote.get("/", headers={"Host": "dash.internal"}).status_code == 403


def test_with_a_password_any_name_unless_hosts_are_listed(db_url: str) -> None:
    auth = {"Authorization": "Bearer tok"}
    open_names = client(authorize=None, token="tok", client=("10.0.0.5", 1))
    assert open_names.get("/", headers={**auth, "Host": "anything.example"}).status_code == 200
    listed = client(authorize=None, token="tok", client=("10.0.0.5", 1), allowed_hosts=["dash.example.com"])
    assert listed.get("/", headers={**auth, "Host": "dash.example.com"}).status_code == 200
    refused = listed.get("/", headers={**auth, "Host": "localhost"})
    assert refused.status_code == 400 and "allowed hosts" in refused.text and "rebinding" not in refused.text
    # Strangers learn nothing about the names: authentication comes first.
    assert listed.get("/", headers={"Host": "evil.example"}).status_code == 401


@pytest.mark.parametrize(
    "entry", ["", "http://dash.example.com", "dash example", "*.[::1]", "x:0", "x:70000", "a/b", "*", "user@x"]
)
def test_bad_allowed_host_entries_are_clear_errors(entry: str) -> None:
    with pytest.raises(ValueError, match="allowed_hosts") as raised:
        create_app(allowed_hosts=[entry])
    assert repr(entry) in str(raised.value) and "dash.example.com:8443" in str(raised.value)
    with pytest.raises(ValueError, match=r"allowed_hosts must be a list.*\['localhost'\]"):
        create_app(allowed_hosts="localhost")


def test_cli_allowed_host_flag_and_env_var(db_url: str) -> None:
    from click.testing import CliRunner

    from jobtable.cli import main

    help_text = CliRunner().invoke(main, ["dashboard", "--help"]).output
    assert "--allowed-host" in help_text and "JOBTABLE_DASHBOARD_ALLOWED_HOSTS" in help_text
    bad = CliRunner().invoke(main, ["dashboard", "--allowed-host", "http://x"])
    assert bad.exit_code != 0 and "--allowed-host" in bad.output and "'http://x'" in bad.output
    bad_env = CliRunner().invoke(main, ["dashboard"], env={"JOBTABLE_DASHBOARD_ALLOWED_HOSTS": "ok.example, x:0"})
    assert bad_env.exit_code != 0 and "'x:0'" in bad_env.output


def test_cli_serves_an_allowed_host_and_refuses_a_rebound_one(subprocess_env: dict[str, str]) -> None:
    import socket
    import subprocess
    import sys

    import httpx

    from .polling import terminate, wait_for

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**subprocess_env, "JOBTABLE_DASHBOARD_ALLOWED_HOSTS": "env.internal, other.internal"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobtable", "dashboard", "--port", str(port), "--allowed-host", "flag.internal"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"

    def status(host: str) -> int | None:
        try:
            return httpx.get(url, headers={"Host": host}, timeout=5).status_code
        except httpx.TransportError:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            return None

    try:
        assert wait_for(lambda: status("localhost"), timeout=60, what="the dashboard to listen") == 200
        # The flag wins over the variable (click: command line first).
        assert status("flag.internal:8000") == 200
        assert status("env.internal") == 400
        refused = httpx.get(url, headers={"Host": "evil.example"}, timeout=5)
        assert refused.status_code == 400 and "--allowed-host evil.example" in refused.text
    finally:
        terminate(proc)
    env_only = subprocess.Popen(
        [sys.executable, "-m", "jobtable", "dashboard", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    proc = env_only
    try:
        assert wait_for(lambda: status("env.internal"), timeout=60, what="the dashboard to listen") == 200
        assert status("other.internal:1") == 200
        assert status("flag.internal") == 400
    finally:
        terminate(env_only)


# -- Origin / Referer of a POST -----------------------------------------------------------


def _confirm(c: Any, job_id: int, headers: dict[str, str]) -> int:
    """The confirmation step: CSRF-checked, changes nothing."""
    form = {"ids": [str(job_id)], "csrf_token": c.csrf()}
    return int(c.post("/actions/delete-requests", data=form, headers=headers).status_code)


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://localhost:8000"},  # a loopback name, but not the one posted to
        {"Origin": "http://127.0.0.1:9999"},
        {"Origin": "http://127.0.0.1"},
        {"Origin": "http://127.0.0.1:8000@evil.example"},
        {"Origin": "http://evil.example@127.0.0.1:8000"},
        {"Origin": "ftp://127.0.0.1:8000"},
        {"Origin": "127.0.0.1:8000"},
        {"Origin": ""},
        {"Origin": "http://[::1"},
        {"Referer": "http://evil.example/results"},
        {"Referer": "//127.0.0.1:8000/results"},
        {"Referer": "garbage"},
        {"Origin": "http://evil.example", "Referer": "http://127.0.0.1:8000/"},  # Origin wins
    ],
)
def test_cross_origin_posts_are_refused(pending_job: Any, headers: dict[str, str]) -> None:
    c = client(authorize=None, client=("127.0.0.1", 1), base_url=LOCAL)
    assert _confirm(c, pending_job.id, headers) == 403
    form = {"ids": [str(pending_job.id)], "confirmed": "1", "csrf_token": c.csrf()}
    assert c.post("/actions/delete-requests", data=form, headers=headers).status_code == 403
    assert _pending() == 1


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Origin": "http://127.0.0.1:8000"},
        {"Origin": "HTTP://127.0.0.1:8000"},
        {"Referer": "http://127.0.0.1:8000/results?status=errored"},
        {"Host": "localhost.:8000", "Origin": "http://LOCALHOST:8000"},
        {"Host": "[::1]:8000", "Origin": "http://[0::1]:8000"},
        {"Host": "localhost", "Origin": "http://localhost:80"},
    ],
)
def test_same_origin_posts_are_accepted(pending_job: Any, headers: dict[str, str]) -> None:
    c = client(authorize=None, client=("127.0.0.1", 1), base_url=LOCAL)
    assert _confirm(c, pending_job.id, headers) == 200


def test_origin_must_be_an_allowed_host_behind_a_proxy(pending_job: Any) -> None:
    # A TLS-terminating proxy forwards Host; the app itself sees http.
    c = client(authorize=None, token="tok", client=("10.0.0.5", 1), allowed_hosts=["dash.example.com"],
               base_url="http://dash.example.com", headers={"Authorization": "Bearer tok"})
    assert _confirm(c, pending_job.id, {"Origin": "https://dash.example.com"}) == 200
    assert _confirm(c, pending_job.id, {"Origin": "https://other.example.com"}) == 403
    assert _confirm(c, pending_job.id, {"Origin": "https://dash.example.com:8443"}) == 403


# -- the "Back" link after an action ------------------------------------------------------

HOSTILE_NEXT = [
    "//evil.example", "///evil.example", "/\\evil.example", "\\\\evil.example", "\\/evil.example",
    "https://evil.example/", "http:/evil.example", "javascript:alert(1)", "JavaScript:alert(1)",
    "data:text/html,x", "/results\r\nSet-Cookie: x=1", "/results\nx", "/%2F%2Fevil.example", "/%2f/evil.example",
    "/%5Cevil.example", "/%252F%252Fevil.example", "/%25252F%25252F%25252F%25252Fevil", "/%0d%0aSet-Cookie:x",
    "/../admin", "/results/%2e%2e/%2e%2e/x", "/./results", "results", " /results", "/results x", "",
    "/r\x00", "/r\u2044", "\u3002/evil", "/\t/evil.example", "?x=1", "#x",
]


@pytest.mark.parametrize("value", HOSTILE_NEXT)
def test_hostile_back_links_fall_back_to_the_dashboard(pending_job: Any, value: str) -> None:
    c = client()
    page = c.act("cancel", [pending_job.id], confirmed=False, next=value)
    assert page.status_code == 200
    assert 'name="next" value="/"' in page.text and 'href="/" class="button"' in page.text
    done = c.act("cancel", [pending_job.id], next=value)
    assert done.status_code == 303 and done.headers["location"].startswith("/?done=cancel")


@pytest.mark.parametrize(
    "value", ["/", "/results?status=errored&queue=a%20b", f"/requests/{7}", "/results?next=//evil.example#top"]
)
def test_safe_back_links_are_kept(pending_job: Any, value: str) -> None:
    c = client()
    page = c.act("cancel", [pending_job.id], confirmed=False, next=value)
    assert f'name="next" value="{escape(value)}"' in page.text
    done = c.act("cancel", [pending_job.id], next=value)
    assert done.headers["location"].startswith(value.partition("#")[0])


def test_back_links_stay_under_the_mount_point(pending_job: Any) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    outer = Starlette(routes=[Mount("/jobs", app=create_app(authorize=lambda r: True, refresh_seconds=0))])
    c = DashboardClient(outer)
    assert c.get("/jobs/workers").status_code == 200
    token = c.cookies[security.CSRF_COOKIE]
    for value, kept in (("/jobs/results", True), ("/jobs", True), ("/other", False), ("/jobsx", False),
                        ("/", False), ("/jobs/../admin", False), ("/jobs/%2e%2e/admin", False)):
        form = {"ids": [str(pending_job.id)], "csrf_token": token, "next": value}
        page = c.post("/jobs/actions/cancel", data=form)
        expected = value if kept else "/jobs/"
        assert page.status_code == 200 and f'name="next" value="{expected}"' in page.text, value


# -- brute force ----------------------------------------------------------------------------


def test_failed_logins_are_rate_limited_per_address(db_url: str) -> None:
    c = client(authorize=None, token="tok", client=("203.0.113.7", 1))
    now = [1000.0]
    c.app.state.auth_limiter.clock = lambda: now[0]
    # The browser's first request has no credentials: not a guess.
    for _ in range(30):
        assert c.get("/").status_code == 401
    for _ in range(10):
        assert c.get("/", headers={"Authorization": "Bearer guess"}).status_code == 401
        now[0] += 1
    blocked = c.get("/", headers={"Authorization": "Bearer tok"})  # even the right one
    assert blocked.status_code == 429 and blocked.headers["retry-after"] == "50"
    assert "try again in 50 seconds" in blocked.text
    assert c.get("/static/dashboard.css", headers=_basic("x", "tok")).status_code == 429
    other = client(authorize=None, token="tok", client=("203.0.113.8", 1))
    other.app = c.app
    assert other.get("/", headers={"Authorization": "Bearer tok"}).status_code == 200
    # The window slides: the first failure expires and one more guess is allowed.
    now[0] = 1000.0 + 60
    assert c.get("/", headers=_basic("ops", "nope")).status_code == 401
    assert c.get("/", headers={"Authorization": "Bearer tok"}).status_code == 429
    now[0] += 61
    assert c.get("/", headers={"Authorization": "Bearer tok"}).status_code == 200


def test_loopback_user_is_locked_out_only_for_the_window(db_url: str) -> None:
    c = client(authorize=None, basic_auth=("ops", "pw"), client=("127.0.0.1", 1))
    now = [0.0]
    c.app.state.auth_limiter.clock = lambda: now[0]
    for _ in range(10):
        assert c.get("/", headers=_basic("ops", "typo")).status_code == 401
    assert c.get("/", headers=_basic("ops", "pw")).status_code == 429
    now[0] = 60.0
    assert c.get("/", headers=_basic("ops", "pw")).status_code == 200


def test_limiter_memory_is_bounded_and_ipv6_counts_per_64() -> None:
    from jobtable.dashboard.ratelimit import FailureLimiter

    now = [0.0]
    limiter = FailureLimiter(limit=3, window=60, max_clients=50, clock=lambda: now[0])
    for i in range(5000):
        limiter.failed(f"198.51.{i // 256}.{i % 256}")
        limiter.failed(f"not an address {i}" * 50)
    assert len(limiter) <= 50
    for i in range(3):
        limiter.failed(f"2001:db8::{i + 1}")
    assert limiter.retry_after("2001:db8::ffff") == 60
    assert limiter.retry_after("2001:db8:0:1::1") == 0
    assert limiter.retry_after("::ffff:198.51.19.135") == 0  # evicted long ago
    with pytest.raises(ValueError, match="limit"):
        FailureLimiter(limit=0)


# -- the validators, over any text ----------------------------------------------------------

HOST_ALPHABET = "aAlLoOcChHsStT0127.:[]%-_@/\\ \t\x00é"


def _really_loopback(value: str) -> bool:
    import ipaddress

    text = value.lower()
    if text.startswith("["):
        inner, _, rest = text[1:].partition("]")
        ip = ipaddress.IPv6Address(inner)
        return (ip.ipv4_mapped or ip).is_loopback and (not rest or rest[1:].isdigit())
    name = text.rsplit(":", 1)[0] if ":" in text else text
    name = name[:-1] if name.endswith(".") else name
    if name == "localhost" or name.endswith(".localhost"):
        return True
    return ipaddress.IPv4Address(name).is_loopback


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(), st.text(alphabet=HOST_ALPHABET, max_size=30),
                 st.sampled_from(LOOPBACK_HOSTS + HOSTILE_HOSTS)))
def test_host_validator_over_any_text(value: str) -> None:
    policy = hosts.HostPolicy(local_only=True)
    accepted = policy.permits_header(value)
    if accepted:
        assert value.isascii() and not any(c in value for c in " \t\r\n\x00/@\\%")
        assert _really_loopback(value), value
    assert hosts.HostPolicy(local_only=False).permits_header(value)
    listed = hosts.HostPolicy(local_only=True, allowed=hosts.parse_allowed(["x.example"]))
    if listed.permits_header(value) and not accepted:
        parsed = hosts.parse_host(value)
        assert parsed is not None and parsed.name == "x.example", value


@settings(max_examples=100, deadline=None)
@given(
    name=st.sampled_from(["localhost", "a.localhost", "127.0.0.1", "127.255.0.9", "[::1]", "[::ffff:127.0.0.2]"]),
    upper=st.booleans(),
    dot=st.booleans(),
    port=st.one_of(st.none(), st.integers(1, 65535)),
)
def test_every_loopback_form_is_accepted(name: str, upper: bool, dot: bool, port: int | None) -> None:
    value = name.upper() if upper else name
    if dot and not value.startswith("["):
        value += "."
    if port is not None:
        value += f":{port}"
    assert hosts.HostPolicy(local_only=True).permits_header(value)


NEXT_ALPHABET = "/\\%2fF5cC0dDaA.:?#@ \r\n\tjobsx&=é"


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(), st.text(alphabet=NEXT_ALPHABET, max_size=30), st.sampled_from(HOSTILE_NEXT)),
       st.sampled_from(["", "/jobs"]))
def test_back_link_validator_over_any_text(value: str, base: str) -> None:
    from urllib.parse import unquote, urljoin, urlsplit

    if not hosts.safe_path(value, base):
        return
    here = "http://127.0.0.1:8000" + base + "/results"
    forms = [value]
    for _ in range(4):
        forms.append(unquote(forms[-1]))
    for form in forms:
        target = urlsplit(urljoin(here, form))
        assert target.scheme == "http" and target.netloc == "127.0.0.1:8000", form
        assert target.path == base or target.path.startswith(base + "/"), form
        assert "\\" not in target.path and not any(ord(c) < 33 or ord(c) > 126 for c in form.partition("?")[0])
