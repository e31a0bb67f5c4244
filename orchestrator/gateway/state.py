"""What a gateway process holds: settings, the facade, tokens and the live-update hub,
built once by the app factory and handed to routes as a dependency."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from fastapi import Request

from orchestrator.facade import Orchestrator
from orchestrator.jobs.model import Job
from orchestrator.settings import Settings
from orchestrator.store.intake import AsyncJobWriter
from orchestrator.store.listing import JobIndex
from orchestrator.store.tokens import AsyncTokenCheck, TokenStore

if TYPE_CHECKING:
    from orchestrator.gateway.fanout import Hub

log = logging.getLogger(__name__)

#: First-task sends a process runs after it has answered, at most; past this, a submit
#: waits for its own send (a burst never queues unbounded work behind the answers).
MAX_SENDING = 64


@dataclass
class Gateway:
    settings: Settings
    orch: Orchestrator
    tokens: TokenStore
    index: JobIndex
    hub: Hub
    token_check: AsyncTokenCheck
    writer: AsyncJobWriter
    _sending: set[asyncio.Future[None]] = field(default_factory=set)

    async def send(self, job: Job) -> None:
        """With ``GATEWAY_SEND=direct``: send a just-stored job's first task on the
        executor, without waiting for it (unless ``MAX_SENDING`` sends are under way).
        The job is in the outbox from its write: a send that fails, or never runs
        because the process ends, is made by the re-send sweep (``RESEND_AFTER_SECONDS``),
        so the answer need not wait."""
        sending = asyncio.get_running_loop().run_in_executor(None, self.orch.send, job)
        sending.add_done_callback(partial(_sent, job.id))
        if len(self._sending) >= MAX_SENDING:
            await asyncio.wait((sending,))
            return
        self._sending.add(sending)
        sending.add_done_callback(self._sending.discard)

    async def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the sends under way (at shutdown)."""
        if self._sending:
            await asyncio.wait(set(self._sending), timeout=timeout)

    @property
    def signing_key(self) -> bytes | None:
        key = self.settings.gateway_signing_key
        return key.get_secret_value().encode() if key is not None else None


async def gateway(request: Request) -> Gateway:
    # async: FastAPI runs a plain function dependency in its thread pool, a hop per call.
    gw: Gateway = request.app.state.gateway
    return gw


def _sent(job_id: str, sending: asyncio.Future[None]) -> None:
    if not sending.cancelled() and sending.exception() is not None:
        # The type only: a broker error's text may carry its URL.
        kind = type(sending.exception()).__name__
        log.warning("job %s: first task not sent (%s); the re-send sweep sends it", job_id, kind)
