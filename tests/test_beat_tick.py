"""The beat scheduler's tick in-process, on a real Redis, with a fixed clock: downtime
policies, one-shots, take-over of claims a dead beat left unsent, batches, the idle
tick at 10,000 schedules."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections import Counter
from typing import Any

import pytest
from prometheus_client import REGISTRY

from orchestrator.celery import make_app
from orchestrator.errors import InputError
from orchestrator.ops.redis_server import RedisServer
from orchestrator.schedules import beat as beat_module
from orchestrator.schedules.beat import CONF_GRACE, RedisScheduler, misfire_grace_ms
from orchestrator.schedules.timing import ScheduleRequest, new_schedule
from orchestrator.settings import load_settings
from orchestrator.store.jobs import RedisStore, connect
from orchestrator.store.schedule_hash import schedule_to_hash
from orchestrator.store.schedules import ScheduleStore

T0 = 1_800_000_000_000  # a fixed "now" (ms) the schedules are created at


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Counter[tuple[str, int]]:
    """What the beats send, by (schedule, slot); no broker involved."""
    got: Counter[tuple[str, int]] = Counter()

    def record(app: Any, runs: list[tuple[str, int]], producer: Any = None) -> None:
        assert 0 < len(runs) <= beat_module.RUNS_PER_MESSAGE
        got.update(runs)

    monkeypatch.setattr(beat_module, "send_runs", record)
    return got


def make_beat(store: RedisStore, **attrs: Any) -> RedisScheduler:
    settings = load_settings(redis_url="redis://127.0.0.1:1/0", key_prefix=store.keys.prefix)
    app = make_app(settings)
    app.producer_or_acquire = lambda producer=None: contextlib.nullcontext()  # type: ignore[method-assign]
    sched = RedisScheduler(app=app, lazy=True)
    sched.schedules = ScheduleStore(store)
    for name, value in attrs.items():
        setattr(sched, name, value)
    return sched


def add(store: RedisStore, sid: str, when: dict[str, Any], **kw: Any) -> None:
    req = ScheduleRequest.model_validate({"when": when, **kw})
    s = new_schedule(sid, req, input="x", budget="low", worker_id=None, now_ms=T0)
    ScheduleStore(store).add(s)


def test_downtime_skip_once_and_late_one_shots(
    store: RedisStore, sent: Counter[tuple[str, int]]
) -> None:
    every10 = {"type": "interval", "intervalSeconds": 10}
    add(store, "sch_skip", every10)
    add(store, "sch_once", every10, catch_up="once")
    add(store, "sch_later", {"type": "delayed", "delayInSeconds": 30})
    beat = make_beat(store)
    assert beat.tick_once(now=T0 + 10_000) == pytest.approx(0, abs=2)
    assert set(sent) == {("sch_skip", T0 + 10_000), ("sch_once", T0 + 10_000)}
    # Beat was down from 10 s to 67 s: slots 20..60 are all more than 5 s late.
    beat.tick_once(now=T0 + 67_000)
    ss = ScheduleStore(store)
    skip, once, later = (ss.get(s) for s in ("sch_skip", "sch_once", "sch_later"))
    assert skip and once and later
    assert ("sch_skip", T0 + 60_000) not in sent and skip.counts["missed"] == 5
    assert sent[("sch_once", T0 + 60_000)] == 1 and once.counts["missed"] == 4
    assert sent[("sch_later", T0 + 30_000)] == 1 and later.status == "done"
    assert skip.next_run_ms == once.next_run_ms == T0 + 70_000
    beat.tick_once(now=T0 + 67_500)
    assert sum(sent.values()) == 4 and max(sent.values()) == 1
    assert ss.pending() == 0
    assert store.r.zscore(store.keys.schedules_due, "sch_later") is None


def test_a_claim_left_unsent_is_taken_over_once(
    store: RedisStore, sent: Counter[tuple[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(5):
        add(store, f"sch_{i}", {"type": "interval", "intervalSeconds": 1})
    dying = make_beat(store)

    def crash(*_: Any, **__: Any) -> None:
        raise ConnectionError("broker gone")

    monkeypatch.setattr(beat_module, "send_runs", crash)
    with pytest.raises(ConnectionError):
        dying.tick_once(now=T0 + 1000)
    ss = ScheduleStore(store)
    assert ss.pending() == 5  # claimed, advanced, not sent
    monkeypatch.undo()
    monkeypatch.setattr(beat_module, "send_runs", lambda _a, runs, producer=None: sent.update(runs))
    a, b = make_beat(store, resend_after=10.0), make_beat(store, resend_after=10.0)
    a.tick_once(now=T0 + 5_000)  # too early to take over; slots 2..5 are claimed anew
    assert all(slot != T0 + 1000 for _, slot in sent)
    a.tick_once(now=T0 + 11_500)
    b.tick_once(now=T0 + 11_600)
    firsts = [k for k in sent if k[1] == T0 + 1000]
    assert len(firsts) == 5 and all(sent[k] == 1 for k in firsts)
    assert max(sent.values()) == 1 and ss.pending() == 0


def test_due_slots_go_in_bounded_batches(store: RedisStore, sent: Counter[tuple[str, int]]) -> None:
    with store.r.pipeline(transaction=False) as pipe:
        for i in range(1200):
            req = ScheduleRequest.model_validate({"when": {"type": "delayed", "delayInSeconds": 1}})
            s = new_schedule(f"sch_b{i}", req, input="x", budget="low", worker_id=None, now_ms=T0)
            pipe.hset(store.keys.schedule(s.id), mapping=schedule_to_hash(s))
            pipe.zadd(store.keys.schedules_due, {s.id: s.next_run_ms})
        pipe.execute()
    beat = make_beat(store, batch=500)
    waits = [beat.tick_once(now=T0 + 2000) for _ in range(4)]
    assert waits[:2] == [0.0, 0.0] and waits[3] == beat.max_interval
    assert len(sent) == 1200 and max(sent.values()) == 1


def test_tick_sleeps_until_the_next_run_at_most_max_interval(store: RedisStore) -> None:
    beat = make_beat(store)
    assert beat.tick_once() == beat.max_interval  # nothing at all
    from orchestrator.store.jobs import now_ms

    req = ScheduleRequest.model_validate({"when": {"type": "delayed", "delayInSeconds": 1}})
    s = new_schedule("sch_soon", req, input="x", budget="low", worker_id=None, now_ms=now_ms())
    ScheduleStore(store).add(s.__class__(**{**s.__dict__, "next_run_ms": now_ms() + 300}))
    assert 0.1 < beat.tick_once() <= 0.3


def test_idle_tick_at_ten_thousand_schedules(store: RedisStore) -> None:
    n = 10_000
    with store.r.pipeline(transaction=False) as pipe:
        for i in range(n):
            req = ScheduleRequest.model_validate(
                {"when": {"type": "interval", "intervalSeconds": 3600 + i}}
            )
            s = new_schedule(
                f"sch_{i:05d}", req, input="x", budget="low", worker_id=None, now_ms=T0
            )
            pipe.hset(store.keys.schedule(s.id), mapping=schedule_to_hash(s))
            pipe.zadd(store.keys.schedules_due, {s.id: s.next_run_ms})
            pipe.zadd(store.keys.schedules_all, {s.id: T0})
        pipe.execute()
    beat = make_beat(store)
    beat.tick_once(now=T0 + 1000)  # warm up (script load)
    samples = []
    for k in range(200):
        start = time.perf_counter()
        wait = beat.tick_once(now=T0 + 1000 + k)
        samples.append(time.perf_counter() - start)
        assert wait == beat.max_interval
    median = statistics.median(samples) * 1000
    start = time.perf_counter()
    loaded = ScheduleStore(store).many(ScheduleStore(store).all_ids())
    load_all = (time.perf_counter() - start) * 1000
    assert len(loaded) == n
    print(
        f"\nidle tick at {n} schedules: median {median:.3f} ms, p95 "
        f"{sorted(samples)[189] * 1000:.3f} ms (loading every schedule instead: {load_all:.0f} ms)"
    )
    assert median < 50  # very generous: one Lua call, O(log N)


def test_beat_refuses_a_redis_that_may_evict(tmp_path: Any) -> None:
    with RedisServer(appendonly=False, args=["--maxmemory-policy", "allkeys-lru"]) as server:
        s = RedisStore(connect(server.url), "evict")
        with pytest.raises(InputError) as err:
            s.check_eviction_policy()
        assert err.value.field == "maxmemory-policy"
        import subprocess
        import sys

        from .processes import stack_env

        env = stack_env(server.url, "evict", "http://127.0.0.1:9", "sk-unused")
        done = subprocess.run(
            [sys.executable, "-m", "orchestrator", "beat"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 2
        assert done.stderr.strip().splitlines() == [
            "error: maxmemory-policy: is 'allkeys-lru'; the store needs 'noeviction' (no key loss)"
        ]
        s.r.close()


def test_a_buffered_run_is_released_when_the_previous_job_ends(
    store: RedisStore, sent: Counter[tuple[str, int]]
) -> None:
    from orchestrator.runtime import Runtime
    from orchestrator.schedules.run import run_slot

    add(store, "sch_buf", {"type": "interval", "intervalSeconds": 3600}, overlap="buffer")
    store.r.hset(store.keys.schedule("sch_buf"), "worker_id", "wrk_x")
    settings = load_settings(redis_url="redis://127.0.0.1:1/0", key_prefix=store.keys.prefix)
    rt = Runtime(settings, store)

    class Producer:
        def send_task(self, *_: Any, **__: Any) -> None:
            pass

    assert run_slot(rt, Producer(), "sch_buf", T0 + 1) == "fired"  # type: ignore[arg-type]
    assert run_slot(rt, Producer(), "sch_buf", T0 + 2) == "buffered"  # type: ignore[arg-type]
    beat = make_beat(store)
    beat.tick_once(now=T0 + 10)
    assert sent == Counter()  # the first run's job is still queued
    job_id = ScheduleStore(store).runs("sch_buf")[-1]["job_id"]
    store.transition(job_id, "completed")
    beat.tick_once(now=T0 + 20)
    beat.tick_once(now=T0 + 30)  # not sent twice while the run task is on its way
    assert sent == Counter({("sch_buf", T0 + 2): 1})
    assert run_slot(rt, Producer(), "sch_buf", T0 + 2) == "fired"  # type: ignore[arg-type]
    beat.tick_once(now=T0 + 40)
    assert sum(sent.values()) == 1


def runs_counted(outcome: str) -> float:
    return REGISTRY.get_sample_value("orchestrator_schedule_runs_total", {"outcome": outcome}) or 0


def test_beat_counts_the_runs_it_sends_and_how_late(
    store: RedisStore, sent: Counter[tuple[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """orchestrator_schedule_runs_total{outcome} and the lateness histogram move by what
    this beat sent: new claims as ``sent`` (each slot's lateness observed), a dead beat's
    claims as ``resent``; a claim another beat won counts nothing here."""
    add(store, "sch_a", {"type": "interval", "intervalSeconds": 10})
    add(store, "sch_b", {"type": "interval", "intervalSeconds": 10})
    before = {o: runs_counted(o) for o in ("sent", "resent")}
    late_before = REGISTRY.get_sample_value("orchestrator_schedule_lateness_seconds_sum") or 0
    count_before = REGISTRY.get_sample_value("orchestrator_schedule_lateness_seconds_count") or 0
    beat = make_beat(store)
    beat.tick_once(now=T0 + 12_000)  # both slots at 10 s, each 2 s late
    assert runs_counted("sent") - before["sent"] == 2
    late = REGISTRY.get_sample_value("orchestrator_schedule_lateness_seconds_sum") or 0
    count = REGISTRY.get_sample_value("orchestrator_schedule_lateness_seconds_count") or 0
    assert count - count_before == 2
    assert late - late_before == pytest.approx(4.0)
    make_beat(store).tick_once(now=T0 + 12_000)  # nothing left to claim: nothing counted
    assert runs_counted("sent") - before["sent"] == 2

    def crash(*_: Any, **__: Any) -> None:
        raise ConnectionError("broker gone")

    monkeypatch.setattr(beat_module, "send_runs", crash)
    with pytest.raises(ConnectionError):
        make_beat(store).tick_once(now=T0 + 20_000)  # claims slot 20 of both, sends none
    assert runs_counted("sent") - before["sent"] == 2
    monkeypatch.setattr(beat_module, "send_runs", lambda _a, runs, producer=None: sent.update(runs))
    make_beat(store, resend_after=5.0).tick_once(now=T0 + 26_000)
    assert runs_counted("resent") - before["resent"] == 2


def test_the_misfire_grace_is_the_beats_flag_else_the_setting() -> None:
    settings = load_settings(redis_url="redis://127.0.0.1:1/0", schedule_misfire_grace=2.5)
    assert misfire_grace_ms({}, settings) == 2_500
    assert misfire_grace_ms({CONF_GRACE: 7}, settings) == 7_000
    assert misfire_grace_ms({CONF_GRACE: 0}, settings) == 0  # a grace of 0, not "unset"
    assert misfire_grace_ms({CONF_GRACE: 0.001}, settings) == 1
