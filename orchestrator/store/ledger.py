"""The ledger in Redis: posting a turn's cost and reading rollups.

:class:`LedgerStore` is the ledger part of :class:`~orchestrator.store.jobs.RedisStore`
(kept here so each module stays one concern); the repairs of ``orchestrator reconcile``
are :mod:`orchestrator.store.ledger_repair`'s. The maths (which fields, which rows) is
:mod:`orchestrator.ledger`'s. With several cells (docs/scaling.md) every cell keeps its
own rollups and total; a read adds them up (integers, so the sum is exact).
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
    sum_rows,
)
from orchestrator.store.batch import Batch, Chain, Queue
from orchestrator.store.cells import Cells, by_score, each_cell
from orchestrator.store.keys import LEDGER_DIMENSIONS, Keys
from orchestrator.store.retention import RetentionPolicy
from orchestrator.wire.models import Worker

if TYPE_CHECKING:
    pass


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
    FigureError when the script refused the post (nothing was written); any other
    error in its place (Redis away, a cluster failing over) is raised as it came, so
    the step is tried again rather than the job failed."""
    if isinstance(reply, Exception):
        if not str(reply).startswith(POST_REFUSALS):
            raise reply
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
    cells: Cells
    _post_turn: Any
    _chain: Any
    _set_field: Any
    retention: RetentionPolicy
    snapshot_into: Any

    def turn_keys(
        self, worker_id: str, members: Sequence[tuple[str, str]], record: str,
        cell: Keys | None = None,
    ) -> list[str]:  # fmt: skip
        """KEYS of POST_TURN and RECONCILE_WORKER in the job's ``cell`` (the only one
        when there is one): the worker, where the post is recorded (the turn's record,
        or the corrections hash), the total, then each rollup row and each rollup's
        index set."""
        k = cell or self.keys
        keys = [k.worker(worker_id), record, k.ledger_total]
        keys += [k.ledger(dim, value) for dim, value in members]
        keys += [k.ledger_index(dim) for dim, _ in members]
        return keys

    def settle_into(
        self, batch: Batch, job: Job, worker: Worker, at_ms: int, extra: Sequence[tuple[str, str]]
    ) -> tuple[int | None, int]:
        """Queue a finished turn's writes: its snapshot, then its ledger delta; returns
        the reply indexes of the delta (:func:`posted_deltas`) and of the updates
        relayed so far (the turn's ``update_to``). FigureError (nothing queued) for a
        figure outside the ledger's bounds."""
        figures = cumulative(worker)  # checked before anything is queued
        self.snapshot_into(batch, worker, job.id)
        posted = self.post_turn_into(batch, job, worker, at_ms, extra, figures=figures)
        batch.pipe.hget(self.cells.of_job(job.id).worker(worker.id), "relayed")
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
            self.snapshot_into(batch, worker, job.id)
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
        k = self.cells.of_job(job.id)
        if figures is None:
            batch.script(self._set_field, [k.job(job.id)], ["cost_known", "0"])
            return None
        check_figures(figures)
        members = rollups(job, worker.id, at_ms, extra)
        texts = {name: str(value) for name, value in figures.items()}
        args: list[Any] = [job.id, len(members), json.dumps(texts)]
        args += [value for _, value in members]
        args += [at_ms, self.retention.ttl_ms(job.tags), worker.id]
        keys = self.turn_keys(worker.id, members, k.ledger_turn(job.id), k)
        # The job, then what expires if it has no record (see POST_TURN).
        keys += [k.job(job.id), k.updates(worker.id), k.ledger("worker", worker.id),
                 k.retention]  # fmt: skip
        return batch.script(self._post_turn, keys, args)

    def turn_cost(self, job_id: str) -> dict[str, int] | None:
        """What the job's turn posted (None: nothing yet)."""
        return self.turn_costs([job_id])[0]

    def turn_costs(self, job_ids: Sequence[str]) -> list[dict[str, int] | None]:
        """:meth:`turn_cost` of each job, in one round trip: the job's ``ledger`` field,
        else the older layout's string key."""
        if not job_ids:
            return []
        cells = self.cells
        with self.r.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(cells.of_job(job_id).job(job_id), LEDGER_FIELD)
            if cells.count == 1:
                # Raw: cluster pipelines refuse their mget() (these keys share one slot).
                pipe.execute_command("MGET", *[self.keys.ledger_turn(j) for j in job_ids])
            else:
                for job_id in job_ids:
                    pipe.get(cells.of_job(job_id).ledger_turn(job_id))
            replies = pipe.execute()
        fields = replies[: len(job_ids)]
        older = replies[-1] if cells.count == 1 else replies[len(job_ids) :]
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
        with self.r.pipeline(transaction=False) as pipe:
            for k in self.cells:
                pipe.zrevrangebyscore(k.jobs, high, low, start=0, num=limit, withscores=True)
            for k in self.cells:
                pipe.hgetall(k.ledger_total)
            replies = pipe.execute()
        found = [pair for reply in replies[: self.cells.count] for pair in reply]
        ids = [job_id for job_id, _ in sorted(found, key=by_score, reverse=True)[:limit]]
        rows = []
        for job_id, cost in zip(ids, self.turn_costs(ids), strict=True):
            row = empty_row()
            if cost is not None:
                row.update({k: v for k, v in cost.items() if k in row}, turns=1)
            rows.append({"key": job_id, "posted": cost is not None, **row})
        total = sum_rows(parse_row(raw) for raw in replies[self.cells.count :])
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
            values = self._index_values(by)
        cells = list(self.cells)
        with self.r.pipeline(transaction=False) as pipe:
            for k in cells:
                for value in values:
                    pipe.hgetall(k.ledger(by, value))
            for k in cells:
                pipe.hgetall(k.ledger_total)
            replies = pipe.execute()
        n = len(values)
        rows = []
        for i, value in enumerate(values):
            found = [replies[c * n + i] for c in range(len(cells)) if replies[c * n + i]]
            if found:
                rows.append({"key": value, **sum_rows(parse_row(data) for data in found)})
        total = sum_rows(parse_row(data) for data in replies[len(cells) * n :])
        return {"by": by, "rows": rows, "total": total}

    def _index_values(self, dimension: str) -> list[str]:
        """The values a ledger dimension has rows for, in every cell."""
        found = each_cell(
            self.r, self.cells, lambda pipe, k: pipe.smembers(k.ledger_index(dimension))
        )
        return sorted(set().union(*found))

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
        values = self._index_values(by)
        if by == "tag":
            values = [v for v in values if v.partition("=")[0] == tag_key]
        alltime = self._money([(by, v) for v in values])
        ranked = sorted(zip(values, alltime, strict=True), key=lambda p: (-p[1], p[0]))
        chosen = [v for v, _ in ranked[:top]]
        row_dim = "tag-day" if by == "tag" else f"{by}-day"
        keys = [(row_dim, f"{v}|{d}") for v in chosen for d in days]
        money = self._money(keys + [("day", d) for d in days])
        n = len(days)
        series = [money[i * n : (i + 1) * n] for i in range(len(chosen))]
        totals = money[len(keys) :]
        other = [t - sum(s[i] for s in series) for i, t in enumerate(totals)]
        names = [v.partition("=")[2] if by == "tag" else v for v in chosen]
        return {
            "by": by, "days": days, "total_micro": totals, "other_micro": other,
            "series": [{"key": k, "micro": m} for k, m in zip(names, series, strict=True)],
        }  # fmt: skip

    def _money(self, rows: Sequence[tuple[str, str]]) -> list[int]:
        """The money (sum of the cost fields, micro) of each ledger row (dimension,
        value), summed over the cells, in one trip."""
        cells = list(self.cells)
        with self.r.pipeline(transaction=False) as pipe:
            for k in cells:
                for dim, value in rows:
                    pipe.hmget(k.ledger(dim, value), list(COST_FIELDS))
            replies = pipe.execute()
        n = len(rows)
        return [
            sum(int(v or 0) for c in range(len(cells)) for v in replies[c * n + i])
            for i in range(n)
        ]
