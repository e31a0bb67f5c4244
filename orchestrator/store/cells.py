"""Cells: the store split over Redis Cluster slots (``STORE_CELLS``, docs/scaling.md).

A cell is the whole key layout of :mod:`orchestrator.store.keys` under a hash tag of its
own, so every script and transaction still touches one slot. With one cell (the
default) the layout is the one-slot layout, byte for byte. With more:

- a job id names its cell in its first two hex digits, so every job-scoped call routes
  itself, and a worker's keys live in the cell of the job that made it;
- a tenant (the ``FAIR_SHARE_TAG`` value) lives in one cell, placed at first sight in
  the cell with the fewest tenants, so its jobs, caps, limits and listing share a slot;
- the control keys (tokens, webhooks, fleet rate, placement, heartbeats) keep the
  one-cell tag.

Cell i's tag carries a suffix that puts its slot in the i-th of N equal slot ranges, so
a cluster made with equal contiguous ranges (``redis-cli --cluster create``'s) holds an
equal number of cells per primary.
"""

from __future__ import annotations

import secrets
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from orchestrator import rules
from orchestrator.errors import InputError
from orchestrator.jobs.model import Submission
from orchestrator.store.connection import is_cluster
from orchestrator.store.keys import Keys

MAX_CELLS = 256  # two hex digits of a job id
_HEX = frozenset("0123456789abcdef")
_CACHED = 100_000  # names whose cell a process remembers

# KEYS: [1] placement hash (tenant -> cell), [2] tenants per cell hash
# ARGV: [1] tenant, [2..] the cells in the order ties are broken
_PLACE = """
local cell = redis.call('HGET', KEYS[1], ARGV[1])
if cell then return tonumber(cell) end
local counts = {}
local flat = redis.call('HGETALL', KEYS[2])
for i = 1, #flat, 2 do counts[flat[i]] = tonumber(flat[i + 1]) end
local best, least = ARGV[2], nil
for i = 2, #ARGV do
  local n = counts[ARGV[i]] or 0
  if least == nil or n < least then best, least = ARGV[i], n end
end
redis.call('HSET', KEYS[1], ARGV[1], best)
redis.call('HINCRBY', KEYS[2], best, 1)
return tonumber(best)
"""


def cell_prefix(prefix: str, index: int, count: int, *, cluster: bool) -> str:
    """Cell ``index``'s key prefix: a tag whose slot lies in the index-th of ``count``
    equal slot ranges on a cluster (the first suffix that does), plain elsewhere."""
    if not cluster:
        return f"{prefix}:c{index}"
    low = index * REDIS_CLUSTER_HASH_SLOTS // count
    high = (index + 1) * REDIS_CLUSTER_HASH_SLOTS // count
    suffix = 0
    while True:
        name = f"{prefix}:c{index}.{suffix}"
        if low <= key_slot(name.encode()) < high:
            return "{" + name + "}"
        suffix += 1


def tie_order(count: int) -> list[int]:
    """The cells in an order that alternates over the slot ranges (bit-reversed
    fractions), so tenants placed on ties spread over the primaries first."""

    def spread(i: int) -> float:
        fraction, weight = 0.0, 0.5
        while i:
            fraction += weight * (i & 1)
            i, weight = i >> 1, weight / 2
        return fraction

    return sorted(range(count), key=spread)


