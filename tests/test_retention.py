"""Retention on a real Redis (issue #14): a finished job's records expire a retention
after it ends, in the script that ends it; live work never expires; rollups stay; a
late duplicate update of an expired worker is not stored again; history is compact."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis

from orchestrator.errors import InputError
from orchestrator.facade import Orchestrator
from orchestrator.jobs import lifecycle
from orchestrator.jobs.model import Job, validate_submission
from orchestrator.ledger import cumulative
from orchestrator.ops.redis_server import RedisServer
from orchestrator.rules import duration_seconds, retention_by_tag
from orchestrator.settings import load_settings
from orchestrator.store.connection import connect
from orchestrator.store.jobs import RedisStore, now_ms
from orchestrator.store.retention import EXPIRY_SERVER_CONFIG, RetentionPolicy
from orchestrator.store.scripts.records import HISTORY_MAX
from orchestrator.wire.models import Worker

from .conftest import Emulator
from .processes import wait_for

SHORT = RetentionPolicy(default_seconds=2, by_tag={("tenant", "acme"): 30})


def worker(worker_id: str, usd: str = "0.5", tokens: int = 100) -> Worker:
    return Worker.model_validate_json(
        f'{{"id": "{worker_id}", "object": "worker", "status": "completed", "running": false,'
        f' "costs": {{"internalCostUsd": 0, "modelCostUsd": {usd}, "sandboxCostUsd": 0,'
        f' "toolCostUsd": 0}}, "usage": {{"cacheReadTokens": 0, "cacheWriteTokens": 0,'
        f' "costUsd": {usd}, "inputTokens": {tokens}, "outputTokens": 0,'
        f' "reasoningTokens": 0, "steps": 1, "totalTokens": {tokens}}}}}'
    )


@pytest.fixture
def short(redis_url: str, key_prefix: str) -> Iterator[RedisStore]:
    """A store whose finished jobs are kept 2 s (30 s for tag tenant=acme)."""
    s = RedisStore(connect(redis_url), key_prefix, retention=SHORT)
    yield s
    s.r.close()


def finished_job(
    store: RedisStore, worker_id: str, *, kind: str = "create", tags: dict[str, str] | None = None,
    idem: str | None = None, usd: str = "0.5",
) -> Job:  # fmt: skip
    """A job through every write a real turn makes: created, submitted, updates relayed,
    a file recorded, the turn posted, completed."""
    sub = validate_submission(
        1000, kind=kind, input="keep me a while", tags=tags or {}, idempotency_key=idem,
        worker_id=worker_id if kind == "continue" else None,
    )  # fmt: skip
    job, _ = store.create_job(sub)
    w = worker(worker_id, usd)
    assert store.set_submitted(job, w)
    job = store.require_job(job.id)
    first = store.relayed(worker_id)
    store.append_updates(worker_id, first, [json.dumps({"n": first + i}) for i in range(10)])
    store.record_file(job.id, "out.txt", {"path": "x", "size": 1, "sha256": "0"})
    assert store.post_turn(job, w, now_ms()) is not None
    batch = store.batch()
    store.complete_into(batch, job, store.relayed(worker_id))
    batch.execute()
    return store.require_job(job.id)


def job_keys(store: RedisStore, job: Job) -> list[str]:
    """The keys a completed job leaves (its turn's updates are folded into the worker
    hash: the updates stream is gone; a stream left by a turn that did not complete
    expires as well, see test_a_cancelled_running_job_keeps_its_records_until_settled)."""
    k = store.keys
    assert job.worker_id
    out = [k.job(job.id), k.job_files(job.id), k.worker(job.worker_id),
           k.ledger("worker", job.worker_id)]  # fmt: skip
    if job.idempotency_key:
        out.append(k.idempotency(job.idempotency_key))
    return out


def test_the_prune_pass_trims_the_listing_indexes_of_expired_jobs(short: RedisStore) -> None:
    """The per-tag listing indexes (written by CREATE_JOB) lose the ids of jobs whose
    records expired, keep live jobs' ids, and an index left empty is forgotten."""
    r, k = short.r, short.keys
    ended = finished_job(short, "wrk_ret_idx", tags={"team": "x", "solo": "1"})
    live, _ = short.create_job(validate_submission(1000, input="still queued", tags={"team": "x"}))
    team, solo = k.jobs_by_tag("team", "x"), k.jobs_by_tag("solo", "1")
    assert r.smembers(k.job_indexes) == {team, solo}
    assert short.prune_indexes() == 0  # nothing expired yet: nothing removed
    assert set(r.zrange(team, 0, -1)) == {ended.id, live.id}
    wait_for(lambda: not r.exists(k.job(ended.id)), 10, "the finished job to expire")
    assert short.prune_indexes() == 2
    assert r.zrange(team, 0, -1) == [live.id]
    assert not r.exists(solo)
    assert r.smembers(k.job_indexes) == {team}


