"""Compact records on a real Redis (issue #14): the worker snapshot is kept compressed
and a completed turn's updates are folded out of the stream into one compressed field of
the worker hash; every reader takes either form, the relay stays exactly once, and the
gateway's SSE replays a folded turn whole."""

from __future__ import annotations

import asyncio
import json
import time
import zlib

import pytest

from orchestrator.facade import Orchestrator
from orchestrator.jobs.model import validate_submission
from orchestrator.store.archive import ArchiveStore
from orchestrator.store.compact import pack_turn, turn_field
from orchestrator.store.connection import connect, connect_async
from orchestrator.store.jobs import RedisStore
from orchestrator.store.live import LiveStore

from .test_retention import finished_job, worker


def test_the_snapshot_is_kept_compressed_and_an_older_plain_one_still_reads(
    store: RedisStore,
) -> None:
    w = worker("wrk_snap", "0.25").model_copy(update={"output_text": "word " * 300})
    store.save_snapshot(w)
    raw = store.r.execute_command("HGET", store.keys.worker("wrk_snap"), "snapshot",
                                  NEVER_DECODE=[])  # fmt: skip
    assert isinstance(raw, bytes) and len(raw) < len(w.model_dump_json()) / 4
    assert store.snapshot("wrk_snap") == w
    # A record written before compression (plain JSON) is read as it is, and so is a
    # blob without a preset dictionary.
    store.r.hset(store.keys.worker("wrk_snap"), "snapshot", w.model_dump_json())
    assert store.snapshot("wrk_snap") == w
    plain = zlib.compress(w.model_dump_json().encode())
    store.r.hset(store.keys.worker("wrk_snap"), "snapshot", plain)
    assert store.snapshot("wrk_snap") == w
    assert store.snapshot("wrk_none") is None


def test_a_completed_turn_is_folded_and_the_relay_stays_exactly_once(store: RedisStore) -> None:
    r, k = store.r, store.keys
    job = finished_job(store, "wrk_fold")
    assert not r.exists(k.updates("wrk_fold"))  # the stream is gone ...
    assert r.hexists(k.worker("wrk_fold"), turn_field(0))  # ... its updates are here
    want = [(i, {"n": i}) for i in range(10)]
    assert store.read_updates("wrk_fold", turn=0) == want
    assert store.read_updates("wrk_fold") == want  # every folded turn of the worker
    assert store.read_updates("wrk_fold", 6, turn=0, count=2) == want[7:9]
    # A late replay of the turn from 0 adds nothing; the next update starts a stream.
    assert store.append_updates("wrk_fold", 0, ['{"n": 0}', '{"n": 1}']) == 10
    assert not r.exists(k.updates("wrk_fold"))
    # Folding again (a redelivered finalize) changes nothing.
    batch = store.batch()
    store.fold_turn_into(batch, job, 10)
    assert batch.execute() == []  # nothing left in the stream to fold
    args = [0, 0, 10, pack_turn(0, ["{}"] * 10), 0]
    assert store._fold(keys=[k.worker("wrk_fold"), k.updates("wrk_fold")], args=args) == 0
    # A blob that the stream does not back is refused, nothing written.
    assert store.append_updates("wrk_fold", 10, ['{"n": 10}']) == 11
    args = [9, 9, 11, pack_turn(9, ["{}"] * 2), 0]
    assert store._fold(keys=[k.worker("wrk_fold"), k.updates("wrk_fold")], args=args) == -1
    assert not r.hexists(k.worker("wrk_fold"), turn_field(9))
    assert store.read_updates("wrk_fold") == [*want, (10, {"n": 10})]


def test_a_turn_relayed_here_is_folded_from_memory_and_still_checked(store: RedisStore) -> None:
    """The quick relay hands finalize the updates it stored: the fold takes them without
    reading the stream back (no XRANGE), gives the same blob, and a count that does not
    match the turn falls back to the read; FOLD_TURN checks the stream either way."""
    r, k = store.r, store.keys
    datas = [json.dumps({"n": i}) for i in range(10)]
    blobs = []
    for worker_id, given in (("wrk_mem", datas), ("wrk_read", None), ("wrk_short", datas[:9])):
        job, _ = store.create_job(validate_submission(1000, input="here"))
        assert store.set_submitted(job, worker(worker_id))
        store.append_updates(worker_id, 0, datas)
        batch = store.batch()
        with r.monitor() as monitor:
            store.fold_turn_into(batch, store.require_job(job.id), 10, given)
            r.ping()  # the last command MONITOR shows
            seen = []
            while not seen or "PING" not in seen[-1]:
                seen.append(monitor.next_command()["command"])
        assert any(c.startswith("XRANGE") for c in seen) == (given is not datas), seen
        assert batch.execute() == [1]
        blobs.append(store.r.execute_command("HGET", k.worker(worker_id), turn_field(0),
                                             NEVER_DECODE=[]))  # fmt: skip
        assert store.read_updates(worker_id) == [(i, {"n": i}) for i in range(10)]
    assert blobs[0] == blobs[1] == blobs[2]
    # Updates that the stream does not hold are refused by the script, nothing written.
    job, _ = store.create_job(validate_submission(1000, input="gap"))
    assert store.set_submitted(job, worker("wrk_gap"))
    store.append_updates("wrk_gap", 0, datas[:5])
    batch = store.batch()
    store.fold_turn_into(batch, store.require_job(job.id), 10, datas)
    assert batch.execute() == [-1]
    assert not r.hexists(k.worker("wrk_gap"), turn_field(0))


