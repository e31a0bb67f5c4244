"""The gateway's async reads for live updates (see :mod:`orchestrator.gateway.events`).

One blocking ``XREAD`` watches the update streams of every followed job's worker from
the last index delivered; the jobs' states (status, worker, where the turn's updates
begin and end) are read in one pipeline every so often. The reads here are the only
Redis calls of the live-update path.
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

from orchestrator.store.compact import raw_hget, turn_field, unpack_turn
from orchestrator.store.connection import connect_async
from orchestrator.store.keys import Keys
from orchestrator.store.scripts.gateway import JOB_STATES
from orchestrator.store.tokens import AsyncTokenCheck

#: One update: (its index, its JSON text as stored).
Update = tuple[int, str]
#: What the fan-out reads of a job's hash (never its input, which may be large).
STATE_FIELDS = ("status", "worker_id", "update_from", "update_to", "error")
#: Encoded stream names kept per process (one per followed worker; cleared past this).
MAX_CACHED_KEYS = 100_000


class LiveStore:
    """Async access for live-update fan-out; one per gateway process."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.r: Any = client
        self.keys = Keys(prefix)
        self._names: dict[str, bytes] = {}
        self._states = client.register_script(JOB_STATES)

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

    async def state(self, job_id: str) -> dict[str, str]:
        """The fan-out's fields of the job ({} when there is no such job)."""
        return (await self.states([job_id]))[0]

    async def states(self, job_ids: list[str]) -> list[dict[str, str]]:
        """:meth:`state` of many jobs in one command."""
        if not job_ids:
            return []
        keys = [self.keys.job(job_id) for job_id in job_ids]
        replies = await self._states(keys=keys, args=STATE_FIELDS)
        return [
            {k: v for k, v in zip(STATE_FIELDS, values, strict=True) if v is not None}
            if values[0] is not None else {}
            for values in replies
        ]  # fmt: skip

    async def last_index(self, worker_id: str) -> int:
        """The index of the worker's newest stored update (-1: none)."""
        last = await self.r.xrevrange(self.keys.updates(worker_id), count=1)
        return _index(last[0][0]) if last else -1

    async def updates(
        self, worker_id: str, after: int, count: int = 1000, turn: int | None = None
    ) -> list[Update]:
        """Stored updates with index > ``after``, oldest first, without blocking: from
        the stream, and from the folded turn that began at update ``turn`` (a job's
        ``update_from``; see :mod:`orchestrator.store.compact`) once it has completed."""
        stream = self.keys.updates(worker_id)
        if turn is None:
            entries = await self.r.xrange(stream, f"0-{after + 2}", "+", count=count)
            return [(_index(eid), str(fields["data"])) for eid, fields in entries]
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.xrange(stream, f"0-{after + 2}", "+", count=count)
            raw_hget(pipe, self.keys.worker(worker_id), turn_field(turn))
            entries, blob = await pipe.execute()
        found = {i: d for i, d in unpack_turn(blob) if i > after} if blob else {}
        found.update((_index(eid), str(fields["data"])) for eid, fields in entries)
        return [(i, found[i]) for i in sorted(found)[:count]]

    async def turn_cost(self, job_id: str) -> dict[str, int] | None:
        raw = await self.r.get(self.keys.ledger_turn(job_id))
        return {k: int(v) for k, v in json.loads(raw).items()} if raw else None

    async def wait(
        self, watches: dict[str, int], block_ms: int, count: int = 500
    ) -> dict[str, list[Update]]:
        """Block up to ``block_ms`` until one watched worker's stream has an update after
        its index in ``watches`` (worker id -> last index delivered); per worker id,
        what arrived."""
        if len(self._names) > MAX_CACHED_KEYS:
            self._names.clear()
        streams: dict[bytes, bytes] = {}
        for worker_id, after in watches.items():
            name = self._names.get(worker_id)
            if name is None:
                # Encoded once: XREAD names every stream on each call.
                name = self._names[worker_id] = self.keys.updates(worker_id).encode()
            # Entry ids are 0-(n+1); XREAD returns the ids above this one.
            streams[name] = b"0-%d" % (after + 1)
        if not streams:
            return {}
        reply = await self.r.xread(streams, count=count, block=max(block_ms, 1))
        skip = len(self.keys.updates(""))
        return {
            str(stream)[skip:]: [(_index(eid), str(f["data"])) for eid, f in entries]
            for stream, entries in reply or []
        }


def _index(entry_id: str) -> int:
    return int(str(entry_id).split("-")[1]) - 1
