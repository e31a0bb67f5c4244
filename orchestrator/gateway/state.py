"""What a gateway process holds: settings, the facade, tokens and the live-update hub,
built once by the app factory and handed to routes as a dependency."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from fastapi import Request

from orchestrator.facade import Orchestrator
from orchestrator.settings import Settings
from orchestrator.store.listing import JobIndex
from orchestrator.store.tokens import AsyncTokenCheck, TokenStore

if TYPE_CHECKING:
    from orchestrator.gateway.fanout import Hub

T = TypeVar("T")


@dataclass
class Gateway:
    settings: Settings
    orch: Orchestrator
    tokens: TokenStore
    index: JobIndex
    hub: Hub
    token_check: AsyncTokenCheck

    async def blocking(self, call: Callable[[], T]) -> T:
        """``call`` (synchronous: the facade, Redis) on the event loop's thread pool.
        The hot routes use it rather than FastAPI's way of running a plain function
        (anyio's thread hop), which costs more per call."""
        return await asyncio.get_running_loop().run_in_executor(None, call)

    @property
    def signing_key(self) -> bytes | None:
        key = self.settings.gateway_signing_key
        return key.get_secret_value().encode() if key is not None else None


async def gateway(request: Request) -> Gateway:
    # async: FastAPI runs a plain function dependency in its thread pool, a hop per call.
    gw: Gateway = request.app.state.gateway
    return gw
