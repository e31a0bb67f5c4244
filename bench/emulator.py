"""The emulator as the benchmarks run it: a subprocess that also records, per
``Idempotency-Key``, the instant each ``POST /api/workers`` reached the app.

    EMULATOR_API_KEY=k python -m bench.emulator --port 8765 --turn-seconds 0

``GET /_bench/arrivals`` answers ``{key: epoch seconds}`` and forgets them. The wrapper
is a plain ASGI middleware around :func:`orchestrator.emulator.create_app`, so the
emulator itself is unchanged; the time is taken before the app reads the body.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import uvicorn

from orchestrator.emulator import EmulatorConfig, create_app

ARRIVALS_PATH = "/_bench/arrivals"


class ArrivalRecorder:
    """ASGI middleware: ``arrivals[idempotency key] = time.time()`` on create calls."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.arrivals: dict[str, float] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            now = time.time()
            path = scope["path"]
            if path == ARRIVALS_PATH:
                await self._answer(send)
                return
            if scope["method"] == "POST" and path == "/api/workers":
                for name, value in scope["headers"]:
                    if name == b"idempotency-key":
                        self.arrivals[value.decode()] = now
                        break
        await self.app(scope, receive, send)

    async def _answer(self, send: Any) -> None:
        body = json.dumps(self.arrivals).encode()
        self.arrivals = {}
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.emulator")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--turn-seconds", type=float, default=0.0)
    parser.add_argument("--events-per-turn", type=int, default=10)
    args = parser.parse_args()
    key = os.environ["EMULATOR_API_KEY"]
    config = EmulatorConfig(
        turn_seconds=args.turn_seconds, events_per_turn=args.events_per_turn, seed=7
    )
    app = ArrivalRecorder(create_app(key, config))
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        backlog=4096,
        timeout_graceful_shutdown=2,
    )


if __name__ == "__main__":
    main()