def test_one_prune_pass_keeps_up_with_a_busy_tenant(short: RedisStore) -> None:
    """A tenant's index gains an id per job: 1,000 expired ids behind a job that lives on
    (the oldest) all go in one pass, which checked only 200 of them before (a tenant
    past ~13 jobs a second grew its index for ever); the live job stays."""
    r, k = short.r, short.keys
    live, _ = short.create_job(validate_submission(1000, input="lives on", tags={"t": "busy"}))
    index = k.jobs_by_tag("t", "busy")
    base = now_ms()
    # Ids of jobs whose records have expired: in the index, their hashes gone.
    r.zadd(index, {f"job_{i:032x}": base + 1 + i for i in range(1000)})
    assert short.prune_indexes() == 1000
    assert r.zrange(index, 0, -1) == [live.id]
    assert short.prune_indexes(checks=1) == 0  # bounded: one id checked, alive, kept
    # The retention index likewise: 2,500 due in one pass, 1,000 at a time.
    r.zadd(k.retention, {f"job_{i:032x}|": base - 1 - i for i in range(2500)})
    assert short.prune_expired(now_ms(), limit=1000) == 2500
    assert r.zcard(k.retention) == 0


def test_duration_and_override_rules() -> None:
    assert duration_seconds("7d") == 7 * 86_400
    assert duration_seconds("30s") == 30 and duration_seconds("12h") == 43_200
    for bad in ("7", "7 d", "-1d", "0s", "1.5h", "9999999d", 7, "7d\n"):
        with pytest.raises(InputError) as err:
            duration_seconds(bad)
        assert err.value.field == "retention"
    assert retention_by_tag("tenant=acme=30d, tier=gold=1h") == {
        ("tenant", "acme"): 30 * 86_400,
        ("tier", "gold"): 3600,
    }
    for bad in ("tenant=acme", "Tenant=acme=1d", "tenant=acme=1x"):
        with pytest.raises(InputError) as err:
            retention_by_tag(bad)
        assert err.value.field == "retention_by_tag"
    policy = RetentionPolicy(100, {("a", "1"): 50, ("b", "2"): 500})
    assert policy.seconds({}) == 100 and policy.seconds({"a": "1"}) == 50
    assert policy.seconds({"a": "1", "b": "2"}) == 500  # the longest matching wins


def test_every_record_kind_expires_after_the_job_ends_and_rollups_stay(
    short: RedisStore,
) -> None:
    r = short.r
    job = finished_job(short, "wrk_ret_1", idem="ret-key-1", tags={"team": "x"})
    keys = job_keys(short, job)
    ttls = {key: r.pttl(key) for key in keys}
    assert all(0 < ttl <= 2000 for ttl in ttls.values()), ttls
    assert not r.exists(short.keys.updates("wrk_ret_1"))  # folded into the worker hash
    # The turn's ledger record is a field of the job hash: it expires with it.
    assert r.hget(short.keys.job(job.id), "ledger") and short.turn_cost(job.id)
    assert not r.exists(short.keys.ledger_turn(job.id))
    assert short.read_updates("wrk_ret_1", turn=0) == [(i, {"n": i}) for i in range(10)]
    day_rows = short.costs("day")["rows"]
    tag_rows = short.costs("tag")["rows"]
    total = short.costs()["total"]
    assert total["turns"] == 1 and day_rows and tag_rows
    wait_for(lambda: not any(r.exists(key) for key in keys), 10, "the records to expire")
    # What the expiry cannot reach is dropped by the prune pass.
    assert short.recent_jobs() == [job.id]
    assert short.prune_expired(now_ms()) == 1
    assert short.recent_jobs() == []
    assert "wrk_ret_1" not in r.smembers(short.keys.ledger_index("worker"))
    # The rollups are kept, to the micro-dollar.
    assert short.costs("day")["rows"] == day_rows
    assert short.costs("tag")["rows"] == tag_rows
    assert short.costs()["total"] == total
    # A reused idempotency key after its job expired makes a new job.
    again, created = short.create_job(
        validate_submission(1000, input="again", idempotency_key="ret-key-1")
    )
    assert created and again.id != job.id


