"""Run one HTTP request through an ASGI app in this process, streaming the response back.

The replica serves vLLM's own FastAPI app (``vllm.entrypoints.launchers.app.build_app``); this is the
transport from a Ray Serve handle call into that app, nothing more: no route, parameter or response is
interpreted here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence

logger = logging.getLogger(__name__)


async def call_asgi(
    app,
    *,
    method: str,
    path: str,
    query_string: bytes,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    client: tuple[str, int] = ("127.0.0.1", 0),
) -> AsyncIterator[dict | bytes]:
    """Yields ``{"status": int, "headers": [(name, value), ...]}`` once, then the body in chunks.

    Closing the iterator early (the client went away) tells the app ``http.disconnect`` and cancels it.
    """
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method.upper(),
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query_string,
        "root_path": "",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "client": client,
        "server": ("127.0.0.1", 80),
    }
    messages: asyncio.Queue = asyncio.Queue()
    finished = asyncio.Event()
    body_sent = False

    async def receive() -> dict:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await finished.wait()  # streaming endpoints poll for a disconnect; there is none until we finish
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        await messages.put(message)

    async def run() -> None:
        try:
            await app(scope, receive, send)
        finally:
            await messages.put(None)

    task = asyncio.create_task(run())
    started = complete = False
    try:
        while (message := await messages.get()) is not None:
            if message["type"] == "http.response.start":
                started = True
                yield {"status": message["status"],
                       "headers": [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", [])]}
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body", False):
                    complete = True
                    break
        if not started:
            await task  # the app failed before answering: raise its error
            raise RuntimeError(f"{method} {path}: the app returned without a response")
    finally:
        finished.set()
        if not task.done():
            task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception:  # raised above when nothing was sent; logged when the response already went out
            if started:
                logger.exception("%s %s raised after its response %s", method, path,
                                 "was sent" if complete else "had started")
