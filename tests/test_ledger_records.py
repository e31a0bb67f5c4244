"""Where a turn's ledger record lives (issue #14): a compact field of its job hash, read
and honoured as the once-guard together with the older layout's string key, which a
deployment upgraded in place still has; a post for a job whose hash is gone keeps the
older key. On a real Redis."""

from __future__ import annotations

import asyncio
import json

from orchestrator.jobs.model import Job, validate_submission
from orchestrator.ledger import FIELDS
from orchestrator.store.archive import ArchiveStore
from orchestrator.store.connection import connect_async
from orchestrator.store.jobs import RedisStore, now_ms
from orchestrator.store.ledger import posted_record
from orchestrator.store.live import LiveStore

from .test_retention import worker


def submitted(store: RedisStore, worker_id: str) -> Job:
    job, _ = store.create_job(validate_submission(1000, input="count me once"))
    assert store.set_submitted(job, worker(worker_id))
    return store.require_job(job.id)


def live_cost(redis_url: str, prefix: str, job_id: str) -> dict[str, int] | None:
    async def read() -> dict[str, int] | None:
        live = LiveStore(connect_async(redis_url), prefix)
        try:
            return await live.turn_cost(job_id)
        finally:
            await live.close()

    return asyncio.run(read())


def test_the_record_is_a_compact_field_of_the_job_and_a_replay_posts_nothing(
    store: RedisStore, redis_url: str
) -> None:
    job = submitted(store, "wrk_rec")
    posted = store.post_turn(job, worker("wrk_rec", "0.5", 120), now_ms())
    assert posted is not None and posted["model_cost_micro"] == 500_000
    raw = store.r.hget(store.keys.job(job.id), "ledger")
    assert raw == ",".join(str(posted[f]) for f in FIELDS)
    assert len(raw) < 60  # the named JSON was ~300 B, in a key of its own
    assert not store.r.exists(store.keys.ledger_turn(job.id))
    assert store.turn_cost(job.id) == posted
    assert store.turn_costs([job.id, "job_none"]) == [posted, None]
    assert live_cost(redis_url, store.keys.prefix, job.id) == posted
    assert store.require_job(job.id).cost_known is True
    # A replay, even with figures that moved on, adds nothing.
    assert store.post_turn(job, worker("wrk_rec", "0.9", 200), now_ms()) is None
    total = store.costs()["total"]
    assert total["turns"] == 1 and total["model_cost_micro"] == 500_000


def test_a_record_of_the_older_layout_is_read_and_still_guards(
    store: RedisStore, redis_url: str
) -> None:
    """A job posted before the upgrade: its string key counts as posted, and every
    reader (the API's, the live fan-out's, the archiver's) reads it."""
    job = submitted(store, "wrk_old")
    older = {f: "0" for f in FIELDS} | {"model_cost_micro": "250000"}
    store.r.set(store.keys.ledger_turn(job.id), json.dumps(older))
    assert store.post_turn(job, worker("wrk_old", "0.5"), now_ms()) is None  # posted before
    assert store.costs()["total"]["turns"] == 0
    assert not store.r.hexists(store.keys.job(job.id), "ledger")
    want = {f: int(v) for f, v in older.items()}
    assert store.turn_cost(job.id) == want
    assert live_cost(redis_url, store.keys.prefix, job.id) == want
    record = ArchiveStore(store).record(job.id)
    assert record is not None and record["ledger"] == older
    assert "ledger" not in record["job"]


def test_a_post_for_a_job_whose_hash_is_gone_keeps_the_older_key(store: RedisStore) -> None:
    """Nothing to hold the record but its own key: written there, and a replay of that
    post adds nothing."""
    job = submitted(store, "wrk_nohash")
    store.r.delete(store.keys.job(job.id))
    posted = store.post_turn(job, worker("wrk_nohash", "0.25"), now_ms())
    assert posted is not None and not store.r.exists(store.keys.job(job.id))
    assert posted_record(store.r.get(store.keys.ledger_turn(job.id))) == posted
    assert store.turn_cost(job.id) == posted
    assert store.post_turn(job, worker("wrk_nohash", "0.25"), now_ms()) is None
    assert store.costs()["total"]["turns"] == 1


def test_the_archive_keeps_named_figures_and_restores_them_into_the_job(
    store: RedisStore,
) -> None:
    job = submitted(store, "wrk_arc_rec")
    posted = store.post_turn(job, worker("wrk_arc_rec", "0.75"), now_ms())
    assert posted is not None
    archive = ArchiveStore(store)
    record = archive.record(job.id)
    assert record is not None
    assert record["ledger"] == {k: str(v) for k, v in posted.items()}
    assert "ledger" not in record["job"]
    store.r.delete(store.keys.job(job.id))
    assert archive.restore(record, 5000)
    assert store.r.hget(store.keys.job(job.id), "ledger") == ",".join(
        str(posted[f]) for f in FIELDS
    )
    assert store.turn_cost(job.id) == posted
    # A record of another version's fields goes back as the older key, still read.
    other = {**record, "ledger": {**record["ledger"], "future_micro": "7"}}
    store.r.delete(store.keys.job(job.id))
    assert archive.restore(other, 5000)
    assert not store.r.hexists(store.keys.job(job.id), "ledger")
    assert 0 < store.r.pttl(store.keys.ledger_turn(job.id)) <= 5000
    assert store.turn_cost(job.id) == {**posted, "future_micro": 7}
