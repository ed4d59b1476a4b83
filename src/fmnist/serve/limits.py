"""Request-body limits as pure ASGI middleware: size and time, before any parsing.

FastAPI has no body limit of its own. This one refuses a declared
Content-Length over the cap at once (413), counts the bytes of bodies sent
without one (chunked) and stops at the cap (413), and gives up on a body that
does not arrive within the time limit (408). The responses are JSON errors.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status, self.message = status, message


class BodyLimit:
    def __init__(self, app: Callable, max_bytes: int, timeout_seconds: float) -> None:
        self.app, self.max_bytes, self.timeout_seconds = app, max_bytes, timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await _respond(send, 400, "the Content-Length header is not a number")
                return
            if length > self.max_bytes:
                await _respond(send, 413, f"the body is {length} bytes; the limit is {self.max_bytes}")
                return

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_seconds
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise _Refused(408, f"the body did not arrive within {self.timeout_seconds:g} s") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _Refused(413, f"the body is over the {self.max_bytes} byte limit")
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except _Refused as refusal:
            if not started:
                await _respond(send, refusal.status, refusal.message)


async def _respond(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})
