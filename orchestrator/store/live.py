"""The gateway's async reads for live updates (see :mod:`orchestrator.gateway.events`).

One blocking ``XREAD`` watches the update streams of every followed job's worker from
the last index delivered; the jobs' states (status, worker, where the turn's updates
begin and end) are read in one pipeline every so often. The reads here are the only
Redis calls of the live-update path.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.asyncio as aioredis

from orchestrator.store.cells import Cells
from orchestrator.store.compact import raw_hget, turn_field, unpack_turn
from orchestrator.store.connection import connect_async, is_cluster
from orchestrator.store.intake import AsyncJobWriter
from orchestrator.store.keys import Keys
from orchestrator.store.ledger import LEDGER_FIELD, posted_record
from orchestrator.store.scripts.gateway import JOB_STATES
from orchestrator.store.tokens import AsyncTokenCheck
from orchestrator.store.wakes import WAKE_CAP

#: One update: (its index, its JSON text as stored).
Update = tuple[int, str]
#: What the fan-out reads of a job's hash (never its input, which may be large).
STATE_FIELDS = ("status", "worker_id", "update_from", "update_to", "error")
#: Encoded stream names kept per process (one per followed worker; cleared past this).
MAX_CACHED_KEYS = 100_000
#: With several cells, how often each cell's followed streams are read.
CELL_POLL_SECONDS = 0.01


class LiveStore:
    """Async access for live-update fan-out; one per gateway process."""

    def __init__(
        self, client: aioredis.Redis, prefix: str, cells: int = 1, tenant_tag: str = "tenant"
    ) -> None:
        self.r: Any = client
        self.cells = Cells(client, prefix, cells, tenant_tag)
        self.keys = self.cells.control
        # With several cells: worker id -> the cell of a job of its (learnt from states).
        self._worker_cells: dict[str, int] = {}
        self._names: dict[str, bytes] = {}  # worker id -> its stream's name, packed
        self._workers: dict[str, str] = {}  # stream name -> worker id
        self._conn: Any = None  # the connection :meth:`wait` reads on
        self._node: Any = None  # on a cluster: the node that connection belongs to
        self._states = client.register_script(JOB_STATES)

    @classmethod
    def from_url(
        cls, url: str, prefix: str, cells: int = 1, tenant_tag: str = "tenant"
    ) -> LiveStore:
        return cls(connect_async(url, max_connections=64), prefix, cells, tenant_tag)

    async def close(self) -> None:
        await self._drop_reader()
        await self.r.aclose()

    async def _reader(self) -> Any:
        """The connection :meth:`wait` reads on, taken once and kept. On a Redis Cluster
        it is one of the connections of the primary holding the store's hash tag; a
        command through the cluster client first brings its map of the slots up to
        date, so that after a failover the new primary is the one taken."""
        if self._conn is None:
            if is_cluster(self.r):
                await self.r.exists(self.keys.jobs)
                self._node = self.r.get_node_from_key(self.keys.jobs)
                self._conn = self._node.acquire_connection()
            else:
                self._conn = await self.r.connection_pool.get_connection()
        return self._conn

    async def _drop_reader(self) -> None:
        conn, self._conn = self._conn, None
        node, self._node = self._node, None
        if conn is not None:
            await conn.disconnect()
            if node is not None:
                node.release(conn)
            else:
                await self.r.connection_pool.release(conn)

    def token_check(self, cache_seconds: float = 0.0) -> AsyncTokenCheck:
        """Token checks on this store's pool (one pool per gateway process)."""
        return AsyncTokenCheck(self.r, self.keys.prefix, cache_seconds)

    def job_writer(self, wake: bool) -> AsyncJobWriter:
        """Submit's async job writes on this store's pool (``wake``: each new job wakes
        the outbox relay, which sends its first task)."""
        return AsyncJobWriter(self.r, self.keys.prefix, WAKE_CAP if wake else 0, self.cells)

    async def job(self, job_id: str) -> dict[str, str]:
        """The job's hash ({} when there is no such job)."""
        return dict(await self.r.hgetall(self.cells.of_job(job_id).job(job_id)))

    async def state(self, job_id: str) -> dict[str, str]:
        """The fan-out's fields of the job ({} when there is no such job)."""
        return (await self.states([job_id]))[0]

    async def states(self, job_ids: list[str]) -> list[dict[str, str]]:
        """:meth:`state` of many jobs in one command."""
        if not job_ids:
            return []
        cells = self.cells
        if cells.count == 1:
            keys = [self.keys.job(job_id) for job_id in job_ids]
            replies = await self._states(keys=keys, args=STATE_FIELDS)
        else:  # one call per cell (a script's keys share a slot)
            groups: dict[int, list[int]] = {}
            for i, job_id in enumerate(job_ids):
                groups.setdefault(cells.index_of_job(job_id), []).append(i)
            replies = [None] * len(job_ids)
            for cell, places in groups.items():
                k = cells.keys[cell]
                keys = [k.job(job_ids[i]) for i in places]
                for i, values in zip(places, await self._states(keys=keys, args=STATE_FIELDS),
                                     strict=True):  # fmt: skip
                    replies[i] = values
                    if values[1]:
                        self._learn(values[1], cell)
        return [
            {k: v for k, v in zip(STATE_FIELDS, values, strict=True) if v is not None}
            if values[0] is not None else {}
            for values in replies
        ]  # fmt: skip

    def _learn(self, worker_id: str, cell: int) -> None:
        if len(self._worker_cells) > MAX_CACHED_KEYS:
            self._worker_cells.clear()
        self._worker_cells[worker_id] = cell

    def _at(self, worker_id: str) -> Keys:
        """The keys of the worker's cell (its jobs' states were read first)."""
        return self.cells.keys[self._worker_cells.get(worker_id, 0)]

    async def last_index(self, worker_id: str) -> int:
        """The index of the worker's newest stored update (-1: none)."""
        last = await self.r.xrevrange(self._at(worker_id).updates(worker_id), count=1)
        return _index(last[0][0]) if last else -1

    async def updates(
        self, worker_id: str, after: int, count: int = 1000, turn: int | None = None
    ) -> list[Update]:
        """Stored updates with index > ``after``, oldest first, without blocking: from
        the stream, and from the folded turn that began at update ``turn`` (a job's
        ``update_from``; see :mod:`orchestrator.store.compact`) once it has completed."""
        k = self._at(worker_id)
        stream = k.updates(worker_id)
        if turn is None:
            entries = await self.r.xrange(stream, f"0-{after + 2}", "+", count=count)
            return [(_index(eid), str(fields["data"])) for eid, fields in entries]
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.xrange(stream, f"0-{after + 2}", "+", count=count)
            raw_hget(pipe, k.worker(worker_id), turn_field(turn))
            entries, blob = await pipe.execute()
        found = {i: d for i, d in unpack_turn(blob) if i > after} if blob else {}
        found.update((_index(eid), str(fields["data"])) for eid, fields in entries)
        return [(i, found[i]) for i in sorted(found)[:count]]

    async def turn_cost(self, job_id: str) -> dict[str, int] | None:
        """What the job's turn posted (see :meth:`LedgerStore.turn_costs`)."""
        k = self.cells.of_job(job_id)
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.hget(k.job(job_id), LEDGER_FIELD)
            pipe.get(k.ledger_turn(job_id))
            field, older = await pipe.execute()
        return posted_record(field or older)

    async def wait(
        self, watches: dict[str, int], block_ms: int, count: int = 500
    ) -> dict[str, list[Update]]:
        """Block up to ``block_ms`` until one watched worker's stream has an update after
        its index in ``watches`` (worker id -> last index delivered); per worker id,
        what arrived.

        The command is packed and its reply read here, not by redis-py: with a thousand
        streams named in every call, redis-py's per-argument packing and its reply
        callback (a dict per entry) cost more than the rest of the delivery. It goes on
        a connection kept for it (one caller at a time: the fan-out's reader), so no
        pool checkout per read."""
        if not watches:
            return {}
        if self.cells.count > 1:
            return await self._poll_cells(watches, block_ms, count)
        if len(self._names) > MAX_CACHED_KEYS:
            self._names.clear()
            self._workers.clear()
        names = self._names
        parts = [_XREAD % (6 + 2 * len(watches), _bulk(b"%d" % count),
                           _bulk(b"%d" % max(block_ms, 1)))]  # fmt: skip
        for worker_id in watches:
            name = names.get(worker_id)
            if name is None:
                key = self.keys.updates(worker_id)
                self._workers[key] = worker_id
                name = names[worker_id] = _bulk(key.encode())
            parts.append(name)
        # Entry ids are 0-(n+1); XREAD returns the ids above this one.
        parts.extend(_bulk(b"0-%d" % (after + 1)) for after in watches.values())
        try:
            conn = await self._reader()
            await conn.send_packed_command(b"".join(parts), check_health=False)
            reply = await conn.read_response()
        except BaseException:
            # Cancelled or failed mid-reply: the connection's state is unknown.
            await self._drop_reader()
            raise
        if not reply:
            return {}
        workers = self._workers
        # RESP2 answers a list of [stream, entries]; RESP3 a map stream -> entries.
        streams = reply.items() if isinstance(reply, dict) else reply
        return {
            workers[stream]: [(_index(eid), _data(fields)) for eid, fields in entries]
            for stream, entries in streams
        }

    async def _poll_cells(
        self, watches: dict[str, int], block_ms: int, count: int
    ) -> dict[str, list[Update]]:
        """:meth:`wait` over several cells: a blocking XREAD names streams of one slot
        only, so each cell's streams are read without blocking, every
        :data:`CELL_POLL_SECONDS` until something came or ``block_ms`` passed."""
        by_cell: dict[int, dict[str, str]] = {}
        for worker_id, after in watches.items():
            cell = self._worker_cells.get(worker_id, 0)
            by_cell.setdefault(cell, {})[self.cells.keys[cell].updates(worker_id)] = (
                f"0-{after + 1}"
            )
        deadline = time.monotonic() + block_ms / 1000
        while True:
            async with self.r.pipeline(transaction=False) as pipe:
                for streams in by_cell.values():
                    pipe.xread(streams, count=count)
                replies = await pipe.execute()
            got: dict[str, list[Update]] = {}
            for reply in replies:
                found: Any = reply.items() if isinstance(reply, dict) else (reply or [])
                for stream, entries in found:
                    worker_id = stream[stream.rindex(":updates:") + 9 :]
                    got[worker_id] = [(_index(eid), _data_of(f)) for eid, f in entries]
            if got or time.monotonic() >= deadline:
                return got
            await asyncio.sleep(CELL_POLL_SECONDS)


_XREAD = b"*%d\r\n$5\r\nXREAD\r\n$5\r\nCOUNT\r\n%s$5\r\nBLOCK\r\n%s$7\r\nSTREAMS\r\n"


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _data(fields: list[str]) -> str:
    """The ``data`` field of an entry's [name, value, ...] list."""
    for i in range(0, len(fields) - 1, 2):
        if fields[i] == "data":
            return str(fields[i + 1])
    raise ValueError("an update entry without data")


def _data_of(fields: Any) -> str:
    """The ``data`` of an entry as redis-py parses it (a dict, or a RESP3 list)."""
    return str(fields["data"]) if isinstance(fields, dict) else _data(list(fields))


def _index(entry_id: str) -> int:
    return int(entry_id[entry_id.index("-") + 1 :]) - 1
