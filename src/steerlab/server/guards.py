"""ASGI middleware that stands in front of every route: catch-all errors, Host check, token, body size.

Each answers in the OpenAI error shape. None of them raises past itself, so uvicorn never falls back to a
plain-text 500 and never resets a keep-alive connection because of one bad request.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging

from .errors import ApiError

log = logging.getLogger(__name__)


class CatchAll:
    """The outermost layer: an unexpected exception becomes a JSON 500 (logged with its traceback) instead
    of propagating to the server, which would answer in plain text and close the connection."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            if not started:
                error = ApiError(
                    500, f"internal error ({type(exc).__name__}); the server logged the details", code="internal_error"
                )
                await error.response()(scope, receive, send)


class LoopbackHosts:
    """Without a token and bound to loopback, serve only requests whose Host names a loopback host.

    A page on another site can point its own domain at 127.0.0.1 (DNS rebinding) and then call the API
    from the user's browser; its requests carry that domain in Host, so they are refused here.
    """

    def __init__(self, app, enabled: bool):
        self.app = app
        self.enabled = enabled

    async def __call__(self, scope, receive, send) -> None:
        if self.enabled and scope["type"] == "http" and _bound_to_loopback(scope):
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if not is_loopback_host(_hostname(host)):
                error = ApiError(
                    403,
                    f"Host '{host[:100]}' is not served: without a token this server answers only "
                    "requests to localhost, 127.0.0.1 or ::1 (set a token to serve other names)",
                    code="host_not_allowed",
                )
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _bound_to_loopback(scope) -> bool:
    server = scope.get("server")
    return bool(server) and is_loopback_host(str(server[0]))


def _hostname(host: str) -> str:
    """The name in a Host header, without the port ('[::1]:8000' -> '::1')."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else ""
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_loopback_host(name: str) -> bool:
    if name.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class BearerAuth:
    """With a token set, every request but the playground's static files must carry
    `Authorization: Bearer <token>`; checked before the body is read, in constant time."""

    def __init__(self, app, token: str | None):
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or self.expected is None or _public(scope["path"]):
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        if not given:
            error = ApiError(
                401, "missing bearer token: send the header 'Authorization: Bearer <token>'", code="missing_token"
            )
        elif not hmac.compare_digest(given, self.expected):
            error = ApiError(401, "invalid bearer token", code="invalid_token")
        else:
            await self.app(scope, receive, send)
            return
        await error.response()(scope, receive, send)


def _public(path: str) -> bool:
    """The page and its assets: the same bytes as in the installed package, no model access."""
    return path == "/" or path.startswith("/static/")


class BodyLimit:
    """Refuse request bodies over `max_bytes` with 413, by Content-Length when given, else while reading.

    The body is read here in full (it is at most `max_bytes`) and handed on, so a route never sees more.
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._too_large(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away; let the route see the disconnect
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope, receive, send) -> None:
        error = ApiError(
            413,
            f"body: the request body is larger than this server's limit of {self.max_bytes} bytes",
            param="body",
            code="request_too_large",
        )
        await error.response()(scope, receive, send)
