"""The ledger in Redis: posting a turn's cost, reading rollups, and the repairs of
``orchestrator reconcile``.

:class:`LedgerStore` is the ledger part of :class:`~orchestrator.store.jobs.RedisStore`
(kept here so each module stays one concern); :class:`LedgerRepair` holds the reconcile
pass's reads and its two repair scripts. The maths (which fields, which rows) is
:mod:`orchestrator.ledger`'s.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from orchestrator.errors import InputError
from orchestrator.jobs.model import Job
from orchestrator.ledger import (
    COST_FIELDS,
    FIELDS,
    FigureError,
    check_figures,
    cumulative,
    empty_row,
    parse_row,
    rollups,
)
from orchestrator.store.batch import Batch, Chain, Queue
from orchestrator.store.keys import LEDGER_DIMENSIONS, Keys
from orchestrator.store.retention import RetentionPolicy
from orchestrator.store.scripts import jobs as scripts
from orchestrator.wire.models import Worker

if TYPE_CHECKING:
    from orchestrator.store.jobs import RedisStore


#: The job hash's field holding what its turn posted (see POST_TURN).
LEDGER_FIELD = "ledger"


def pack_posted(posted: dict[str, Any]) -> str:
    """A turn's record as POST_TURN writes it: the deltas in FIELDS order, comma separated."""
    return ",".join(str(int(posted[name])) for name in FIELDS)


def posted_record(raw: str | None) -> dict[str, int] | None:
    """What a turn posted, from its job's ``ledger`` field or from the string key of the
    older layout (JSON of named deltas; a deployment upgraded in place has them)."""
    if not raw:
        return None
    if raw.startswith("{"):
        return {k: int(v) for k, v in json.loads(raw).items()}
    values = raw.split(",")
    if len(values) != len(FIELDS):
        raise ValueError(f"a turn record of {len(values)} fields, not {len(FIELDS)}")
    return {name: int(v) for name, v in zip(FIELDS, values, strict=True)}


#: How POST_TURN's error replies begin (a figure out of bounds, a row that would overflow).
POST_REFUSALS = ("BADFIGURE", "ROWFULL")


def posted_deltas(reply: Any) -> dict[str, int] | None:
    """The deltas a POST_TURN reply says were posted (None: posted before).
    FigureError when the script refused the post (nothing was written)."""
    if isinstance(reply, Exception):
        raise FigureError("figures", f"refused by the ledger: {reply}")
    return {k: int(v) for k, v in json.loads(reply[0]).items()} if reply else None


def posted_falls(reply: Any) -> dict[str, int]:
    """The fields a POST_TURN reply says fell below what was counted, by how much (an
    anomaly: nothing was posted for them); empty when none fell or it was posted before."""
    if not reply or isinstance(reply, Exception):
        return {}
    falls = json.loads(reply[1])
    return {k: int(v) for k, v in falls.items()} if isinstance(falls, dict) else {}


