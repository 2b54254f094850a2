"""Serve optuna-dashboard on a storage, loopback by default, behind a token otherwise.

optuna-dashboard has no login, and its write routes (delete a study, tell a trial) answer
whoever reaches the port. So binding to anything but loopback needs a token, checked on every
request, HTTP API included: an `Authorization: Bearer TOKEN` header, or `?token=TOKEN` once in
the browser, which then keeps it in a cookie.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import threading
from collections.abc import Callable, Iterable
from http.cookies import SimpleCookie
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from dlboost_search.errors import DashboardError
from dlboost_search.storage import masked, open_storage

COOKIE = "dlboost_token"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_binding(host: str, token: str | None) -> None:
    if token is None and not is_loopback(host):
        raise DashboardError(
            f"refusing to serve the dashboard on {host} without a token: optuna-dashboard has "
            f"no login, and anyone who reaches the port could delete studies. Add --new-token "
            f"(a random token, printed once) or --token YOURS, or keep the default --host "
            f"127.0.0.1 and reach it through an SSH tunnel."
        )


def new_token() -> str:
    return secrets.token_urlsafe(24)


def _given_token(environ: dict[str, Any]) -> tuple[str | None, bool]:
    """The token a request carries, and whether it came in the query string."""
    header = environ.get("HTTP_AUTHORIZATION", "")
    if header.startswith("Bearer "):
        return header.removeprefix("Bearer ").strip(), False
    query = parse_qs(environ.get("QUERY_STRING", "")).get("token")
    if query:
        return query[0], True
    cookie = SimpleCookie(environ.get("HTTP_COOKIE", ""))
    if COOKIE in cookie:
        return cookie[COOKIE].value, False
    return None, False


def require_token(app: Callable, token: str) -> Callable:
    """WSGI middleware: every request must carry `token`."""

    def guarded(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        given, from_query = _given_token(environ)
        if given is None or not hmac.compare_digest(given.encode(), token.encode()):
            start_response(
                "401 Unauthorized",
                [("Content-Type", "text/plain; charset=utf-8"), ("WWW-Authenticate", "Bearer")],
            )
            return [b"401: this dashboard needs its token: open the URL printed at start-up "
                    b"(it ends in ?token=...), or send Authorization: Bearer TOKEN.\n"]  # fmt: skip
        if not from_query:
            return app(environ, start_response)

        def remember(status: str, headers: list, exc_info: Any = None) -> Any:
            cookie = f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
            return start_response(status, [*headers, ("Set-Cookie", cookie)], exc_info)

        return app(environ, remember)

    return guarded


def dashboard_app(url: str, token: str | None) -> Callable:
    import optuna_dashboard

    app = optuna_dashboard.wsgi(open_storage(url))
    return require_token(app, token) if token else app


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        pass


def serve(url: str, host: str, port: int, token: str | None) -> tuple[Any, str]:
    """Start serving in a background thread; return the server and the URL to open."""
    check_binding(host, token)
    app = dashboard_app(url, token)
    try:
        server = make_server(
            host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler
        )
    except OSError as exc:
        raise DashboardError(
            f"cannot serve the dashboard on {host}:{port}: {exc.strerror}. Pick another "
            f"--port, or stop what is using this one."
        ) from None
    threading.Thread(target=server.serve_forever, daemon=True, name="dashboard").start()
    shown = f"[{host}]" if ":" in host else host
    address = f"http://{shown}:{server.server_port}/dashboard"
    return server, address + (f"?token={token}" if token else "")


def describe(url: str, address: str) -> str:
    return f"optuna-dashboard on {masked(url)}: {address}"
