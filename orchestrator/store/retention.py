"""Retention: how long a finished job's records stay, which keys they are, and the
pass that tidies the indexes expiry cannot reach (see docs/retention.md).

The expiry itself is set in Redis by the script that makes a job terminal
(:data:`~orchestrator.store.scripts.records.TRANSITION`), or, with an archive
configured, by :data:`~orchestrator.store.scripts.records.RETAIN` once the archiver has
written the job. A job ended here (cancelled, expired, timed out) keeps its records
until its upstream turn is settled: :data:`~orchestrator.store.scripts.records.SETTLED`
starts their retention then. This module builds their KEYS and ARGV.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import redis

from orchestrator.jobs.model import LOCAL_ENDS, TERMINAL
from orchestrator.store.cells import Cells, each_cell
from orchestrator.store.connection import home_client
from orchestrator.store.keys import Keys
from orchestrator.store.scripts.records import HISTORY_MAX

#: What a terminal move reads of the job first: the keys of its records follow from them.
RECORD_FIELDS = ("worker_id", "idempotency_key", "tags")

DEFAULT_RETENTION_SECONDS = 7 * 86_400

#: Server settings that keep a job's records compact (docs/redis-layout.md): a hash
#: whose values are all this short or shorter stays a listpack (the job and worker
#: hashes hold an input text and a snapshot JSON longer than the default 64 bytes, and
#: were hash tables of twice the size). Set by the embedded server and deploy/redis.conf;
#: ``orchestrator health`` warns where a server differs.
COMPACT_SERVER_CONFIG = {"hash-max-ziplist-value": "4096"}
#: Expired records reclaimed promptly: at the default effort (1) Redis leaves up to ~10 %
#: of the keys with a TTL expired but not yet freed (15-20 % seen under load with a short
#: retention), so used_memory swings with that backlog; at 10 it stays near 4 %, for CPU
#: in proportion to the keys expiring. Set by the embedded server and deploy/redis.conf.
EXPIRY_SERVER_CONFIG = {"active-expire-effort": "10"}
#: What the embedded server runs with (deploy/redis.conf says the same).
SERVER_CONFIG = {**COMPACT_SERVER_CONFIG, **EXPIRY_SERVER_CONFIG}


@dataclass(frozen=True)
class RetentionPolicy:
    """``RETENTION`` and ``RETENTION_BY_TAG``, and whether an archive comes first."""

    default_seconds: int = DEFAULT_RETENTION_SECONDS
    by_tag: Mapping[tuple[str, str], int] = field(default_factory=dict)
    archive: bool = False

    def seconds(self, tags: Mapping[str, str]) -> int:
        """The job's retention: the longest override one of its tags matches, else the
        default (an override may be shorter than the default: it is the tag's choice)."""
        matched = [s for (k, v), s in self.by_tag.items() if tags.get(k) == v]
        return max(matched) if matched else self.default_seconds

    def ttl_ms(self, tags: Mapping[str, str]) -> int:
        return self.seconds(tags) * 1000


def record_keys(
    keys: Keys, job_id: str, worker_id: str | None, idempotency_key: str | None
) -> tuple[list[str], int]:
    """The keys that expire with a job, the worker's first (its hash, its updates
    stream, its ledger row), and how many of them are the worker's."""
    worker: list[str] = []
    if worker_id:
        worker = [keys.worker(worker_id), keys.updates(worker_id), keys.ledger("worker", worker_id)]
    # The turn's record is a field of the job hash; the string key is the older
    # layout's, still set to expire where an upgrade left one (PEXPIRE of none is a no-op).
    own = [keys.job_files(job_id), keys.ledger_turn(job_id)]
    if idempotency_key:
        own.append(keys.idempotency(idempotency_key))
    return worker + own, len(worker)


def fields_of(raw: list[Any]) -> tuple[str, str, dict[str, str]]:
    """(worker id, idempotency key, tags) from an HMGET of :data:`RECORD_FIELDS`."""
    worker_id, idem, tags = (str(v) if v is not None else "" for v in raw)
    parsed = json.loads(tags) if tags else {}
    return worker_id, idem, parsed if isinstance(parsed, dict) else {}


def transition_call(
    keys: Keys,
    policy: RetentionPolicy,
    job_id: str,
    status: str,
    now: int,
    detail: str,
    fields: tuple[str, str, dict[str, str]] | None,
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of TRANSITION. ``fields`` (see :func:`fields_of`) are needed only
    for a terminal status other than an end reached here (``LOCAL_ENDS``): they name
    the records that expire. A job ended here goes to the ended set instead; its
    retention starts when it is settled (:func:`settled_call`)."""
    fixed = [keys.job(job_id), keys.job_states, keys.retention, keys.archive_queue,
             keys.jobs_live, keys.jobs_ended]  # fmt: skip
    channel = keys.job_events(job_id)
    here = "1" if status in LOCAL_ENDS else "0"
    if status not in TERMINAL or status in LOCAL_ENDS:
        return fixed, [status, now, detail[:1000], HISTORY_MAX, 0, "", 0, channel, "0", here]
    if fields is None:  # without them the records' keys and retention are unknown
        raise ValueError(f"a move to {status} needs the job's record fields")
    worker_id, idem, tags = fields
    records, nw = record_keys(keys, job_id, worker_id, idem)
    args: list[Any] = [status, now, detail[:1000], HISTORY_MAX, policy.ttl_ms(tags), worker_id,
                       nw, channel, "1" if policy.archive else "0", here]  # fmt: skip
    return fixed + records, args


def settled_call(
    keys: Keys, policy: RetentionPolicy, job_id: str, now: int,
    fields: tuple[str, str, dict[str, str]],
) -> tuple[list[str], list[Any]]:  # fmt: skip
    """KEYS and ARGV of SETTLED (a job ended here is settled: its retention starts now)."""
    worker_id, idem, tags = fields
    records, nw = record_keys(keys, job_id, worker_id, idem)
    fixed = [keys.job(job_id), keys.retention, keys.archive_queue, keys.jobs_ended]
    archive = "1" if policy.archive else "0"
    return fixed + records, [job_id, now, policy.ttl_ms(tags), nw, worker_id, archive]


def retain_call(
    keys: Keys, policy: RetentionPolicy, job_id: str, ended_ms: int, now: int,
    fields: tuple[str, str, dict[str, str]],
) -> tuple[list[str], list[Any]]:  # fmt: skip
    """KEYS and ARGV of RETAIN (the archiver wrote the job: now it may expire)."""
    worker_id, idem, tags = fields
    records, nw = record_keys(keys, job_id, worker_id, idem)
    fixed = [keys.job(job_id), keys.retention, keys.archive_queue]
    return fixed + records, [job_id, ended_ms + policy.ttl_ms(tags), now, nw, worker_id]


class RetentionStore:
    """The prune pass and the retention reads (mixed into ``RedisStore``)."""

    r: Any
    keys: Keys
    cells: Cells
    _trim_index: Any

    def prune_expired(self, now_ms: int, limit: int = 1000, rounds: int = 20) -> int:
        """Drop the jobs whose records have expired from the indexes expiry cannot
        reach: the ``jobs`` set, and the ledger's worker index (when the worker's row
        is gone too), ``limit`` at a time while a full batch was due, at most ``rounds``
        batches (one batch a pass fell behind past ``limit`` jobs a pass). Returns how
        many jobs were dropped."""
        dropped = 0
        for k in self.cells:
            for _ in range(rounds):
                done = self._prune_batch(k, now_ms, limit)
                dropped += done
                if done < limit:
                    break
        return dropped

    def _prune_batch(self, k: Keys, now_ms: int, limit: int) -> int:
        due = self.r.zrangebyscore(k.retention, "-inf", now_ms, start=0, num=limit)
        if not due:
            return 0
        pairs = [member.partition("|") for member in due]
        workers = sorted({w for _, _, w in pairs if w})
        with self.r.pipeline(transaction=False) as pipe:
            for w in workers:
                pipe.exists(k.ledger("worker", w))
            alive = pipe.execute()
        gone = [w for w, exists in zip(workers, alive, strict=True) if not exists]
        with self.r.pipeline(transaction=True) as pipe:
            pipe.zrem(k.jobs, *[job for job, _, _ in pairs])
            if gone:
                pipe.srem(k.ledger_index("worker"), *gone)
            pipe.zrem(k.retention, *due)
            pipe.execute()
        return len(due)

    def prune_indexes(self, indexes: int = 16, per_index: int = 200, checks: int = 20_000) -> int:
        """Trim the per-tag and per-schedule listing indexes of jobs whose records have
        expired: of up to ``indexes`` of them (picked at random), the ``per_index``
        oldest ids are checked and the ones whose job hash is gone removed, again while
        a full batch had some gone (a tenant's index gains ids as fast as its jobs come:
        one batch a pass fell behind past ~13 jobs a second), up to ``checks`` ids a
        call. The oldest go first, and they are the ones retention takes first; a job
        that lives on is passed over. Returns how many ids were removed. With several
        cells, each cell's indexes are trimmed so."""
        return sum(self._prune_cell(k, indexes, per_index, checks) for k in self.cells)

    def _prune_cell(self, k: Keys, indexes: int, per_index: int, checks: int) -> int:
        names = list(self.r.srandmember(k.job_indexes, indexes) or [])
        removed = 0
        while names and checks > 0:
            with self.r.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.zrange(name, 0, per_index - 1)
                oldest: list[list[str]] = pipe.execute()
            with self.r.pipeline(transaction=False) as pipe:
                for ids in oldest:
                    for job_id in ids:
                        pipe.exists(k.job(job_id))
                alive = iter(pipe.execute())
            checks -= sum(len(ids) for ids in oldest)
            again = []
            for name, ids in zip(names, oldest, strict=True):
                gone = [job_id for job_id in ids if not next(alive)]
                if gone or not ids:
                    removed += int(self._trim_index(keys=[k.job_indexes, name], args=gone))
                if gone and len(ids) == per_index:
                    again.append(name)
            names = again
        return removed

    def config_differences(self) -> dict[str, str]:
        """Settings of :data:`COMPACT_SERVER_CONFIG` the server has otherwise, as
        {name: its value}; empty where CONFIG is refused (some managed services)."""
        try:
            server = home_client(self.r, self.keys.jobs)
            found = {name: server.config_get(name).get(name) for name in COMPACT_SERVER_CONFIG}
        except redis.ResponseError:
            return {}
        return {
            name: str(value)
            for name, value in found.items()
            if value is not None and str(value) != COMPACT_SERVER_CONFIG[name]
        }

    def memory_sample(self, per_kind: int = 50, scan_calls: int = 10) -> dict[str, Any]:
        """Redis memory by record kind, from a bounded sample (the metrics gauge).

        At most ``scan_calls`` SCANs of 1,000 keys of this prefix are read on each
        server holding the store (one, or each primary holding a cell); of the keys
        seen, up to ``per_kind`` of each kind (:meth:`Keys.record_patterns`) are sized
        with MEMORY USAGE. A kind's bytes are its mean sampled size times its estimated
        count (its share of the keys seen, times DBSIZE), summed over the servers. Also
        ``used_memory`` and ``maxmemory`` from INFO, summed. O(scan_calls x 1,000 +
        kinds x per_kind) a server, whatever the size of the keyspace.
        """
        if self.cells.count == 1:
            server = home_client(self.r, self.keys.jobs)
            plans = [(server, f"{self.keys.prefix}:*", self.keys.record_patterns())]
        else:
            # Every cell's keys and the control keys: "{p}:..." and "{p:c<i>.<n>}:..."
            # on a cluster, "p:..." and "p:c<i>:..." elsewhere; kinds by their suffix.
            prefix = self.keys.prefix
            match = f"[{{]{prefix[1:-1]}[:}}]*" if prefix.startswith("{") else f"{prefix}:*"
            patterns = Keys("*").record_patterns()
            plans = [(server, match, patterns) for server in self.servers()]
        kinds: dict[str, int] = {}
        used = maxmemory = 0
        for server, match, patterns in plans:
            found, info = _sample(server, match, patterns, per_kind, scan_calls)
            for kind, size in found.items():
                kinds[kind] = kinds.get(kind, 0) + size
            used += int(info.get("used_memory", 0))
            maxmemory += int(info.get("maxmemory", 0))
        return {"kinds": kinds, "used_memory": used, "maxmemory": maxmemory}

    def memory_info(self) -> tuple[int, int]:
        """Redis ``used_memory`` and ``maxmemory`` (0: no limit), in bytes: summed over
        the servers holding the cells."""
        infos = [server.info("memory") for server in self.servers()]
        return (sum(int(i.get("used_memory", 0)) for i in infos),
                sum(int(i.get("maxmemory", 0)) for i in infos))  # fmt: skip

    def servers(self) -> list[Any]:
        """One client per server holding the store's keys: on a cluster, the primaries
        serving the control keys and the cells now; else the one client."""
        found: dict[str, Any] = {}
        for k in (self.keys, *self.cells.others()):
            server = home_client(self.r, k.jobs)
            found.setdefault(repr(server.connection_pool), server)
        return list(found.values())

    def retained(self) -> int:
        """How many finished jobs' records are kept now (their expiry not yet passed)."""
        now = int(time.time() * 1000)
        return sum(
            each_cell(self.r, self.cells, lambda pipe, k: pipe.zcount(k.retention, now, "+inf"))
        )


def _sample(
    server: Any, match: str, patterns: dict[str, tuple[str, str]], per_kind: int, scan_calls: int
) -> tuple[dict[str, int], dict[str, Any]]:
    """One server's part of :meth:`RetentionStore.memory_sample`: bytes by kind, and
    its INFO memory."""
    seen: dict[str, list[str]] = {kind: [] for kind in patterns}
    counts = dict.fromkeys(patterns, 0)
    cursor, calls = 0, 0
    for calls in range(1, scan_calls + 1):  # noqa: B007 (calls is read after)
        cursor, names = server.scan(cursor, match=match, count=1000)
        for name in names:
            for kind, (pattern, other) in patterns.items():
                if fnmatchcase(name, pattern) and not (other and name.endswith(other)):
                    counts[kind] += 1
                    if len(seen[kind]) < per_kind:
                        seen[kind].append(name)
                    break
        if cursor == 0:
            break
    with server.pipeline(transaction=False) as pipe:
        for names in seen.values():
            for name in names:
                pipe.memory_usage(name)
        pipe.dbsize()
        pipe.info("memory")
        replies = pipe.execute()
    info, dbsize = replies[-1], int(replies[-2])
    sizes = iter(replies[:-2])
    # A SCAN of COUNT 1,000 visits about 1,000 keys: an unfinished scan saw that share
    # of the keyspace.
    scale = max(dbsize / (calls * 1000), 1.0) if cursor != 0 else 1.0
    kinds: dict[str, int] = {}
    for kind, names in seen.items():
        sampled = [int(next(sizes) or 0) for _ in names]
        mean = sum(sampled) / len(sampled) if sampled else 0.0
        kinds[kind] = round(mean * counts[kind] * scale)
    return kinds, info