def test_live_work_never_expires_and_a_tag_override_keeps_longer(short: RedisStore) -> None:
    r = short.r
    queued, _ = short.create_job(validate_submission(1000, input="waits", idempotency_key="q1"))
    running, _ = short.create_job(validate_submission(1000, input="runs"))
    assert short.set_submitted(running, worker("wrk_live"))
    assert short.transition(running.id, "running")
    short.append_updates("wrk_live", 0, ['{"n": 0}'])
    for key in (short.keys.job(queued.id), short.keys.idempotency("q1"), short.keys.job(running.id),
                short.keys.worker("wrk_live"), short.keys.updates("wrk_live")):  # fmt: skip
        assert r.pttl(key) == -1, key
    acme = finished_job(short, "wrk_acme", tags={"tenant": "acme"})
    assert 20_000 < r.pttl(short.keys.job(acme.id)) <= 30_000
    assert 20_000 < r.pttl(short.keys.worker("wrk_acme")) <= 30_000
    # A failed job that never reached a worker expires too.
    failed, _ = short.create_job(validate_submission(1000, input="refused"))
    assert short.transition(failed.id, "failed", "no")
    assert 0 < r.pttl(short.keys.job(failed.id)) <= 2000


def test_a_worker_lives_as_long_as_its_latest_job(short: RedisStore) -> None:
    """Two turns of one worker: the second job's start takes the worker's records off
    expiry, a late end of the first does not put them back on it, and the end of the
    second extends, never shortens, what the first set."""
    r = short.r
    first = finished_job(short, "wrk_two", tags={"tenant": "acme"})  # kept 30 s
    wkey, ukey = short.keys.worker("wrk_two"), short.keys.updates("wrk_two")
    assert r.pttl(wkey) > 20_000
    second, _ = short.create_job(
        validate_submission(1000, kind="continue", input="more", worker_id="wrk_two")
    )
    assert short.set_submitted(second, worker("wrk_two", "0.8"))
    assert r.pttl(wkey) == -1 and not r.exists(ukey)  # the first turn was folded
    # The first job's job records keep their own expiry.
    assert r.pttl(short.keys.job(first.id)) > 20_000
    # A stray terminal move of another job of the worker leaves the live worker alone.
    stray, _ = short.create_job(
        validate_submission(1000, kind="continue", input="stray", worker_id="wrk_two")
    )
    assert short.transition(stray.id, "failed", "refused")
    assert r.pttl(wkey) == -1
    # The second job ends with the short default: the worker's records get 2 s.
    short.append_updates("wrk_two", short.relayed("wrk_two"), ['{"n": 10}'])
    batch = short.batch()
    short.complete_into(batch, short.require_job(second.id), short.relayed("wrk_two"))
    batch.execute()
    assert 0 < r.pttl(wkey) <= 2000
    assert short.read_updates("wrk_two") == [(i, {"n": i}) for i in range(11)]  # both turns
    # Extend, never shorten: a longer expiry set earlier is kept.
    r.pexpire(wkey, 60_000)
    short.transition(stray.id, "failed")  # no move: nothing changes
    assert r.pttl(wkey) > 50_000


def test_an_update_stream_made_after_its_worker_was_retained_expires_with_it(
    short: RedisStore,
) -> None:
    """A late update of a retained worker whose stream was folded away (a follower of a
    turn whose job Redis lost, say) made the stream anew with no expiry, for good."""
    r = short.r
    finished_job(short, "wrk_new_stream")
    assert not r.exists(short.keys.updates("wrk_new_stream"))  # folded
    assert short.append_updates("wrk_new_stream", 10, ['{"n": 10}']) == 11
    left = r.pttl(short.keys.updates("wrk_new_stream"))
    assert 0 < left <= r.pttl(short.keys.worker("wrk_new_stream")) + 50


def test_a_late_duplicate_update_after_expiry_is_not_stored_again(short: RedisStore) -> None:
    r = short.r
    job = finished_job(short, "wrk_late")
    assert short.relayed("wrk_late") == 10
    # While retained: a replay from 0 adds nothing.
    assert short.append_updates("wrk_late", 0, ['{"n": 0}', '{"n": 1}']) == 10
    wait_for(lambda: not r.exists(short.keys.worker("wrk_late")), 10, "the worker to expire")
    with pytest.raises(redis.ResponseError, match="GONE"):
        short.append_updates("wrk_late", 0, ['{"n": 0}'])
    assert not r.exists(short.keys.updates("wrk_late"))
    assert not r.exists(short.keys.worker("wrk_late"))
    # A late finalize of the expired job finds no job: nothing is posted again.
    with pytest.raises(InputError):
        short.require_job(job.id)
    assert short.costs()["total"]["turns"] == 1


