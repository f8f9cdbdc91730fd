"""ASGI middleware that refuses a request before any route or body parsing sees it: a missing API key, an
oversized body. Pure ASGI rather than ``@app.middleware``: Starlette's BaseHTTPMiddleware hides client
disconnects from the handlers, and the routes cancel generation on a disconnect."""

from __future__ import annotations

import hmac

from .errors import error_response


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413 before parsing them.

    A declared Content-Length over the limit is refused at once; a body sent without one (chunked) is read up to
    the limit and then refused, or handed on whole to the app."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = error_response(413, f"request body is larger than {self.limit} bytes", "invalid_request_error")
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await too_large(scope, receive, send)
        if length is not None:
            return await self.app(scope, receive, send)
        messages, seen = [], 0
        while True:
            message = await receive()
            messages.append(message)
            seen += len(message.get("body", b""))
            if seen > self.limit:
                return await too_large(scope, receive, send)
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        replay = iter(messages)

        async def replayed():
            return next(replay, None) or await receive()

        return await self.app(scope, replayed, send)


class ApiKeyAuth:
    """Every /v1/ route needs ``Authorization: Bearer <key>``; /health and /metrics stay open for probes."""

    def __init__(self, app, key: str):
        self.app, self.expected = app, f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            given = dict(scope.get("headers") or []).get(b"authorization") or b""
            # constant time: how long a wrong key takes to refuse says nothing about how much of it was right
            if not hmac.compare_digest(given, self.expected):
                response = error_response(401, "missing or wrong API key (send 'Authorization: Bearer <key>')",
                                          "authentication_error", None, "invalid_api_key")
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)
