"""The dashboard (dashboard.py): token and Host checks in-process over WSGI, binding rules,
the URL it prints, the CLI."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from conftest import TINY_SPACE, call_wsgi, cli_command, cli_env
from dlboost_search import dashboard
from dlboost_search.dashboard import check_binding, dashboard_app, is_loopback
from dlboost_search.errors import DashboardError
from dlboost_search.spaces import space_from_dict
from dlboost_search.testing import synthetic_study

TOKEN = "s3cret-token-for-tests"


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


def test_a_token_with_url_and_cookie_characters_works_from_the_printed_url(study_url):
    """A user's token may hold &, #, +, ;, spaces or non-ASCII: the printed URL and the
    cookie carry it quoted, and both are accepted."""
    token = "a&b=c #d+e;f%20g/h?é"
    app = dashboard_app(study_url, token)
    url = dashboard.url_to_open("127.0.0.1", 8080, token)
    status, headers, _ = call_wsgi(app, url.removeprefix("http://127.0.0.1:8080"))
    assert status == 200
    cookie = headers["Set-Cookie"].partition(";")[0]
    assert call_wsgi(app, "/api/studies", {"Cookie": cookie})[0] == 200
    assert call_wsgi(app, "/api/studies", {"Cookie": "dlboost_token=a&b=c"})[0] == 401


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


@pytest.mark.parametrize("token", ["", "   ", "fifteen-chars!!"])
def test_an_empty_blank_or_short_token_is_refused_never_read_as_no_token(study_url, token):
    for host in ("127.0.0.1", "0.0.0.0"):
        with pytest.raises(DashboardError, match="--new-token"):
            check_binding(host, token)
    # The middleware too: a token was asked for, so an empty one must not switch it off.
    with pytest.raises(DashboardError, match="--new-token"):
        dashboard_app(study_url, token)


def test_a_short_token_is_refused_with_its_length_not_its_value():
    with pytest.raises(DashboardError) as refused:
        check_binding("0.0.0.0", "fifteen-chars!!")
    assert "of 15 characters: it needs at least 16" in str(refused.value)
    assert "fifteen-chars!!" not in str(refused.value)


EVIL = {"Host": "evil.example:8080"}


def studies(app, headers=None):
    status, _, body = call_wsgi(app, "/api/studies", headers)
    assert status == 200
    return [s["study_name"] for s in json.loads(body)["study_summaries"]]


@pytest.mark.parametrize("token", [None, TOKEN])
def test_a_request_addressed_to_another_name_is_refused_before_the_token(study_url, token):
    # DNS rebinding: a web page reaches a loopback dashboard through a name it controls.
    app = dashboard_app(study_url, token)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    status, headers, body = call_wsgi(app, "/api/studies", {**EVIL, **auth})
    assert status == 403
    assert headers["Content-Type"].startswith("text/plain")
    assert b"'evil.example'" in body and b"--allow-host NAME" in body
    assert call_wsgi(app, "/api/studies/1", {**EVIL, **auth}, method="DELETE")[0] == 403
    assert studies(app, auth) == ["tiny"]  # still there


@pytest.mark.parametrize(
    "host", ["localhost:8080", "127.0.0.1:8080", "[::1]:8080", "127.0.0.2", "LocalHost.:8080"]
)
def test_a_loopback_dashboard_answers_its_loopback_names(study_url, host):
    assert studies(dashboard_app(study_url, None), {"Host": host}) == ["tiny"]


def test_a_request_without_a_host_header_is_answered(study_url):
    app = dashboard_app(study_url, None)

    def without_host(environ, start_response):  # HTTP/1.0; a browser always sends one
        del environ["HTTP_HOST"]  # which call_wsgi puts in
        return app(environ, start_response)

    assert studies(without_host) == ["tiny"]


@pytest.mark.parametrize("host", ["192.168.1.5:8080", "10.0.0.1", "[fe80::1]:8080"])
def test_a_loopback_dashboard_refuses_other_addresses(study_url, host):
    assert call_wsgi(dashboard_app(study_url, None), "/api/studies", {"Host": host})[0] == 403


def test_an_allowed_host_name_is_answered(study_url):
    app = dashboard_app(study_url, None, allow=["dash.example"])
    assert studies(app, {"Host": "Dash.Example:443"}) == ["tiny"]
    assert call_wsgi(app, "/api/studies", EVIL)[0] == 403


def test_beyond_loopback_this_machine_and_ip_addresses_are_answered(study_url):
    app = dashboard_app(study_url, TOKEN, host="0.0.0.0")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for host in (socket.gethostname(), "192.168.1.5:8080", "[fe80::1]:8080", "localhost"):
        assert studies(app, {"Host": host, **auth}) == ["tiny"]
    assert call_wsgi(app, "/api/studies", {**EVIL, **auth})[0] == 403


def test_bound_to_all_interfaces_the_url_names_this_machine(monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "dash-host")
    assert dashboard.url_to_open("0.0.0.0", 8080, TOKEN) == (
        f"http://dash-host:8080/dashboard?token={TOKEN} "
        f"(on this machine: http://127.0.0.1:8080/dashboard?token={TOKEN})"
    )
    assert dashboard.url_to_open("::", 8080, None) == (
        "http://dash-host:8080/dashboard (on this machine: http://[::1]:8080/dashboard)"
    )
    assert dashboard.url_to_open("::1", 8080, None) == "http://[::1]:8080/dashboard"
    assert dashboard.url_to_open("192.168.1.5", 80, None) == "http://192.168.1.5:80/dashboard"


def test_an_address_that_is_not_this_machines_is_a_clear_error(study_url):
    # 192.0.2.0/24 is kept for documentation: no machine has it.
    with pytest.raises(DashboardError, match="192.0.2.1: that address is not one of this"):
        dashboard.serve(study_url, "192.0.2.1", 0, TOKEN)


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_serves_on_the_ipv6_loopback(study_url):
    server, url = dashboard.serve(study_url, "::1", 0, None)
    try:
        assert url == f"http://[::1]:{server.server_port}/dashboard"
        with urllib.request.urlopen(url.replace("/dashboard", "/api/studies"), timeout=10) as r:
            assert json.load(r)["study_summaries"][0]["study_name"] == "tiny"
    finally:
        server.shutdown()
        server.server_close()


def serve(storage, *args):
    """Start `dlboost-search dashboard` and return (process, printed URL)."""
    process = subprocess.Popen(
        cli_command("dashboard", "--storage", storage, "--port", "0", *args),
        env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    line = process.stdout.readline()
    match = re.search(r"http://\S+", line)
    if not match:  # it refused to start: reap it, so no pipe or process outlives the test
        process.terminate()
        pytest.fail(line + process.communicate(timeout=30)[1])
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


@pytest.mark.parametrize(
    ("token", "message"),
    [("", "refusing an empty dashboard token"), ("   ", "refusing an empty dashboard token"),
     ("fifteen-chars!!", "refusing a dashboard token of 15 characters")],
)  # fmt: skip
def test_cli_refuses_an_empty_or_short_token(run_cli, storage, token, message):
    # Before: an empty --token "$UNSET" served with no check at all, on any --host.
    result = run_cli("dashboard", "--storage", storage, "--port", "0", "--token", token,
                     timeout=60)  # fmt: skip
    assert result.returncode == 2, result.stdout
    assert message in result.stderr and "--new-token" in result.stderr
    assert "fifteen-chars!!" not in result.stderr + result.stdout


@pytest.mark.parametrize("value", ["", "  "])
def test_cli_refuses_an_empty_token_from_the_environment(storage, tmp_path, value):
    result = subprocess.run(
        cli_command("dashboard", "--storage", storage, "--port", "0"),
        env={**cli_env(), "DLBOOST_DASHBOARD_TOKEN": value},
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout
    assert "refusing an empty dashboard token (from --token or DLBOOST_DASHBOARD_TOKEN" in (
        result.stderr
    )


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_cli_port_out_of_range_is_a_usage_error(run_cli, storage, write_space, port):
    # Before: 70000 reached socket.bind, which raised OverflowError with a traceback.
    for command, option in (
        (["dashboard", "--storage", storage, "--port", port], "--port"),
        (["start", str(write_space()), "--storage", storage, "--dashboard", port], "--dashboard"),
    ):
        result = run_cli(*command, timeout=60)
        assert result.returncode == 2, result.stdout
        assert f"Invalid value for '{option}': {port} is not in the range 0<=x<=65535" in (
            result.stderr
        )


def test_cli_unresolvable_host_names_the_host(run_cli, study_url):
    result = run_cli("dashboard", "--storage", study_url, "--host", "no-such-host.invalid",
                     "--port", "0", "--token", TOKEN, timeout=60)  # fmt: skip
    assert result.returncode == 2
    expected = "cannot serve the dashboard on no-such-host.invalid: that host name does not"
    assert expected in result.stderr
    assert "--port" not in result.stderr


def test_cli_answers_only_its_own_names_over_http(study_url):
    process, url = serve(study_url, "--allow-host", "dash.example")
    try:
        base = url.split("/dashboard")[0]
        for method in ("GET", "DELETE"):
            request = urllib.request.Request(
                f"{base}/api/studies/1", method=method, headers={"Host": "evil.example"}
            )
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=10)
            assert refused.value.code == 403
            refused.value.close()
        for host in (None, "dash.example:8080"):  # None: urllib's own, 127.0.0.1:PORT
            headers = {} if host is None else {"Host": host}
            request = urllib.request.Request(f"{base}/api/studies", headers=headers)
            with urllib.request.urlopen(request, timeout=10) as response:
                assert json.load(response)["study_summaries"][0]["study_name"] == "tiny"
    finally:
        stop(process)