def test_a_continue_after_the_workers_records_expired_counts_only_its_turn(
    short: RedisStore,
) -> None:
    finished_job(short, "wrk_back", usd="0.5")
    wait_for(lambda: not short.r.exists(short.keys.worker("wrk_back")), 10, "expiry")
    total = short.costs()["total"]["model_cost_micro"]
    sub = validate_submission(1000, kind="continue", input="back", worker_id="wrk_back")
    job, _ = short.create_job(sub)
    assert short.set_submitted(job, worker("wrk_back", "0.5"))  # the continue's answer
    posted = short.post_turn(short.require_job(job.id), worker("wrk_back", "0.75"), now_ms())
    assert posted is not None and posted["model_cost_micro"] == 250_000
    assert short.costs()["total"]["model_cost_micro"] == total + 250_000
    assert cumulative(worker("wrk_back", "0.75")) is not None


def test_history_is_a_small_field_of_the_job_and_capped(store: RedisStore) -> None:
    job, _ = store.create_job(validate_submission(1000, input="history"))
    assert not store.r.exists(f"{store.keys.job(job.id)}:history")
    assert store.transition(job.id, "submitted")
    assert store.transition(job.id, "failed", 'said "no"\nand more')
    history = store.history(job.id)
    assert [h["status"] for h in history] == ["queued", "submitted", "failed"]
    assert history[-1]["detail"] == 'said "no"\nand more'
    assert history[0]["detail"] is None and history[0]["at"] == job.created_at
    # The cap: the oldest entries go first.
    key = store.keys.job(job.id)
    line = json.dumps({"status": "failed", "at": 1, "detail": ""})
    store.r.hset(
        key, mapping={"history": "\n".join([line] * HISTORY_MAX), "history_n": HISTORY_MAX}
    )
    store.r.hset(key, "status", "running")
    assert store.transition(job.id, "completed")
    history = store.history(job.id)
    assert len(history) == HISTORY_MAX and history[-1]["status"] == "completed"


def test_an_updates_stream_is_sized_to_what_it_holds_when_its_turn_ends(
    store: RedisStore,
) -> None:
    """A turn that ends without completing (failed here) keeps its stream, rewritten
    to its exact size (a completed one is folded: see test_compact.py)."""
    job, _ = store.create_job(validate_submission(1000, input="sized"))
    assert store.set_submitted(job, worker("wrk_sized"))
    store.append_updates("wrk_sized", 0, [json.dumps({"n": i}) for i in range(10)])
    ukey = store.keys.updates("wrk_sized")
    live = int(store.r.memory_usage(ukey))
    assert store.transition(job.id, "failed", "the follower gave up")
    done = int(store.r.memory_usage(ukey))
    assert live > 4000 and done < live / 2, (live, done)
    assert [i for i, _ in store.read_updates("wrk_sized")] == list(range(10))
    # The relay goes on from where it was: ids 0-(n+1) are kept.
    assert store.append_updates("wrk_sized", 10, ['{"n": 10}']) == 11
    assert store.r.xrange(ukey, "-", "+", count=1)[0][0] == "0-1"


def test_wait_wakes_on_the_event_channel(store: RedisStore) -> None:
    job, _ = store.create_job(validate_submission(1000, input="watched"))
    with store.watch_job(job.id) as watch:
        started = time.monotonic()
        assert watch.wait(0.2) is None
        assert store.transition(job.id, "submitted")
        assert watch.wait(5) == "submitted"
        assert time.monotonic() - started < 3


@pytest.fixture
def short_orch(env: dict[str, str]) -> Iterator[Orchestrator]:
    """The facade with finished jobs kept 2 s, against the emulator over HTTP."""
    settings = load_settings(
        redis_url=env["REDIS_URL"], key_prefix=env["KEY_PREFIX"],
        workers_api_url=env["WORKERS_API_URL"], workers_api_key=env["WORKERS_API_KEY"],
        files_dir=env["FILES_DIR"], retention="2s",
    )  # fmt: skip
    with Orchestrator(settings) as o:
        yield o


