"""Profiles and what-if experiments behind the hot spots in ``RESULTS.md``.

    python -m bench.profile spy           # a worker running jobs under py-spy: CPU per job by step
    python -m bench.profile spy-baseline  # the same for the hand-written task
    python -m bench.profile pipeline      # CPU per job, step by step, with cProfile tops
    python -m bench.profile steps         # instant turns settled by their create step: CPU by phase
    python -m bench.profile dispatch      # dispatch latency split: caller vs create step
    python -m bench.profile send          # send_task cost, with and without task-sent events
    python -m bench.profile beat-batch    # 10k due: 100 runs a message vs one a slot
    python -m bench.profile follow-burst  # a claim of 300 streams at once, default Redis pool

Each starts its own Redis (and emulator where needed) and prints its findings; none
changes the orchestrator: experiments patch or subclass it inside this process only.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import inspect
import io
import pstats
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from orchestrator.ops.redis_server import RedisServer

from .harness import Context
from .spy import spy, spy_baseline


def _top(profile: cProfile.Profile, n: int = 14) -> str:
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(n)
    lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
    return "\n".join(ln[:150] for ln in lines[4:])


def _cpu(step: Callable[[], Any], n: int, label: str, show: bool) -> float:
    profile = cProfile.Profile()
    t = time.process_time()
    profile.enable()
    step()
    profile.disable()
    per = (time.process_time() - t) * 1000 / n
    print(f"\n== {label}: {per:.2f} ms CPU per job (under cProfile)")
    if show:
        print(_top(profile))
    return per


def pipeline(ctx: Context, n: int = 300) -> None:
    """Each step of a job's life, in this process, without Celery: CPU per job."""
    from orchestrator.facade import Orchestrator
    from orchestrator.jobs import steps
    from orchestrator.jobs.follower import Follower
    from orchestrator.settings import load_settings
    from orchestrator.store.follows import FollowStore
    from orchestrator.wire.aclient import AsyncWorkersClient

    from .harness import API_KEY

    _, url = ctx.emulator("profile-emulator")
    settings = load_settings(
        redis_url=ctx.redis_url, key_prefix="bp", workers_api_url=url, workers_api_key=API_KEY
    )
    orch = Orchestrator(settings)
    ids: list[str] = []
    _cpu(lambda: ids.extend(orch.submit(f"p {i}").id for i in range(n)), n, "submit()", True)
    # start_turn(rt, app, job_id) (older: start_turn(rt, job_id))
    takes_app = len(inspect.signature(steps.start_turn).parameters) == 3
    start: Any = (
        partial(steps.start_turn, orch.rt, orch.app)
        if takes_app
        else partial(steps.start_turn, orch.rt)
    )
    _cpu(lambda: [start(j) for j in ids], n, "create step", True)

    async def follow() -> None:
        import redis.asyncio as aioredis

        # A pool large enough for every stream at once (see follow-burst).
        r = aioredis.Redis.from_url(ctx.redis_url, decode_responses=True, max_connections=n + 50)
        # The streams worker's client: pools of about 50 connections (capacity 2000).
        client = AsyncWorkersClient(url, API_KEY, max_connections=2050, pool_shards=40)
        done: set[str] = set()

        async def finished(job_id: str) -> None:
            done.add(job_id)

        follower = Follower(FollowStore(r, "bp"), client, finished, poll_seconds=0.02)
        stop = asyncio.Event()
        task = asyncio.create_task(follower.run(stop))
        while len(done) < n:
            await asyncio.sleep(0.01)
        stop.set()
        await task
        await client.aclose()
        await r.aclose()

    _cpu(lambda: asyncio.run(follow()), n, "follow (10 events)", True)
    _cpu(lambda: [steps.finalize(orch.rt, orch.app, j) for j in ids], n, "finalize step", True)
    orch.close()


_REAL_SEND: list[Any] = []


def _count_round_trips(stop: bool = False) -> list[int]:
    """Count redis-py's sends (one a round trip: a pipeline or a script counts once) in
    the list returned, until called again with ``stop``."""
    import redis.connection

    conn = redis.connection.AbstractConnection
    if stop:
        conn.send_packed_command = _REAL_SEND.pop()  # type: ignore[method-assign]
        return []
    sent = [0]
    real = conn.send_packed_command
    _REAL_SEND.append(real)

    def counted(self: Any, command: Any, check_health: bool = True) -> None:
        sent[0] += 1
        real(self, command, check_health)  # type: ignore[no-untyped-call]

    conn.send_packed_command = counted  # type: ignore[method-assign]
    return sent


