"""The dashboard (dashboard.py): token checks in-process over WSGI, binding rules, the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from conftest import TINY_SPACE, call_wsgi, cli_command, cli_env
from dlboost_search.dashboard import check_binding, dashboard_app, is_loopback
from dlboost_search.errors import DashboardError
from dlboost_search.spaces import space_from_dict
from dlboost_search.testing import synthetic_study

TOKEN = "s3cret-token"


@pytest.fixture
def study_url(storage):
    synthetic_study(space_from_dict(TINY_SPACE, "test"), storage, 12)
    return storage


def test_without_a_token_the_api_answers(study_url):
    status, _, body = call_wsgi(dashboard_app(study_url, None), "/api/studies")
    assert status == 200
    assert [s["study_name"] for s in json.loads(body)["study_summaries"]] == ["tiny"]


@pytest.mark.parametrize(
    "path", ["/api/studies", "/api/studies/1", "/dashboard", "/csv/1", "/api/meta"]
)
def test_with_a_token_every_route_refuses_a_request_without_it(study_url, path):
    status, headers, body = call_wsgi(dashboard_app(study_url, TOKEN), path)
    assert status == 401
    assert headers["WWW-Authenticate"] == "Bearer"
    assert b"token" in body and TOKEN.encode() not in body


def test_write_routes_are_refused_too(study_url):
    app = dashboard_app(study_url, TOKEN)
    status, _, _ = call_wsgi(app, "/api/studies/1", method="DELETE")
    assert status == 401
    status, _, body = call_wsgi(app, "/api/studies", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and json.loads(body)["study_summaries"]  # the study is still there


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer wrong"},
        {"Cookie": "dlboost_token=wrong"},
        {"Authorization": TOKEN},
    ],
)
def test_a_wrong_token_is_refused(study_url, headers):
    status, _, _ = call_wsgi(dashboard_app(study_url, TOKEN), "/api/studies", headers=headers)
    assert status == 401


def test_the_token_in_a_header_a_cookie_or_the_query_is_accepted(study_url):
    app = dashboard_app(study_url, TOKEN)
    assert call_wsgi(app, "/api/studies", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
    assert call_wsgi(app, "/api/studies", {"Cookie": f"dlboost_token={TOKEN}"})[0] == 200
    status, headers, _ = call_wsgi(app, f"/dashboard?token={TOKEN}")
    assert status == 200
    # The browser keeps it, so the page's own API calls carry it.
    assert headers["Set-Cookie"].startswith(f"dlboost_token={TOKEN};")
    assert "HttpOnly" in headers["Set-Cookie"]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("localhost", True), ("::1", True), ("127.0.0.2", True),
     ("0.0.0.0", False), ("192.168.1.5", False), ("::", False), ("example.org", False)],
)  # fmt: skip
def test_loopback_detection(host, loopback):
    assert is_loopback(host) is loopback


def test_binding_beyond_loopback_needs_a_token():
    check_binding("127.0.0.1", None)
    check_binding("0.0.0.0", TOKEN)
    with pytest.raises(DashboardError, match="--new-token"):
        check_binding("0.0.0.0", None)


def test_cli_refuses_a_public_bind_without_a_token(run_cli, storage):
    result = run_cli("dashboard", "--storage", storage, "--host", "0.0.0.0", "--port", "0")
    assert result.returncode == 2
    assert "refusing to serve the dashboard on 0.0.0.0 without a token" in result.stderr


def serve(storage, *args):
    """Start `dlboost-search dashboard` and return (process, printed URL)."""
    process = subprocess.Popen(
        cli_command("dashboard", "--storage", storage, "--port", "0", *args),
        env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    line = process.stdout.readline()
    match = re.search(r"http://\S+", line)
    assert match, line + process.stderr.read()
    return process, match.group(0)


def stop(process):
    process.terminate()
    process.communicate(timeout=30)  # also closes the pipes


def test_cli_serves_over_http_and_prints_a_new_token_once(study_url):
    process, url = serve(study_url, "--new-token")
    try:
        token = url.split("?token=")[1]
        assert len(token) >= 24
        base = url.split("/dashboard")[0]
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/api/studies", timeout=10)
        assert refused.value.code == 401
        refused.value.close()
        request = urllib.request.Request(
            f"{base}/api/studies", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.load(response)["study_summaries"][0]["study_name"] == "tiny"
    finally:
        stop(process)


def test_cli_port_in_use_is_a_clear_error(study_url, run_cli):
    process, url = serve(study_url)
    try:
        port = url.split(":")[2].split("/")[0]
        time.sleep(0.2)
        result = run_cli("dashboard", "--storage", study_url, "--port", port)
        assert result.returncode == 2
        assert f"cannot serve the dashboard on 127.0.0.1:{port}" in result.stderr
    finally:
        stop(process)