def test_a_turn_left_unfolded_stays_in_the_stream_beside_a_folded_one(store: RedisStore) -> None:
    """A failed turn keeps its stream entries (its job's readers still read them); the
    worker's next, completed turn is folded out of the same stream around them."""
    r, k = store.r, store.keys
    failed, _ = store.create_job(validate_submission(1000, input="fails"))
    assert store.set_submitted(failed, worker("wrk_mix"))
    store.append_updates("wrk_mix", 0, ['{"n": 0}', '{"n": 1}'])
    assert store.transition(failed.id, "failed", "gave up")
    done = finished_job(store, "wrk_mix", kind="continue")
    assert (done.update_from, done.update_to) == (2, 12)
    assert [i for i, _ in r.xrange(k.updates("wrk_mix"))] == ["0-1", "0-2"]
    assert store.read_updates("wrk_mix", turn=2) == [(i, {"n": i}) for i in range(12)]
    assert [i for i, _ in store.read_updates("wrk_mix", 1, turn=2)] == list(range(2, 12))


def test_folded_turns_past_the_stream_cap_are_dropped(redis_url: str, key_prefix: str) -> None:
    capped = RedisStore(connect(redis_url), key_prefix, updates_maxlen=15)
    try:
        finished_job(capped, "wrk_cap")  # updates 0-9
        finished_job(capped, "wrk_cap", kind="continue")  # 10-19: begins before 20 - 15
        names = [n for n in capped.r.hkeys(capped.keys.worker("wrk_cap")) if "turn:" in n]
        assert names == [turn_field(10)]  # the latest is always kept
        assert [i for i, _ in capped.read_updates("wrk_cap")] == list(range(10, 20))
    finally:
        capped.r.close()


def test_the_archive_reads_a_folded_turn_and_the_compressed_snapshot(store: RedisStore) -> None:
    job = finished_job(store, "wrk_fold_arc")
    record = ArchiveStore(store).record(job.id)
    assert record is not None
    assert record["updates"] == [[i, {"n": i}] for i in range(10)]
    assert record["worker"]["id"] == "wrk_fold_arc"


def test_the_gateway_reads_a_folded_turn(store: RedisStore, redis_url: str) -> None:
    job = finished_job(store, "wrk_fold_sse")

    async def read() -> tuple[list[int], list[int]]:
        live = LiveStore(connect_async(redis_url), store.keys.prefix)
        try:
            whole = await live.updates("wrk_fold_sse", -1, turn=0)
            rest = await live.updates("wrk_fold_sse", 4, turn=0)
            return [i for i, _ in whole], [i for i, _ in rest]
        finally:
            await live.close()

    whole, rest = asyncio.run(read())
    assert whole == list(range(10)) and rest == list(range(5, 10))
    assert job.update_to == 10


@pytest.mark.usefixtures("emulator")
def test_the_facade_reads_a_folded_turn_at_once(orch: Orchestrator) -> None:
    job = finished_job(orch.store, "wrk_fold_tail")
    started = time.monotonic()
    got = list(orch.updates(job.id, timeout=10))
    assert got == [(i, {"n": i}) for i in range(10)]
    assert time.monotonic() - started < 0.9  # read from the fold, no blocking read
    assert [i for i, _ in orch.updates(job.id, after=7, block=False)] == [8, 9]
    assert json.loads(orch.worker(job.id).model_dump_json())["id"] == "wrk_fold_tail"


def test_the_history_is_one_short_line_an_entry_and_older_lines_still_read(
    store: RedisStore,
) -> None:
    job, _ = store.create_job(validate_submission(1000, input="lines"))
    key = store.keys.job(job.id)
    assert store.r.hget(key, "history") == f"{job.created_at} queued"
    # A line written before (one JSON object) is read beside the short ones.
    old = json.dumps({"status": "queued", "at": 5, "detail": "from before"})
    store.r.hset(key, "history", f"{old}\n{job.created_at} queued")
    assert store.transition(job.id, "submitted")
    assert store.transition(job.id, "failed", 'said "no"\nand \\ more')
    history = store.history(job.id)
    assert [(h["status"], h["detail"]) for h in history] == [
        ("queued", "from before"), ("queued", None), ("submitted", None),
        ("failed", 'said "no"\nand \\ more'),
    ]  # fmt: skip
    assert len(store.r.hget(key, "history").split("\n")) == 4
