"""The ``/_emulator`` control routes: faults, turn settings, reset and the ledger.

They need the same bearer key as ``/api`` but are never subject to faults and are not
counted in the ledger's requests.

- ``GET /_emulator/faults`` → the current :class:`FaultConfig`;
  ``POST`` with a JSON object of the fields to change → the new one (a body with
  ``seed`` restarts the fault draws from that seed).
- ``GET /_emulator/config`` → turn settings (and current faults);
  ``POST`` with ``turn_seconds`` / ``events_per_turn`` / ``seed`` → the new ones.
  New values apply to turns started afterwards.
- ``POST /_emulator/reset`` → ``{"reset": true}``; forgets all workers, schedules,
  idempotency records and the ledger (settings and faults stay).
- ``GET /_emulator/ledger`` → the ledger (see :class:`~.state.Ledger`).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from orchestrator.emulator.responses import authorized, invalid, invalid_from, unauthorized
from orchestrator.emulator.state import EmulatorState

Handler = Callable[[Request], Awaitable[Response]]


def control_routes(state: EmulatorState) -> list[Route]:
    """The control routes over ``state``."""

    def guarded(handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            if not authorized(request, state.api_key):
                return unauthorized()
            return await handler(request)

        return endpoint

    async def get_faults(request: Request) -> Response:
        return JSONResponse(state.faults.config.model_dump())

    async def set_faults(request: Request) -> Response:
        changes = await _json_object(request)
        if isinstance(changes, Response):
            return changes
        try:
            new = state.faults.config.updated(changes)
        except ValidationError as exc:
            return invalid_from(exc)
        state.faults.configure(new, reseed="seed" in changes)
        return JSONResponse(new.model_dump())

    def config_json() -> dict[str, Any]:
        data = state.config.model_dump()
        data["faults"] = state.faults.config.model_dump()
        return data

    async def get_config(request: Request) -> Response:
        return JSONResponse(config_json())

    async def set_config(request: Request) -> Response:
        changes = await _json_object(request)
        if isinstance(changes, Response):
            return changes
        unknown = sorted(set(changes) - {"turn_seconds", "events_per_turn", "seed"})
        if unknown:
            return invalid(unknown[0], "not a turn setting")
        try:
            state.configure(state.config.updated(changes))
        except ValidationError as exc:
            return invalid_from(exc)
        return JSONResponse(config_json())

    async def reset(request: Request) -> Response:
        state.reset()
        return JSONResponse({"reset": True})

    async def ledger(request: Request) -> Response:
        return JSONResponse(state.ledger.to_json())

    return [
        Route("/_emulator/faults", guarded(get_faults), methods=["GET"]),
        Route("/_emulator/faults", guarded(set_faults), methods=["POST"]),
        Route("/_emulator/config", guarded(get_config), methods=["GET"]),
        Route("/_emulator/config", guarded(set_config), methods=["POST"]),
        Route("/_emulator/reset", guarded(reset), methods=["POST"]),
        Route("/_emulator/ledger", guarded(ledger), methods=["GET"]),
    ]


async def _json_object(request: Request) -> dict[str, Any] | Response:
    try:
        data = json.loads(await request.body() or b"{}")
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return invalid("body", "must be a JSON object")
    return data