def test_a_cancelled_running_job_keeps_its_records_until_settled(
    short_orch: Orchestrator, emulator: Emulator
) -> None:
    """An end reached here while the turn runs upstream starts no expiry: the records
    the late settlement posts against stay until it is done, then expire a retention
    after it (counted from the settlement, not the cancel)."""
    orch, store = short_orch, short_orch.store
    r, keys = store.r, store.keys
    emulator.configure(turn_seconds=6, events_per_turn=3)
    job = orch.submit("cancel me while I run", tags={"team": "x"}, idempotency_key="keep-1")
    upstream = orch.rt.client.create(job.input, budget=job.budget, idempotency_key=job.id)
    assert upstream.running and store.set_submitted(job, upstream)
    store.append_updates(upstream.id, 0, ['{"n": 0}'])
    cancelled = orch.cancel(job.id)
    assert cancelled.status == "cancelled" and orch.rt.ends.unsettled(job.id)
    records = [keys.job(job.id), keys.job_files(job.id), keys.worker(upstream.id),
               keys.updates(upstream.id), keys.idempotency("keep-1")]  # fmt: skip
    store.record_file(job.id, "early.txt", {"refused": "test"})
    assert [r.pttl(key) for key in records] == [-1] * len(records)  # kept, no expiry
    assert r.zscore(keys.retention, f"{job.id}|{upstream.id}") is None
    # The turn still runs upstream: nothing settled, nothing set to expire.
    now = now_ms()
    assert lifecycle.settle_ended(orch.app, orch.rt, orch.get(job.id), now) == "later"
    assert [r.pttl(key) for key in records] == [-1] * len(records)
    # Once the turn ends upstream it is settled, and only then do the records expire.
    wait_for(
        lambda: lifecycle.settle_ended(orch.app, orch.rt, orch.get(job.id), now_ms())
        == "settled",
        60, "the cancelled job's turn to be settled", interval=0.2,
    )  # fmt: skip
    settled_at = now_ms()
    assert not orch.rt.ends.unsettled(job.id)
    assert orch.costs()["total"]["turns"] == 1  # posted against the kept records
    records.append(keys.ledger("worker", upstream.id))
    ttls = [r.pttl(key) for key in records]
    assert all(0 < ttl <= 2000 for ttl in ttls), ttls
    expires = r.zscore(keys.retention, f"{job.id}|{upstream.id}")
    assert expires is not None and expires <= settled_at + 2000
    # Counted from the settlement, seconds after the cancel (the turn ran on).
    assert expires - 2000 >= cancelled.timestamps["cancelled"] + 1000
    # A second settlement (a late finalize put it back) only ever lengthens the expiry.
    assert store.settled(job.id) == 0
    wait_for(lambda: not any(r.exists(key) for key in records), 10, "the records to expire")


def test_a_job_cancelled_before_it_went_upstream_expires_from_its_end(
    short_orch: Orchestrator,
) -> None:
    """Nothing to settle: the cancel settles it at once, so its retention starts then."""
    orch, store = short_orch, short_orch.store
    job = orch.submit("never sent", tags={"tenant": "zed"})
    orch.cancel(job.id)
    assert not orch.rt.ends.unsettled(job.id)
    assert 0 < store.r.pttl(store.keys.job(job.id)) <= 2000
    assert [h["status"] for h in orch.history(job.id)] == ["queued", "cancelled"]



def test_the_embedded_server_frees_expired_records_promptly() -> None:
    """Records expire a few at a time among many that live on: at Redis's default expire
    effort (1) a server leaves expired keys unfreed while they are under ~10 % of the
    keys with a TTL (here 2,000 of 22,000 stay, measured: ~1,950 after 3 s), so
    used_memory carries them; the embedded server's effort (10) frees them at once."""
    with RedisServer(appendonly=False) as server:
        client = connect(server.url)
        try:
            assert client.config_get("active-expire-effort") == EXPIRY_SERVER_CONFIG
            with client.pipeline(transaction=False) as pipe:
                for i in range(20_000):
                    pipe.set(f"kept:{i}", "x", ex=3600)
                for i in range(2_000):
                    pipe.set(f"expiring:{i}", "x" * 100, px=100)
                pipe.execute()
            # Never read again: only the server's own active expiry can free them.
            wait_for(lambda: int(client.dbsize()) <= 20_000, timeout=5.0, what="expired freed")
        finally:
            client.close()
