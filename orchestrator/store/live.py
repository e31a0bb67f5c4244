"""The gateway's async reads for live updates (see :mod:`orchestrator.gateway.events`).

One blocking ``XREAD`` watches many jobs at once: for each, its history stream (a status
change wakes it) and, once it has a worker, the worker's update stream from the last
index delivered. The reads here are the only Redis calls of the live-update path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from orchestrator.store.connection import connect_async
from orchestrator.store.keys import Keys
from orchestrator.store.tokens import AsyncTokenCheck

#: One update: (its index, its JSON text as stored).
Update = tuple[int, str]


@dataclass
class Watch:
    """What one blocking read watches for a job."""

    job_id: str
    worker_id: str | None
    after: int  # the last update index delivered (-1: none)
    history_mark: str  # the id of the last history entry seen


@dataclass
class Woken:
    """What a blocking read brought for a job: new updates, and/or a status change."""

    updates: list[Update]
    history_mark: str | None  # set when the job's history moved


class LiveStore:
    """Async access for live-update fan-out; one per gateway process."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.r: Any = client
        self.keys = Keys(prefix)

    @classmethod
    def from_url(cls, url: str, prefix: str) -> LiveStore:
        return cls(connect_async(url, max_connections=64), prefix)

    async def close(self) -> None:
        await self.r.aclose()

    def token_check(self) -> AsyncTokenCheck:
        """Token checks on this store's pool (one pool per gateway process)."""
        return AsyncTokenCheck(self.r, self.keys.prefix)

    async def job(self, job_id: str) -> dict[str, str]:
        """The job's hash ({} when there is no such job)."""
        return dict(await self.r.hgetall(self.keys.job(job_id)))

    async def history_mark(self, job_id: str) -> str:
        last = await self.r.xrevrange(self.keys.job_history(job_id), count=1)
        return str(last[0][0]) if last else "0-0"

    async def last_index(self, worker_id: str) -> int:
        """The index of the worker's newest stored update (-1: none)."""
        last = await self.r.xrevrange(self.keys.updates(worker_id), count=1)
        return _index(last[0][0]) if last else -1

    async def updates(self, worker_id: str, after: int, count: int = 1000) -> list[Update]:
        """Stored updates with index > ``after``, oldest first, without blocking."""
        entries = await self.r.xrange(
            self.keys.updates(worker_id), f"0-{after + 2}", "+", count=count
        )
        return [(_index(eid), str(fields["data"])) for eid, fields in entries]

    async def turn_cost(self, job_id: str) -> dict[str, int] | None:
        raw = await self.r.hget(self.keys.ledger_turns, job_id)
        return {k: int(v) for k, v in json.loads(raw).items()} if raw else None

    async def wait(self, watches: list[Watch], block_ms: int, count: int = 500) -> dict[str, Woken]:
        """Block up to ``block_ms`` until one watched stream has an entry; per job id,
        what arrived (jobs with nothing new are left out)."""
        streams: dict[str, str] = {}
        owner: dict[str, tuple[str, bool]] = {}
        for w in watches:
            history = self.keys.job_history(w.job_id)
            streams[history] = w.history_mark
            owner[history] = (w.job_id, False)
            if w.worker_id is not None:
                # The stream's entry ids are 0-(n+1); XREAD returns ids above this one.
                updates = self.keys.updates(w.worker_id)
                streams[updates] = f"0-{w.after + 1}"
                owner[updates] = (w.job_id, True)
        if not streams:
            return {}
        reply = await self.r.xread(streams, count=count, block=max(block_ms, 1))
        woken: dict[str, Woken] = {}
        for stream, entries in reply or []:
            job_id, is_updates = owner[stream]
            got = woken.setdefault(job_id, Woken([], None))
            if is_updates:
                got.updates.extend((_index(eid), str(f["data"])) for eid, f in entries)
            elif entries:
                got.history_mark = str(entries[-1][0])
        return woken


def _index(entry_id: str) -> int:
    return int(str(entry_id).split("-")[1]) - 1
