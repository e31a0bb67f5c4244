"""Beat at scale: our Redis scheduler against celery-redbeat on the same Redis.

Both schedulers run in this process, each with its real ``tick()`` and a real Celery
producer on the same broker (run messages really go out; nobody consumes them).

- idle tick: the time of one ``tick()`` with 1k, 10k and 100k schedules stored and
  none due (ours: ``RedisScheduler.tick_once``; redbeat: ``RedBeatScheduler.tick``,
  holding its lock as a running beat does);
- due at once: N more schedules all due at the same instant T0; each beat runs its
  loop (tick, sleep what tick returned) from before T0 until all N are sent. Dispatch
  time is T0 to the last send; lateness is each send's time minus its slot.

Schedules are interval schedules. Ours are written with the same keys as
``ScheduleStore.add`` in pipelines of 1,000; redbeat's with ``RedBeatSchedulerEntry.save()``.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Celery
from celery.schedules import schedule as every

from orchestrator.celery import make_app
from orchestrator.schedules import beat as beat_module
from orchestrator.schedules.beat import RedisScheduler
from orchestrator.schedules.timing import ScheduleRequest, new_schedule
from orchestrator.settings import load_settings
from orchestrator.store.jobs import RedisStore, connect, now_ms
from orchestrator.store.schedule_hash import schedule_to_hash
from orchestrator.store.schedules import ScheduleStore

from .harness import API_KEY, Context, Result, percentile

PREFIX = "bb"
RB_PREFIX = "rb:"
TICKS = 200


def _app(ctx: Context) -> Celery:
    settings = load_settings(
        redis_url=ctx.redis_url, key_prefix=PREFIX, workers_api_url="http://127.0.0.1:9",
        workers_api_key=API_KEY,
    )  # fmt: skip
    app = make_app(settings)
    app.conf.update(redbeat_redis_url=ctx.redis_url, redbeat_key_prefix=RB_PREFIX)
    return app


def add_ours(store: RedisStore, n: int, first_run_ms: int | None, interval_s: int) -> None:
    """n interval schedules; next run at ``first_run_ms`` (or spread over days)."""
    keys, now = store.keys, now_ms()
    request = ScheduleRequest.model_validate(
        {"when": {"type": "interval", "intervalSeconds": interval_s}}
    )
    for start in range(0, n, 1000):
        with store.r.pipeline(transaction=False) as pipe:
            for i in range(start, min(n, start + 1000)):
                first = first_run_ms or now + 86_400_000 + i * 1000
                s = new_schedule(
                    "sch_" + uuid.uuid4().hex, request, input="bench", budget="low",
                    worker_id=None, now_ms=now, first_run_ms=first,
                )  # fmt: skip
                pipe.hset(keys.schedule(s.id), mapping=schedule_to_hash(s))
                pipe.zadd(keys.schedules_all, {s.id: s.created_at})
                pipe.zadd(keys.schedules_due, {s.id: s.next_run_ms})
            pipe.execute()


def add_redbeat(app: Celery, n: int, due: datetime | None, interval_s: int) -> None:
    """n redbeat entries; due at ``due`` (or spread over days), saved one by one."""
    from redbeat import RedBeatSchedulerEntry  # type: ignore[import-untyped]

    now = datetime.now(UTC)
    for i in range(n):
        name = "rb_" + uuid.uuid4().hex
        last = (due - timedelta(seconds=interval_s)) if due else now + timedelta(seconds=i)
        RedBeatSchedulerEntry(
            name, "workers.run_schedule", every(timedelta(seconds=interval_s)),
            args=[name, 0], app=app, last_run_at=last,
        ).save()  # fmt: skip


def redbeat_scheduler(app: Celery) -> Any:
    """A RedBeatScheduler holding its lock, as ``celery beat -S redbeat...`` runs it."""
    from redbeat.schedulers import (  # type: ignore[import-untyped]
        LUA_EXTEND_TO_SCRIPT,
        RedBeatScheduler,
        get_redis,
    )

    # A long lock timeout: this process also writes schedules between ticks, longer
    # than redbeat's default (5 x max_interval); each tick still extends the lock.
    sched = RedBeatScheduler(app=app, max_interval=1.0, lock_timeout=3600)
    client = get_redis(app)
    lock = client.lock(sched.lock_key, timeout=sched.lock_timeout, sleep=1.0)
    lock.lua_extend = client.register_script(LUA_EXTEND_TO_SCRIPT)
    lock.acquire(blocking_timeout=10)
    sched.lock = lock
    return sched


def ours_scheduler(app: Celery, store: RedisStore) -> RedisScheduler:
    sched = RedisScheduler(app=app, lazy=True, max_interval=1.0)
    sched.schedules = ScheduleStore(store)
    return sched


def idle_ticks(tick: Any) -> list[float]:
    out = []
    for _ in range(TICKS):
        t = time.perf_counter()
        tick()
        out.append((time.perf_counter() - t) * 1000)
    return out


@contextlib.contextmanager
def recording_ours(log: list[tuple[int, float]]) -> Iterator[None]:
    real = getattr(beat_module, "send_runs")  # noqa: B009 - patched in and out below

    def send(app: Any, runs: list[tuple[str, int]], producer: Any = None) -> None:
        real(app, runs, producer=producer)
        at = time.time() * 1000
        log.extend((slot, at) for _, slot in runs)

    setattr(beat_module, "send_runs", send)  # noqa: B010
    try:
        yield
    finally:
        setattr(beat_module, "send_runs", real)  # noqa: B010


def run_loop(tick: Any, done: Any, timeout: float) -> None:
    """A beat service loop: tick, sleep what it asks, until ``done()``."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError("the due runs were not all handled in time")
        interval = tick()
        if not done() and interval > 0:
            time.sleep(min(interval, 1.0))