class LedgerStore:
    """Posting turns to the ledger and reading it (mixed into ``RedisStore``)."""

    r: Any
    keys: Keys
    _post_turn: Any
    _chain: Any
    _set_field: Any
    retention: RetentionPolicy
    snapshot_into: Any

    def turn_keys(
        self, worker_id: str, members: Sequence[tuple[str, str]], record: str
    ) -> list[str]:
        """KEYS of POST_TURN and RECONCILE_WORKER: the worker, where the post is recorded
        (the turn's record, or the corrections hash), the total, then each rollup row
        and each rollup's index set."""
        keys = [self.keys.worker(worker_id), record, self.keys.ledger_total]
        keys += [self.keys.ledger(dim, value) for dim, value in members]
        keys += [self.keys.ledger_index(dim) for dim, _ in members]
        return keys

    def settle_into(
        self, batch: Batch, job: Job, worker: Worker, at_ms: int, extra: Sequence[tuple[str, str]]
    ) -> tuple[int | None, int]:
        """Queue a finished turn's writes: its snapshot, then its ledger delta; returns
        the reply indexes of the delta (:func:`posted_deltas`) and of the updates
        relayed so far (the turn's ``update_to``). FigureError (nothing queued) for a
        figure outside the ledger's bounds."""
        figures = cumulative(worker)  # checked before anything is queued
        self.snapshot_into(batch, worker)
        posted = self.post_turn_into(batch, job, worker, at_ms, extra, figures=figures)
        batch.pipe.hget(self.keys.worker(worker.id), "relayed")
        return posted, len(batch.pipe) - 1

    def settle_chained_into(
        self,
        batch: Batch,
        chain: Chain,
        job: Job,
        worker: Worker,
        at_ms: int,
        extra: Sequence[tuple[str, str]],
        *,
        snapshot: bool = True,
    ) -> int | None:
        """:meth:`settle_into` with the post on ``chain`` (the turn's completion to follow
        it there: none of it runs if the post is refused); the snapshot goes on
        ``batch`` (unless ``snapshot`` is False: the chain writes it). The index of the
        post's reply in the chain's, or None (costs unknown). FigureError (nothing
        queued) for a figure outside the ledger's bounds."""
        figures = cumulative(worker)
        if snapshot:
            self.snapshot_into(batch, worker)
        return self.post_turn_into(chain, job, worker, at_ms, extra, figures=figures)

    def chain_into(self, batch: Batch, chain: Chain) -> int:
        """Queue ``chain``'s calls on ``batch`` as one script (CHAIN); its reply's index."""
        return chain.into(batch, self._chain)

    def post_turn(
        self,
        job: Job,
        worker: Worker,
        at_ms: int,
        extra: Sequence[tuple[str, str]] = (),
    ) -> dict[str, int] | None:
        """Post the turn's cost delta (cumulative now minus counted) exactly once.

        Returns the deltas, or None if costs are still unknown or it was already posted.
        FigureError (nothing written) for a figure outside the ledger's bounds.
        """
        batch = Batch(self.r)
        index = self.post_turn_into(batch, job, worker, at_ms, extra)
        replies = batch.execute(raise_on_error=False)
        return None if index is None else posted_deltas(replies[index])

    def post_turn_into(
        self,
        batch: Queue,
        job: Job,
        worker: Worker,
        at_ms: int,
        extra: Sequence[tuple[str, str]] = (),
        *,
        figures: dict[str, int] | None = None,
    ) -> int | None:
        """Queue :meth:`post_turn` on a batch; the index of the reply for
        :func:`posted_deltas` and :func:`posted_falls`, or None when the costs are
        unknown (nothing to post). ``figures``: the worker's, if already computed."""
        if figures is None:
            figures = cumulative(worker)
        if figures is None:
            batch.script(self._set_field, [self.keys.job(job.id)], ["cost_known", "0"])
            return None
        check_figures(figures)
        members = rollups(job, worker.id, at_ms, extra)
        texts = {name: str(value) for name, value in figures.items()}
        args: list[Any] = [job.id, len(members), json.dumps(texts)]
        args += [value for _, value in members]
        args += [at_ms, self.retention.ttl_ms(job.tags), worker.id]
        keys = self.turn_keys(worker.id, members, self.keys.ledger_turn(job.id))
        # The job, then what expires if it has no record (see POST_TURN).
        keys += [self.keys.job(job.id), self.keys.updates(worker.id),
                 self.keys.ledger("worker", worker.id), self.keys.retention]  # fmt: skip
        return batch.script(self._post_turn, keys, args)

    def turn_cost(self, job_id: str) -> dict[str, int] | None:
        """What the job's turn posted (None: nothing yet)."""
        return self.turn_costs([job_id])[0]

    def turn_costs(self, job_ids: Sequence[str]) -> list[dict[str, int] | None]:
        """:meth:`turn_cost` of each job, in one round trip: the job's ``ledger`` field,
        else the older layout's string key."""
        if not job_ids:
            return []
        with self.r.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(self.keys.job(job_id), LEDGER_FIELD)
            # Raw: cluster pipelines refuse their mget() (these keys share one slot).
            pipe.execute_command("MGET", *[self.keys.ledger_turn(job_id) for job_id in job_ids])
            *fields, older = pipe.execute()
        return [posted_record(f or o) for f, o in zip(fields, older, strict=True)]

    def job_costs(
        self, *, since_ms: int | None = None, until_ms: int | None = None, limit: int = 50
    ) -> dict[str, Any]:
        """The newest ``limit`` jobs created in ``[since_ms, until_ms]`` with each one's
        posted turn (``posted`` false and zeros until it is posted), plus the all-time
        total: ``{"by": "job", "rows", "total"}``. O(limit), read from the jobs index."""
        if not 1 <= limit <= 10_000:
            raise InputError("limit", "must be between 1 and 10000")
        high = "+inf" if until_ms is None else until_ms
        low = "-inf" if since_ms is None else since_ms
        ids = list(self.r.zrevrangebyscore(self.keys.jobs, high, low, start=0, num=limit))
        rows = []
        for job_id, cost in zip(ids, self.turn_costs(ids), strict=True):
            row = empty_row()
            if cost is not None:
                row.update({k: v for k, v in cost.items() if k in row}, turns=1)
            rows.append({"key": job_id, "posted": cost is not None, **row})
        total = parse_row(self.r.hgetall(self.keys.ledger_total)) or empty_row()
        return {"by": "job", "rows": rows, "total": total}

    def costs(
        self, by: str = "day", *, since: date | None = None, until: date | None = None
    ) -> dict[str, Any]:
        """Rows of the ledger by a dimension, plus the total.

        ``since``/``until`` (inclusive, UTC days) filter ``by="day"``; the total is always
        the all-time total. Cost is O(rows), independent of how many turns were posted.
        """
        if by not in LEDGER_DIMENSIONS:
            raise InputError("by", f"must be one of {', '.join(LEDGER_DIMENSIONS)}")
        if by == "day" and (since or until):
            start = since or until or date.today()
            end = until or max(start, date.today())
            if end < start:
                raise InputError("until", "is before since")
            if (end - start).days > 3660:
                raise InputError("since", "range is longer than ten years")
            span = (end - start).days + 1
            values = [(start + timedelta(days=i)).isoformat() for i in range(span)]
        else:
            values = sorted(self.r.smembers(self.keys.ledger_index(by)))
        with self.r.pipeline(transaction=False) as pipe:
            for value in values:
                pipe.hgetall(self.keys.ledger(by, value))
            pipe.hgetall(self.keys.ledger_total)
            replies = pipe.execute()
        rows = [
            {"key": value, **parse_row(data)}
            for value, data in zip(values, replies[:-1], strict=True)
            if data
        ]
        return {"by": by, "rows": rows, "total": parse_row(replies[-1]) or empty_row()}

    def daily(
        self, by: str, since: date, until: date, *, tag_key: str = "tenant", top: int = 8
    ) -> dict[str, Any]:
        """Money per UTC day from ``since`` to ``until`` stacked by ``by`` (``budget``,
        ``schedule``, or ``tag`` for the values of ``tag_key``): the ``top`` values by
        all-time spend, each with one figure a day, and ``other`` (the rest, untagged
        spend included) so every day's stack sums to its total. Read by key: values
        from the dimension's index, rows ``<by>-day:<value>|<day>``; no scan of jobs."""
        if by not in ("budget", "schedule", "tag"):
            raise InputError("by", "must be one of budget, schedule, tag")
        if until < since:
            raise InputError("until", "is before since")
        if (until - since).days >= 366:
            raise InputError("since", "range is longer than 366 days")
        days = [(since + timedelta(days=i)).isoformat() for i in range((until - since).days + 1)]
        values = sorted(self.r.smembers(self.keys.ledger_index(by)))
        if by == "tag":
            values = [v for v in values if v.partition("=")[0] == tag_key]
        alltime = self._money([self.keys.ledger(by, v) for v in values])
        ranked = sorted(zip(values, alltime, strict=True), key=lambda p: (-p[1], p[0]))
        chosen = [v for v, _ in ranked[:top]]
        row_dim = "tag-day" if by == "tag" else f"{by}-day"
        keys = [self.keys.ledger(row_dim, f"{v}|{d}") for v in chosen for d in days]
        money = self._money(keys + [self.keys.ledger("day", d) for d in days])
        n = len(days)
        series = [money[i * n : (i + 1) * n] for i in range(len(chosen))]
        totals = money[len(keys) :]
        other = [t - sum(s[i] for s in series) for i, t in enumerate(totals)]
        names = [v.partition("=")[2] if by == "tag" else v for v in chosen]
        return {
            "by": by, "days": days, "total_micro": totals, "other_micro": other,
            "series": [{"key": k, "micro": m} for k, m in zip(names, series, strict=True)],
        }  # fmt: skip

    def _money(self, keys: Sequence[str]) -> list[int]:
        """The money (sum of the cost fields, micro) of each ledger row, in one trip."""
        with self.r.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(key, list(COST_FIELDS))
            replies = pipe.execute()
        return [sum(int(v or 0) for v in reply) for reply in replies]