class Cells:
    """Key names per cell, and which cell a job, tenant or key belongs to."""

    def __init__(
        self, client: Any, prefix: str, count: int = 1, tenant_tag: str = "tenant"
    ) -> None:
        if not 1 <= count <= MAX_CELLS:
            raise ValueError(f"cells: {count} is not within 1..{MAX_CELLS}")
        self.count = count
        #: The tag whose value is a tenant (``FAIR_SHARE_TAG``).
        self.tenant_tag = tenant_tag
        self.control = Keys.for_client(client, prefix)
        cluster = is_cluster(client)
        if count == 1:
            self.keys: tuple[Keys, ...] = (self.control,)
        else:
            self.keys = tuple(
                Keys(cell_prefix(prefix, i, count, cluster=cluster)) for i in range(count)
            )
        self._place = client.register_script(_PLACE)
        self._order = [str(i) for i in tie_order(count)]
        self._tenants: dict[str, int] = {}
        self._workers: dict[str, int] = {}

    def __iter__(self) -> Iterator[Keys]:
        return iter(self.keys)

    def others(self) -> tuple[Keys, ...]:
        """The cells whose keys are not the control keys (none with one cell)."""
        return self.keys if self.count > 1 else ()

    def index_of_job(self, job_id: str) -> int:
        """The cell a job id names (0 with one cell; an id of another layout routes
        to a cell where it is simply not found)."""
        if self.count == 1 or not isinstance(job_id, str):
            return 0
        try:
            return int(job_id[4:6], 16) % self.count
        except ValueError:
            return 0

    def of_job(self, job_id: str) -> Keys:
        return self.keys[self.index_of_job(job_id)]

    def new_job_id(self, cell: int) -> str:
        """A job id in ``cell``: ``job_`` and 32 hex digits, the first two the cell."""
        hexa = uuid.uuid4().hex
        return "job_" + (hexa if self.count == 1 else f"{cell:02x}{hexa[2:]}")

    def new_schedule_id(self, cell: int) -> str:
        """A schedule id in ``cell``, named as a job id is."""
        return "sch_" + self.new_job_id(cell)[4:]

    def index_of_schedule(self, schedule_id: str) -> int:
        """The cell a schedule id names (one made by :meth:`new_schedule_id`; any
        other id by its hash)."""
        if self.count == 1:
            return 0
        if len(schedule_id) == 36 and all(c in _HEX for c in schedule_id[4:]):
            return self.index_of_job(schedule_id)
        return self.of_key(schedule_id)

    def of_schedule(self, schedule_id: str) -> Keys:
        return self.keys[self.index_of_schedule(schedule_id)]

    def of_key(self, key: str) -> int:
        """A stable cell for a name with no tenant (an idempotency key, a schedule id)."""
        return zlib.crc32(key.encode()) % self.count if self.count > 1 else 0

    def any(self) -> int:
        """A cell for a job nothing ties to one."""
        return secrets.randbelow(self.count)

    def of_worker(self, worker_id: str, probe: Callable[[str], list[bool]]) -> int | None:
        """The cell holding the worker's records, remembered once ``probe`` (whether
        each cell holds them) found it; None where no cell does."""
        cell = self.known_worker(worker_id)
        return self.found_worker(worker_id, probe(worker_id)) if cell is None else cell

    def known_worker(self, worker_id: str) -> int | None:
        return 0 if self.count == 1 else self._workers.get(worker_id)

    def found_worker(self, worker_id: str, found: list[bool]) -> int | None:
        """The first cell ``found`` true (remembered), or None."""
        if True not in found:
            return None
        cell = found.index(True)
        _remember(self._workers, worker_id, cell)
        return cell

    def of_tenant(self, tenant: str) -> int:
        """The tenant's cell, placed on first sight (one control-slot script) and kept
        (a client of redis.asyncio awaits :meth:`place_tenant` instead)."""
        cell = self.known_tenant(tenant)
        if cell is None:
            cell = self.placed(tenant, self._place(*self.tenant_call(tenant)))
        return cell

    async def place_tenant(self, tenant: str) -> int:
        """:meth:`of_tenant` on an asyncio client."""
        cell = self.known_tenant(tenant)
        if cell is None:
            cell = self.placed(tenant, await self._place(*self.tenant_call(tenant)))
        return cell

    def known_tenant(self, tenant: str) -> int | None:
        return 0 if self.count == 1 else self._tenants.get(tenant)

    def tenant_call(self, tenant: str) -> tuple[list[str], list[str]]:
        return [self.control.tenant_cells, self.control.cell_tenants], [tenant, *self._order]

    def placed(self, tenant: str, reply: Any) -> int:
        cell = int(reply)
        _remember(self._tenants, tenant, cell)
        return cell

    def wanted(self, sub: Submission) -> tuple[str | None, str | None]:
        """What placing ``sub`` needs looked up: the worker id whose cell a continue
        goes to, and the tenant to place (None for either that is not needed)."""
        if self.count == 1:
            return None, None
        continues = sub.kind == "continue" and sub.worker_id and not sub.schedule_id
        return (sub.worker_id if continues else None), sub.tags.get(self.tenant_tag)

    def place(self, sub: Submission, worker: int | None, tenant: int | None) -> int:
        """The cell a new job goes to, given its worker's cell (a continue of a worker
        whose records are kept) and its tenant's: its schedule's (which reads its runs'
        jobs), else its worker's (the turn's writes span both), else its tenant's, else
        by its worker id or idempotency key (so a repeat finds it), else any."""
        if self.count == 1:
            return 0
        if sub.schedule_id:
            return self.index_of_schedule(sub.schedule_id)
        if worker is not None:
            return worker
        if tenant is not None:
            return tenant
        if sub.worker_id:
            return self.of_key(sub.worker_id)
        if sub.idempotency_key:
            return self.of_key(sub.idempotency_key)
        return self.any()


def _remember(cache: dict[str, int], name: str, cell: int) -> None:
    # Placements never change, so a full cache is simply started again.
    if len(cache) >= _CACHED:
        cache.clear()
    cache[name] = cell


def one_tenant(cells: Cells, key: str, field: str) -> None:
    """InputError naming ``field`` for a limit ``key`` (``tag:k=v``, ``budget:<tier>``)
    that spans tenants, where there are several cells: a limit's slots are taken by
    the scripts of one cell, which hold one tenant's jobs (docs/scaling.md)."""
    if cells.count > 1 and not key.startswith(f"tag:{cells.tenant_tag}="):
        raise InputError(
            field,
            f"{rules.shown(key)} spans tenants; with STORE_CELLS={cells.count} limits "
            f"apply to one tenant each (tag:{cells.tenant_tag}=<value>)",
        )


def by_score(pair: tuple[str, float]) -> tuple[float, str]:
    """Sort key of (member, score) pairs merged from the cells' sorted sets: the order
    of one sorted set (ties by member), so a merge reads as one set's range would."""
    return (pair[1], pair[0])


def each_cell(client: Any, keys: Iterable[Keys], call: Callable[[Any, Keys], object]) -> list[Any]:
    """The replies of ``call(pipe, k)`` queued for each cell's keys ``k``, in order, in
    one round trip (a cluster pipeline sends each node its part)."""
    with client.pipeline(transaction=False) as pipe:
        for k in keys:
            call(pipe, k)
        return list(pipe.execute())