def due_burst(ctx: Context, app: Celery, store: RedisStore, rb: Any, n: int) -> dict[str, Any]:
    lead = 1.5 + n / 20_000  # time to write the schedules before they are due
    out: dict[str, Any] = {}
    # ours
    t0 = now_ms() + int((lead + n / 10_000) * 1000)
    add_ours(store, n, t0, 3600)
    sent_ours: list[tuple[int, float]] = []
    sched = ours_scheduler(app, store)
    with recording_ours(sent_ours):
        # Done when every one was sent or has moved past T0 (a slot reached more than the
        # misfire grace late is counted missed, not sent: catch_up "skip").
        due_key = store.keys.schedules_due

        def handled() -> bool:
            return len(sent_ours) >= n or store.r.zcount(due_key, "-inf", t0) == 0

        run_loop(sched.tick_once, handled, 120 + n / 50)
    out["ours_not_fired"] = n - len(sent_ours)
    late = [at - slot for slot, at in sent_ours]
    out["ours_dispatch_ms"] = max(at for _, at in sent_ours) - t0
    out["ours_late_p99_ms"] = percentile(late, 99)
    # redbeat
    t0_dt = datetime.now(UTC) + timedelta(seconds=lead + n / 2_000)
    add_redbeat(app, n, t0_dt, 3600)
    sent_rb: list[float] = []
    real_apply = rb.apply_async

    def apply_async(entry: Any, *args: Any, **kwargs: Any) -> Any:
        result = real_apply(entry, *args, **kwargs)
        sent_rb.append(time.time() * 1000)
        return result

    rb.apply_async = apply_async
    run_loop(rb.tick, lambda: len(sent_rb) >= n, 120 + n / 20)
    rb.apply_async = real_apply
    t0_ms = t0_dt.timestamp() * 1000
    out["rb_dispatch_ms"] = max(sent_rb) - t0_ms
    out["rb_late_p99_ms"] = percentile([at - t0_ms for at in sent_rb], 99)
    with ctx.redis() as r:
        r.delete("api")  # the run messages nobody consumes
    return out


def scenario(ctx: Context) -> Result:
    sizes = ctx.size([1_000, 10_000, 100_000], [1_000, 5_000])
    bursts = ctx.size([1_000, 10_000], [1_000])
    res = Result(
        "beat",
        "Beat at scale: idle tick and due bursts",
        baseline="celery-redbeat RedBeatScheduler on the same Redis, same schedules",
        params={"idle_ticks_per_rep": TICKS, "schedules": sizes, "due_at_once": bursts,
                "max_interval_s": 1.0, "our_batch": RedisScheduler.batch},
    )  # fmt: skip
    app = _app(ctx)
    store = RedisStore(connect(ctx.redis_url), PREFIX)
    rb = redbeat_scheduler(app)
    ours = ours_scheduler(app, store)
    stored = 0
    idle: dict[int, tuple[list[float], list[float]]] = {}
    for size in sizes:
        add_ours(store, size - stored, None, 86_400)
        add_redbeat(app, size - stored, None, 86_400)
        stored = size
        mine, theirs = [], []
        for _ in range(ctx.reps):
            mine.append(percentile(idle_ticks(ours.tick_once), 50))
            theirs.append(percentile(idle_ticks(rb.tick), 50))
        idle[size] = (mine, theirs)
        m = res.add(f"idle tick @ {size:,} schedules", "ms", mine, theirs,
                    goal="≤ redbeat and ≤ 5 ms")  # fmt: skip
        m.met = m.ratio is not None and m.ratio <= 1 and max(mine) <= 5
    first, last = idle[sizes[0]][0], idle[sizes[-1]][0]
    flat = res.add(
        f"idle tick {sizes[-1]:,} / {sizes[0]:,}", "x",
        [b / a for a, b in zip(first, last, strict=True)],
        [b / a for a, b in zip(idle[sizes[0]][1], idle[sizes[-1]][1], strict=True)],
        goal="flat (≤ 1.5x)",
    )  # fmt: skip
    flat.met = flat.ratio is not None and sorted(flat.ours)[len(flat.ours) // 2] <= 1.5
    for n in bursts:
        runs = [due_burst(ctx, app, store, rb, n) for _ in range(ctx.reps)]
        d = res.add(f"{n:,} due at once: dispatched in", "ms",
                    [r["ours_dispatch_ms"] for r in runs], [r["rb_dispatch_ms"] for r in runs],
                    goal="≤ 1000 ms, none missed" if n == 10_000 else "")  # fmt: skip
        if n == 10_000:
            fired_all = all(r["ours_not_fired"] == 0 for r in runs)
            d.met = sorted(d.ours)[len(d.ours) // 2] <= 1000 and fired_all
        late = [r["ours_late_p99_ms"] for r in runs], [r["rb_late_p99_ms"] for r in runs]
        res.add(f"{n:,} due at once: lateness p99", "ms", *late)
        res.add(f"{n:,} due at once: runs not fired", "runs",
                [r["ours_not_fired"] for r in runs], [0.0 for _ in runs],
                note="slots reached more than the 5 s misfire grace late count as missed "
                "(catch_up skip); redbeat has no grace and sends all")  # fmt: skip
    rb.close()
    store.r.close()
    res.notes.append(
        "idle tick: median of the per-repetition medians of 200 ticks; the due bursts run "
        "on top of the idle schedules"
    )
    return res
