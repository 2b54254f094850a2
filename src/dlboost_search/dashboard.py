"""Serve optuna-dashboard on a storage: loopback by default, behind a token otherwise.

optuna-dashboard has no login, and its write routes (delete a study, tell a trial) answer
whoever reaches the port. So:

- It binds to 127.0.0.1 unless --host says otherwise, and binding beyond loopback needs a token.
- A token has at least 16 characters (a shorter one can be guessed by trying); an empty one is
  refused, never read as "no token". It is checked on every request, HTTP API included: an
  `Authorization: Bearer TOKEN` header, or `?token=TOKEN` once in the browser, which then keeps
  it in a cookie.
- Every request must name the bound address in its Host header, token or not. Otherwise a web
  page could reach a loopback dashboard through a DNS name it controls and re-points at
  127.0.0.1 (DNS rebinding). Accepted: localhost, 127.x.y.z, [::1], the --host given, each
  --allow-host name, and beyond loopback this machine's names and any IP address (an attacker
  cannot rebind an IP address). Anything else gets a 403.
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import os
import secrets
import socket
import threading
from collections.abc import Callable, Iterable
from http.cookies import SimpleCookie
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs, quote, unquote
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from dlboost_search.artifacts import models_for_dashboard
from dlboost_search.errors import DashboardError, shown
from dlboost_search.storage import masked, open_storage

__all__ = [
    "check_binding",
    "chosen_token",
    "dashboard_app",
    "describe",
    "is_loopback",
    "serve",
    "url_to_open",
]

COOKIE = "dlboost_token"
TOKEN_ENV = "DLBOOST_DASHBOARD_TOKEN"
MIN_TOKEN_LENGTH = 16


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_all_interfaces(host: str) -> bool:
    if host == "":  # what socket.bind reads as 0.0.0.0
        return True
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def check_token(token: str) -> None:
    """Refuse a token that protects nothing. The token itself never goes into a message."""
    if not token.strip():
        raise DashboardError(
            f"refusing an empty dashboard token (from --token or {TOKEN_ENV}; often a shell "
            f"variable that is not set). Give a token of at least {MIN_TOKEN_LENGTH} "
            f"characters, or --new-token for a random one (printed once)."
        )
    if len(token) < MIN_TOKEN_LENGTH:
        raise DashboardError(
            f"refusing a dashboard token of {len(token)} characters: it needs at least "
            f"{MIN_TOKEN_LENGTH}, as a short one can be guessed by trying (the dashboard does "
            f"not slow down wrong guesses). Use --new-token for a random one (printed once), "
            f"or a longer --token."
        )


def check_binding(host: str, token: str | None) -> None:
    """None means no token (loopback only); any string given must be a usable token."""
    if token is not None:
        check_token(token)
    elif not is_loopback(host):
        raise DashboardError(
            f"refusing to serve the dashboard on {host} without a token: optuna-dashboard has "
            f"no login, and anyone who reaches the port could delete studies. Add --new-token "
            f"(a random token, printed once) or --token YOURS, or keep the default --host "
            f"127.0.0.1 and reach it through an SSH tunnel."
        )


def new_token() -> str:
    return secrets.token_urlsafe(24)


def chosen_token(given: str | None, new: bool) -> str | None:
    """The token to require: a new random one, the one given, or None for none."""
    if new:
        return new_token()
    if given is None and os.environ.get(TOKEN_ENV) == "":
        # typer reads an empty variable as unset; whoever set it still meant to have a token.
        return ""
    return given


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
        return unquote(cookie[COOKIE].value), False
    return None, False


def require_token(app: Callable, token: str) -> Callable:
    """WSGI middleware: every request must carry `token`."""
    check_token(token)  # an empty token here would let every request through

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
            # Quoted: a token may hold any character a user typed (;, spaces, non-ASCII).
            cookie = f"{COOKIE}={quote(token, safe='')}; Path=/; HttpOnly; SameSite=Strict"
            return start_response(status, [*headers, ("Set-Cookie", cookie)], exc_info)

        return app(environ, remember)

    return guarded


def _host_name(header: str) -> str:
    """The name in a Host header or --host: no port, no brackets, lower case, no final dot."""
    header = header.strip().lower()
    if header.startswith("["):
        name = header[1:].partition("]")[0]
    elif header.count(":") == 1:
        name = header.partition(":")[0]
    else:  # a name, or an IPv6 address without brackets (as --host takes it)
        name = header
    return name.removesuffix(".")


def host_rule(host: str, allow: Iterable[str] = ()) -> Callable[[str], bool]:
    """Which names in a Host header reach a dashboard bound to `host` (see the module doc)."""
    names = {"localhost", _host_name(host), *(_host_name(name) for name in allow)}
    beyond_loopback = not is_loopback(host)
    if beyond_loopback:
        names |= {_host_name(socket.gethostname()), _host_name(socket.getfqdn())}

    def allowed(name: str) -> bool:
        if name in names:
            return True
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            return False
        return beyond_loopback or address.is_loopback

    return allowed


def require_host(app: Callable, host: str, allow: Iterable[str] = ()) -> Callable:
    """WSGI middleware: answer only requests whose Host header names this dashboard."""
    allowed = host_rule(host, allow)

    def checked(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        header = environ.get("HTTP_HOST")
        # No Host header at all (HTTP/1.0) cannot come from a browser, so no rebinding.
        if header is None or allowed(_host_name(header)):
            return app(environ, start_response)
        start_response(
            "403 Forbidden",
            [("Content-Type", "text/plain; charset=utf-8"), ("X-Content-Type-Options", "nosniff")],
        )
        refusal = (
            f"403: this dashboard answers only requests addressed to {host} (or localhost), "
            f"not to {shown(_host_name(header))}: a web page could otherwise reach it through a "
            f"DNS name it controls. Open the URL printed at start-up; to trust another name (a DNS "
            f"alias, a reverse proxy), restart `dlboost-search dashboard` with --allow-host NAME.\n"
        )
        return [refusal.encode()]

    return checked


def dashboard_app(
    url: str, token: str | None, host: str = "127.0.0.1", allow: Iterable[str] = ()
) -> Callable:
    """optuna-dashboard behind the Host check, then the token check (None: no token), with
    the trial models of the storage's studies to download from each trial's page."""
    import optuna_dashboard

    storage = open_storage(url)
    app = optuna_dashboard.wsgi(storage, artifact_store=models_for_dashboard(storage, url))
    if token is not None:
        app = require_token(app, token)
    return require_host(app, host, allow)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _ThreadingServer6(_ThreadingServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        pass


def _bind(host: str, port: int, app: Callable) -> Any:
    server_class = _ThreadingServer6 if ":" in host else _ThreadingServer
    try:
        return make_server(host, port, app, server_class=server_class, handler_class=_QuietHandler)
    except socket.gaierror as exc:
        raise DashboardError(
            f"cannot serve the dashboard on {host}: that host name does not resolve "
            f"({exc.strerror}). Give --host an address or name of this machine, or leave it "
            f"out for 127.0.0.1 (this machine only)."
        ) from None
    except OSError as exc:
        if exc.errno == errno.EADDRNOTAVAIL:
            raise DashboardError(
                f"cannot serve the dashboard on {host}: that address is not one of this "
                f"machine's ({exc.strerror}). Give --host one of its addresses, 0.0.0.0 for "
                f"all of them, or leave it out for 127.0.0.1 (this machine only)."
            ) from None
        raise DashboardError(
            f"cannot serve the dashboard on {host}:{port}: {exc.strerror}. Pick another "
            f"--port, or stop what is using this one."
        ) from None


def url_to_open(host: str, port: int, token: str | None) -> str:
    """The URL to open. Bound to all interfaces, where 0.0.0.0 is no address to open: this
    machine's name (from elsewhere), then the loopback URL (from this machine)."""
    query = f"?token={quote(token, safe='')}" if token is not None else ""
    if not _is_all_interfaces(host):
        literal = f"[{host}]" if ":" in host else host
        return f"http://{literal}:{port}/dashboard{query}"
    loopback = "[::1]" if ":" in host else "127.0.0.1"
    return (
        f"http://{socket.gethostname()}:{port}/dashboard{query} "
        f"(on this machine: http://{loopback}:{port}/dashboard{query})"
    )


def serve(
    url: str, host: str, port: int, token: str | None, allow: Iterable[str] = ()
) -> tuple[Any, str]:
    """Start serving in a background thread; return the server and the URL to open."""
    check_binding(host, token)
    server = _bind(host, port, dashboard_app(url, token, host, allow))
    threading.Thread(target=server.serve_forever, daemon=True, name="dashboard").start()
    return server, url_to_open(host, server.server_port, token)


def describe(url: str, address: str) -> str:
    return f"optuna-dashboard on {masked(url)}: {address}"
