"""The update stream of one worker as a raw ASGI response (``text/event-stream``).

A stream sends every stored update from index 0, then each new one as the active turn
produces it, and ends when no turn is active and everything is sent. It sleeps on the
worker's event between updates (no polling), and a small watcher wakes it when the
client goes away so an abandoned stream does not linger until the turn ends.

Written as a plain ASGI callable rather than Starlette's ``StreamingResponse`` for two
reasons: batching all pending events into one write keeps 1,000 open streams cheap,
and a cut stream can end without the terminating chunk, which is what a dropped
connection looks like to the client.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.types import Receive, Scope, Send

from orchestrator.emulator.state import WorkerRecord

_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class UpdateStream:
    """ASGI response streaming ``worker``'s updates.

    ``cut_after`` (from the fault injector) ends the stream abruptly after that many
    events; None lets it run to its natural end.
    """

    def __init__(self, worker: WorkerRecord, *, cut_after: int | None = None) -> None:
        self.worker = worker
        self.cut_after = cut_after
        self._gone = False
        self.status_code = 200

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
        watcher = asyncio.get_running_loop().create_task(self._watch(receive))
        try:
            if not await self._pump(send):
                # Cut: return without the final chunk; the server then drops the
                # connection, as a network failure would.
                return
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()

    async def _pump(self, send: Send) -> bool:
        """Send updates until the turn ends; False if the stream was cut."""
        worker = self.worker
        sent = 0
        while True:
            end = len(worker.updates)
            limit = self.cut_after
            if limit is not None and end >= limit:
                end = limit
            if sent < end:
                body = b"".join(worker.updates[sent:end])
                sent = end
                await send({"type": "http.response.body", "body": body, "more_body": True})
                # Sending may have yielded: look at the log again before sleeping.
                continue
            if limit is not None and sent >= limit:
                return False
            if self._gone or not worker.active:
                return True
            # No await between the checks above and this wait, so no wake-up is missed.
            await worker.changed.wait()

    async def _watch(self, receive: Receive) -> None:
        with contextlib.suppress(Exception):
            while (await receive())["type"] != "http.disconnect":
                pass
        self._gone = True
        self.worker.notify()
