"""What a gateway process holds: settings, the facade, tokens and the live-update hub,
built once by the app factory and handed to routes as a dependency."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import Request

from orchestrator.facade import Orchestrator
from orchestrator.settings import Settings
from orchestrator.store.listing import JobIndex
from orchestrator.store.tokens import AsyncTokenCheck, TokenStore

if TYPE_CHECKING:
    from orchestrator.gateway.fanout import Hub


@dataclass
class Gateway:
    settings: Settings
    orch: Orchestrator
    tokens: TokenStore
    index: JobIndex
    hub: Hub
    token_check: AsyncTokenCheck

    @property
    def signing_key(self) -> bytes | None:
        key = self.settings.gateway_signing_key
        return key.get_secret_value().encode() if key is not None else None


async def gateway(request: Request) -> Gateway:
    # async: FastAPI runs a plain function dependency in its thread pool, a hop per call.
    gw: Gateway = request.app.state.gateway
    return gw