def quick_steps(ctx: Context, n: int = 300, rounds: int = 5) -> None:
    """An instant turn settled by its create step (what a create task does), in this
    process without Celery: thread CPU a job of each phase, Redis round trips and
    Python calls a job (these two do not move with the load)."""

    from orchestrator.facade import Orchestrator
    from orchestrator.jobs import quick, steps
    from orchestrator.settings import load_settings

    from .harness import API_KEY

    _, url = ctx.emulator("steps-emulator")
    settings = load_settings(
        redis_url=ctx.redis_url, key_prefix="bq", workers_api_url=url, workers_api_key=API_KEY
    )
    orch = Orchestrator(settings)
    rt, app = orch.rt, orch.app
    sent = _count_round_trips()
    phases: dict[str, list[float]] = {"begin": [], "relay and settle here": []}
    profile = cProfile.Profile()
    for r in range(rounds + 2):  # the first round warms up, the last is profiled
        ids = [orch.submit(f"s {i}", tags={"tenant": f"t{i % 10}"}).id for i in range(n)]
        spent = dict.fromkeys(phases, 0.0)
        trips = sent[0]
        if r == rounds + 1:
            profile.enable()
        for job_id in ids:
            t0 = time.thread_time()
            job, worker = steps.call_upstream(rt, app, job_id)
            t1 = time.thread_time()
            assert worker is not None
            assert quick.relay_here(rt, app, job, worker) == "completed"
            t2 = time.thread_time()
            for name, took in zip(phases, (t1 - t0, t2 - t1), strict=True):
                spent[name] += took
        profile.disable()
        if 0 < r <= rounds:
            for name in phases:
                phases[name].append(spent[name] * 1000 / n)
    _count_round_trips(stop=True)
    for name, values in phases.items():
        values.sort()
        median, best = values[len(values) // 2], values[0]
        print(f"{name}: median {median:.3f} ms, best {best:.3f} ms CPU a job")
    print(f"Redis round trips a job: {(sent[0] - trips) / n:.2f}; "
          f"Python calls a job: {pstats.Stats(profile).total_calls / n:,.0f}")  # type: ignore[attr-defined]  # fmt: skip
    orch.close()


def dispatch(ctx: Context, n: int = 300) -> None:
    """Where dispatch latency goes, without Celery: submit() in the caller, then the
    create step from its start to the request reaching the emulator; Redis commands each."""
    from orchestrator.facade import Orchestrator
    from orchestrator.jobs import steps
    from orchestrator.settings import load_settings

    from .harness import API_KEY, arrivals, percentile

    _, url = ctx.emulator("dispatch-emulator")
    settings = load_settings(
        redis_url=ctx.redis_url, key_prefix="bp", workers_api_url=url, workers_api_key=API_KEY
    )
    orch = Orchestrator(settings)
    takes_app = len(inspect.signature(steps.start_turn).parameters) == 3

    sent = _count_round_trips()

    def commands() -> int:
        return sent[0]

    submit_ms, create_ms, submit_cmds, create_cmds = [], [], [], []
    for i in range(n + 20):
        c0 = commands()
        t0 = time.perf_counter()
        job = orch.submit(f"d {i}")
        t1 = time.perf_counter()
        c1 = commands()
        started = time.time()
        start: Any = steps.start_turn
        start(*((orch.rt, orch.app) if takes_app else (orch.rt,)), job.id)
        c2 = commands()
        arrived = arrivals(url)[job.id]
        if i >= 20:
            submit_ms.append((t1 - t0) * 1000)
            create_ms.append((arrived - started) * 1000)
            submit_cmds.append(c1 - c0)
            create_cmds.append(c2 - c1)
        time.sleep(0.005)
    print(
        f"submit(): p50 {percentile(submit_ms, 50):.2f} ms in the caller, "
        f"{percentile(submit_cmds, 50):.0f} Redis round trips (broker publishes included)"
    )
    print(f"create step start -> request at the emulator: p50 {percentile(create_ms, 50):.2f} ms; "
          f"the whole step makes {percentile(create_cmds, 50):.0f} Redis round trips")  # fmt: skip
    _count_round_trips(stop=True)
    orch.close()


def send(ctx: Context, n: int = 2000) -> None:
    """What one send_task costs a producer, with and without the task-sent event."""
    from orchestrator.celery import make_app
    from orchestrator.settings import load_settings

    settings = load_settings(redis_url=ctx.redis_url, workers_api_url="http://x",
                             workers_api_key="k")  # fmt: skip
    for sent_event in (True, False):
        app = make_app(settings)
        app.conf.task_send_sent_event = sent_event
        with app.producer_or_acquire() as producer:
            for i in range(50):
                app.send_task("workers.run_schedule", args=["sch_x", i], producer=producer)
            t = time.perf_counter()
            for i in range(n):
                app.send_task("workers.run_schedule", args=["sch_x", i], producer=producer)
            per = (time.perf_counter() - t) * 1000 / n
        print(f"send_task, task_send_sent_event={sent_event}: {per:.3f} ms per message")
        with ctx.redis() as r:
            r.delete("api")


def beat_batch(ctx: Context, n: int = 10_000) -> None:
    """10k due at once: our beat as is (100 runs a message), without task-sent events,
    and the way it was before (one message a slot, ``send_run``)."""
    from orchestrator.schedules.beat import RedisScheduler
    from orchestrator.schedules.run import send_run
    from orchestrator.store.jobs import RedisStore, connect, now_ms
    from orchestrator.store.schedules import ScheduleStore, split_member

    from . import beat_scale

    class PerSlot(RedisScheduler):
        def _send(self, members: list[str]) -> None:
            assert self.schedules is not None
            with self.app.producer_or_acquire() as producer:
                for member in members:
                    send_run(self.app, *split_member(member), producer=producer)
            self.schedules.sent(members)
            self.stats["sent"] += len(members)

    app = beat_scale._app(ctx)
    store = RedisStore(connect(ctx.redis_url), beat_scale.PREFIX)
    for label, cls, sent_event in (
        ("as is, 100 runs a message", RedisScheduler, True),
        ("no task-sent events", RedisScheduler, False),
        ("one message a slot", PerSlot, True),
    ):
        app.conf.task_send_sent_event = sent_event
        due_at = now_ms() - 1
        beat_scale.add_ours(store, n, due_at, 3600)
        sched = cls(app=app, lazy=True, max_interval=1.0)
        sched.schedules = ScheduleStore(store)
        t = time.perf_counter()
        while (
            store.r.zcount(store.keys.schedules_due, "-inf", due_at)
            and time.perf_counter() - t < 120
        ):
            sched.tick_once()
        sent = sched.stats["sent"]
        print(f"beat, {n:,} due, {label}: sent {sent:,} (missed {n - sent:,}) in "
              f"{(time.perf_counter() - t) * 1000:.0f} ms")  # fmt: skip
        with ctx.redis() as r:
            r.delete("api")
            r.delete(store.keys.schedules_due)
    store.r.close()


def follow_burst(ctx: Context, n: int = 300) -> None:
    """A follower that claims n jobs at once, with the streams worker's Redis client
    (redis-py's default pool): how many follow tasks die, and how long the streams take."""
    import redis.asyncio as aioredis

    from orchestrator.jobs.follower import Follower
    from orchestrator.store.follows import FollowStore
    from orchestrator.wire.aclient import AsyncWorkersClient

    from . import streams
    from .harness import API_KEY

    _, url = ctx.emulator("burst-emulator", 0.0, 10)
    for pool in (None, n + 50):
        streams._create(ctx.redis_url, url, n, 50)  # n jobs, due to be followed now

        async def run(pool: int | None = pool) -> tuple[int, float, int]:
            died: list[BaseException] = []
            loop = asyncio.get_running_loop()
            loop.set_exception_handler(lambda _, c: died.append(c.get("exception")))  # type: ignore[arg-type]
            options: dict[str, Any] = {"max_connections": pool} if pool else {}
            r = aioredis.Redis.from_url(ctx.redis_url, decode_responses=True, **options)
            client = AsyncWorkersClient(url, API_KEY)
            done: set[str] = set()

            async def finished(job_id: str) -> None:
                done.add(job_id)

            follower = Follower(FollowStore(r, streams.PREFIX), client, finished, lease_seconds=5)
            stop = asyncio.Event()
            t = time.perf_counter()
            task = asyncio.create_task(follower.run(stop))
            while len(done) < n and time.perf_counter() - t < 60:
                await asyncio.sleep(0.01)
            took = time.perf_counter() - t
            stop.set()
            await task
            await client.aclose()
            await r.aclose()
            return len(died), took, len(done)

        died, took, done = asyncio.run(run())
        label = f"max_connections={pool}" if pool else "redis-py default pool"
        print(f"claim burst of {n}, {label}: {died} follow tasks died, "
              f"{done} streams done in {took:.1f} s (lease 5 s)")  # fmt: skip
        ctx.flush()


TARGETS = {
    "spy": spy,
    "spy-baseline": spy_baseline,
    "pipeline": pipeline,
    "steps": quick_steps,
    "dispatch": dispatch,
    "send": send,
    "beat-batch": beat_batch,
    "follow-burst": follow_burst,
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("target", choices=list(TARGETS))
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    with RedisServer(appendonly=False) as server:
        ctx = Context(server.url, False, logs, logs)
        try:
            TARGETS[args.target](ctx)
        finally:
            ctx.stop_all()


if __name__ == "__main__":
    main()
