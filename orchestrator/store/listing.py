"""Pages of jobs from the creation-time indexes (all jobs, per tag, per schedule), newest
first, with a cursor: never a SCAN.

The indexes are sorted sets written by ``CREATE_JOB`` with the job. A job whose hash is
gone (expired after its retention) is skipped and taken out of the index it was found in,
lazily, while paging. Filters that have no index of their own (status, a second tag) are
applied while paging, and each page examines at most ``scan`` index entries: a page may
then come back short, or empty, with a cursor to go on from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator.jobs.model import Job

if TYPE_CHECKING:
    from orchestrator.store.jobs import RedisStore

#: Index entries read per round trip while filling a page.
READ_BATCH = 200


@dataclass(frozen=True)
class Position:
    """A place in an index: (creation ms, job id); the next page starts after it."""

    created_ms: int
    job_id: str


@dataclass(frozen=True)
class _Window:
    """What a page reads: at most ``limit`` jobs, ``scan`` entries examined, after
    ``after``, created in [since, until], accepted by ``keep``."""

    limit: int
    scan: int
    after: Position | None
    since_ms: int | None
    until_ms: int | None
    keep: Callable[[Job], bool]


@dataclass
class Page:
    jobs: list[Job]
    #: Where the next page starts, or None when the index has no more entries.
    after: Position | None


class JobIndex:
    """Reads pages of one of the listing indexes."""

    def __init__(self, store: RedisStore) -> None:
        self.r: Any = store.r
        self.cells = store.cells

    def index_key(self, *, tag: tuple[str, str] | None, schedule_id: str | None) -> tuple[str, ...]:
        """The index to page: the schedule's, else the tag's, else every job's (one
        sorted set per cell)."""
        if schedule_id is not None:
            return tuple(k.jobs_by_schedule(schedule_id) for k in self.cells)
        if tag is not None:
            return tuple(k.jobs_by_tag(*tag) for k in self.cells)
        return tuple(k.jobs for k in self.cells)

    def page(
        self,
        index: str | tuple[str, ...],
        *,
        limit: int,
        scan: int,
        after: Position | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        keep: Callable[[Job], bool] = lambda _job: True,
    ) -> Page:
        """Up to ``limit`` jobs of ``index`` (one sorted set, or one per cell) created in
        [since, until], newest first, after ``after``, that ``keep`` accepts; at most
        ``scan`` entries examined in each cell. The cells' pages are merged by
        (creation, id), the cursor's order, so one cursor serves every cell: the merge
        is complete down to the newest place a cell stopped at without reaching its
        end."""
        if isinstance(index, str):
            index = (index,)
        window = _Window(limit, scan, after, since_ms, until_ms, keep)
        pages = [self._page(name, window) for name in index]
        if len(pages) == 1:
            return pages[0]
        stops = [p.after for p in pages if p.after is not None]
        bound = max(stops, key=_order, default=None)
        jobs = sorted(
            (job for p in pages for job in p.jobs),
            key=lambda job: _order(Position(job.created_at, job.id)),
            reverse=True,
        )
        if bound is not None:
            jobs = [j for j in jobs if _order(Position(j.created_at, j.id)) >= _order(bound)]
        if len(jobs) > limit:
            jobs = jobs[:limit]
            bound = Position(jobs[-1].created_at, jobs[-1].id)
        return Page(jobs, bound)

    def _page(self, index: str, window: _Window) -> Page:
        """:meth:`page` of one sorted set."""
        limit, scan, after, keep = window.limit, window.scan, window.after, window.keep
        until_ms, since_ms = window.until_ms, window.since_ms
        top: float | str = (
            after.created_ms if after else (until_ms if until_ms is not None else "+inf")
        )
        bottom: float | str = since_ms if since_ms is not None else "-inf"
        offset = 0
        examined = 0
        found: list[Job] = []
        last: Position | None = None
        while examined < scan and len(found) < limit:
            rows = self.r.zrevrangebyscore(
                index, top, bottom, start=offset, num=min(READ_BATCH, scan - examined),
                withscores=True,
            )  # fmt: skip
            if not rows:
                return Page(found, None)
            fresh = [
                (member, int(score))
                for member, score in rows
                if after is None or _older(int(score), member, after)
            ]
            records = self._read([member for member, _ in fresh])
            gone = []
            for (member, score), data in zip(fresh, records, strict=True):
                examined += 1
                last = Position(score, member)
                if not data:
                    gone.append(member)
                elif keep(job := Job.from_hash(data)):
                    found.append(job)
                    if len(found) == limit:
                        break
            if gone:
                self.r.zrem(index, *gone)
            examined += len(rows) - len(fresh)
            # The next window: below the last score read, skipping the members at that
            # score already read (equal scores come in reverse member order).
            last_score = rows[-1][1]
            at_last = sum(1 for _, score in rows if score == last_score)
            if top != "+inf" and float(top) == last_score:
                offset += len(rows)
            else:
                top, offset = int(last_score), at_last
            if gone:
                offset -= sum(1 for m in gone if _score_of(fresh, m) == last_score)
        return Page(found, last)

    def _read(self, job_ids: list[str]) -> list[dict[str, str]]:
        with self.r.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(self.cells.of_job(job_id).job(job_id))
            return list(pipe.execute())


def _order(at: Position) -> tuple[int, str]:
    return (at.created_ms, at.job_id)


def _older(score: int, member: str, after: Position) -> bool:
    """Whether (score, member) comes after ``after`` in newest-first order."""
    return score < after.created_ms or (score == after.created_ms and member < after.job_id)


def _score_of(rows: list[tuple[str, int]], member: str) -> int | None:
    return next((score for m, score in rows if m == member), None)