class LedgerRepair:
    """What ``orchestrator reconcile`` reads and repairs (see
    :mod:`orchestrator.ops.reconcile`); every repair is one atomic script."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.r: Any = store.r
        self.keys = store.keys
        self._worker_script = self.r.register_script(scripts.RECONCILE_WORKER)
        self._total_script = self.r.register_script(scripts.RECONCILE_TOTAL)

    def jobs_since(self, since_ms: int) -> list[Job]:
        """Every job created at or after ``since_ms``, oldest first."""
        ids = self.r.zrangebyscore(self.keys.jobs, since_ms, "+inf")
        jobs: list[Job] = []
        for start in range(0, len(ids), 500):
            with self.r.pipeline(transaction=False) as pipe:
                for job_id in ids[start : start + 500]:
                    pipe.hgetall(self.keys.job(job_id))
                jobs += [Job.from_hash(data) for data in pipe.execute() if data]
        return jobs

    def worker_figures(self, worker_id: str) -> tuple[list[int], list[int]]:
        """The worker's ``counted:<field>`` and its ledger row, per ledger field (in the
        order of :data:`orchestrator.ledger.FIELDS`), read at one instant."""
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hmget(self.keys.worker(worker_id), [f"counted:{f}" for f in FIELDS])
            pipe.hmget(self.keys.ledger("worker", worker_id), list(FIELDS))
            counted, row = pipe.execute()
        return [int(v or 0) for v in counted], [int(v or 0) for v in row]

    def worker_falls(self, worker_id: str) -> dict[str, int]:
        """The worker's outstanding ``fell:<field>`` anomalies (see POST_TURN)."""
        values = self.r.hmget(self.keys.worker(worker_id), [f"fell:{f}" for f in FIELDS])
        return {name: int(v) for name, v in zip(FIELDS, values, strict=True) if v is not None}

    def clear_falls(self, worker_id: str) -> None:
        """Forget the worker's ``fell:<field>`` anomalies (reconcile has followed the
        upstream figure)."""
        self.r.hdel(self.keys.worker(worker_id), *[f"fell:{f}" for f in FIELDS])

    def post_correction(
        self,
        job: Job,
        worker_id: str,
        figures: dict[str, int],
        at_ms: int,
        extra: Sequence[tuple[str, str]] = (),
    ) -> tuple[str, dict[str, Any]] | None:
        """Bring the ledger to the upstream's cumulative ``figures`` of a worker whose
        latest job is ``job`` (RECONCILE_WORKER); returns the correction's id and record,
        or None when nothing differed (a finalize posted it meanwhile)."""
        members = rollups(job, worker_id, at_ms, extra)
        own_row = members.index(("worker", worker_id)) + 1
        keys = self.store.turn_keys(worker_id, members, self.keys.ledger_corrections)
        args: list[Any] = [f"reconcile:{worker_id}:", len(members), json.dumps(figures), own_row]
        args += [value for _, value in members]
        result = self._worker_script(keys=keys, args=args)
        if not result:
            return None
        return str(result[0]), json.loads(result[1])

    def check_total(self, fix: bool) -> dict[str, tuple[int, int]]:
        """Fields where the ledger total differs from the sum of the day rows, as
        ``(total, sum)``; with ``fix`` the total is moved to the sum (RECONCILE_TOTAL).
        Day rows, not worker rows: those expire with their worker's records."""
        days = sorted(self.r.smembers(self.keys.ledger_index("day")))
        keys = [self.keys.ledger_total] + [self.keys.ledger("day", d) for d in days]
        raw = self._total_script(keys=keys, args=[json.dumps(list(FIELDS)), "1" if fix else "0"])
        return {name: (int(pair[0]), int(pair[1])) for name, pair in json.loads(raw).items()}
