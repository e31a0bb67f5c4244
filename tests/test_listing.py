"""The job listing indexes on a real Redis: written by CREATE_JOB with the job, paged
newest first with a cursor (ties on the creation time included), bounded per page,
and cleaned of expired jobs lazily."""

from __future__ import annotations

from orchestrator.jobs.model import Submission
from orchestrator.store.jobs import RedisStore
from orchestrator.store.listing import JobIndex, Position


def make(store: RedisStore, n: int, **fields: object) -> list[str]:
    return [store.create_job(Submission(input=f"job {i}", **fields))[0].id for i in range(n)]


def every_page(index: JobIndex, key: str, limit: int, scan: int = 1000, **kw: object) -> list[str]:
    seen: list[str] = []
    after: Position | None = None
    for _ in range(200):
        page = index.page(key, limit=limit, scan=scan, after=after, **kw)  # type: ignore[arg-type]
        seen += [j.id for j in page.jobs]
        after = page.after
        if after is None:
            return seen
    raise AssertionError("paging did not end")


def test_create_job_writes_the_tag_and_schedule_indexes(store: RedisStore) -> None:
    tagged = make(store, 2, tags={"tenant": "acme", "team": "x"})
    store.r.zadd(store.keys.jobs_by_tag("team", "x"), {tagged[0]: 1, tagged[1]: 2})
    scheduled = make(store, 1, schedule_id="sch_1")
    plain = make(store, 1)
    index = JobIndex(store)
    assert set(
        every_page(index, index.index_key(tag=("tenant", "acme"), schedule_id=None), 10)
    ) == set(tagged)
    assert (
        every_page(index, index.index_key(tag=("team", "x"), schedule_id=None), 10) == tagged[::-1]
    )
    assert every_page(index, index.index_key(tag=None, schedule_id="sch_1"), 10) == scheduled
    assert len(every_page(index, index.index_key(tag=None, schedule_id=None), 10)) == 4
    assert plain[0] in every_page(index, store.keys.jobs, 1)


def test_pages_with_equal_creation_times_have_no_gap_and_no_repeat(store: RedisStore) -> None:
    ids = make(store, 23)
    # Every job at the same millisecond: the cursor must order by id within it.
    store.r.zadd(store.keys.jobs, {job_id: 1000 for job_id in ids[:15]})
    index = JobIndex(store)
    for limit in (1, 2, 5, 7, 50):
        seen = every_page(index, store.keys.jobs, limit)
        assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen)), limit
    newest = every_page(index, store.keys.jobs, 4)
    assert newest[-15:] == sorted(ids[:15], reverse=True)


def test_filters_scan_a_bounded_window_and_return_a_cursor(store: RedisStore) -> None:
    ids = make(store, 30)
    store.r.zadd(store.keys.jobs, {job_id: 1000 + 10 * i for i, job_id in enumerate(ids)})
    wanted = {ids[0], ids[29]}
    index = JobIndex(store)
    page = index.page(store.keys.jobs, limit=10, scan=8, keep=lambda j: j.id in wanted)
    assert [j.id for j in page.jobs] == [ids[29]] and page.after is not None
    assert every_page(index, store.keys.jobs, 10, scan=8, keep=lambda j: j.id in wanted) == [
        ids[29],
        ids[0],
    ]
    window = every_page(index, store.keys.jobs, 5, since_ms=1100, until_ms=1190)
    assert set(window) == set(ids[10:20])


def test_an_expired_job_is_skipped_and_leaves_the_index(store: RedisStore) -> None:
    ids = make(store, 6, tags={"tenant": "acme"})
    tag_index = store.keys.jobs_by_tag("tenant", "acme")
    store.r.zadd(tag_index, {job_id: 1000 + i for i, job_id in enumerate(ids)})
    for gone in (ids[1], ids[2], ids[4]):
        store.r.delete(store.keys.job(gone))
    index = JobIndex(store)
    assert every_page(index, tag_index, 1) == [ids[5], ids[3], ids[0]]
    assert set(store.r.zrange(tag_index, 0, -1)) == {ids[0], ids[3], ids[5]}
