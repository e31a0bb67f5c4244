"""Runs the async stream follower inside every worker process that consumes the
``streams`` queue: a daemon thread with its own event loop, started when the worker is
ready and stopped when it shuts down. Turns whose stream ended are finalized here too,
in a few threads beside the loop; and the outbox relay (``jobs.relay``) sends the first
tasks of the jobs the gateway stores, in a thread of its own."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celery.signals import worker_process_init, worker_ready, worker_shutdown

from orchestrator import runtime
from orchestrator.celery import STREAMS_QUEUE, app
from orchestrator.controls.limits import AsyncFleetRate
from orchestrator.jobs import relay
from orchestrator.jobs.follower import Follower
from orchestrator.ops.gctune import tune_gc
from orchestrator.ops.instruments import record_attempt
from orchestrator.store.jobs import now_ms
from orchestrator.wire.aclient import AsyncWorkersClient

log = logging.getLogger(__name__)

_state: dict[str, Any] = {}

#: Threads that finalize turns beside the event loop (each a retrieve call and a few
#: Redis round trips).
FINALIZE_THREADS = 4


async def _main(stop: asyncio.Event, ready: threading.Event) -> None:
    settings = runtime.get_settings()
    # One async connection pool for the process: the follows store and the rate limit.
    follows = runtime.follows_for(settings)
    throttle = None
    if settings.fleet_rate_per_second is not None:
        throttle = AsyncFleetRate(
            follows.rate_store(),
            settings.fleet_rate_per_second,
            settings.fleet_rate_burst,
        )
    # Small connection pools (see AsyncWorkersClient): about 50 streams each.
    client = AsyncWorkersClient.from_settings(
        settings,
        max_connections=settings.follower_capacity + 50,
        pool_shards=max(1, settings.follower_capacity // 50),
        on_attempt=record_attempt,
        throttle=throttle,
    )
    loop = asyncio.get_running_loop()
    settlers = ThreadPoolExecutor(max_workers=FINALIZE_THREADS, thread_name_prefix="finalize")

    async def finished(job_id: str) -> None:
        # Blocking HTTP and Redis: in a thread, never on the event loop. The follow task
        # (and so its lease) lives until this returns.
        await loop.run_in_executor(settlers, settle, job_id)

    follower = Follower(
        follows,
        client,
        finished,
        capacity=settings.follower_capacity,
        lease_seconds=settings.follow_lease_seconds,
        updates_maxlen=settings.updates_maxlen,
        max_parse_failures=settings.stream_max_parse_failures,
    )
    _state["follower"] = follower
    ready.set()
    log.info("stream follower %s started (capacity %d)", follower.owner, follower.capacity)
    housekeeping = asyncio.create_task(_housekeeping(stop))
    ends = asyncio.create_task(_end_sweep(stop))
    try:
        await follower.run(stop)
    finally:
        housekeeping.cancel()
        ends.cancel()
        settlers.shutdown(wait=True)
        await client.aclose()
        await follows.close()


def settle(job_id: str) -> None:
    """Finalize a turn whose stream ended, here in the streams worker.

    Settling in place saves each job a Celery round trip (python -m bench throughput:
    67.7 -> 92 jobs/s, worker CPU per job 13.2 -> 8.8 ms). When it fails (the API or
    Redis away) the ``workers.finalize`` task takes over with its retry policy; if the
    process dies first, the lease lapses and the follower that claims the job again
    replays the stream and settles it (finalize is idempotent).
    """
    from orchestrator.jobs import steps as pipeline

    rt = runtime.get_runtime()
    try:
        outcome = pipeline.finalize(rt, app, job_id)
    except Exception as exc:
        log.info("finalize of %s failed here (%s); sending the finalize task", job_id, exc)
        _send_finalize(rt, job_id)
    else:
        # A completed job says so in its record: its line is for debugging only.
        level = logging.DEBUG if outcome == "completed" else logging.INFO
        log.log(level, "finalized %s: %s", job_id, outcome)
        if outcome != "completed" and pipeline.ended_unfinished(rt, job_id) is not None:
            # Ended here, outside any task (a broken stream, a bad figure, a limit): the
            # finalize task, a no-op now, fails in Flower with the reason.
            _send_finalize(rt, job_id)


def _send_finalize(rt: runtime.Runtime, job_id: str) -> None:
    from orchestrator.jobs import steps as pipeline

    job = rt.store.get_job(job_id)
    shown = pipeline.describe(job) if job is not None else job_id
    app.send_task("workers.finalize", args=[job_id], argsrepr=shown)


async def _housekeeping(stop: asyncio.Event) -> None:
    """Periodic repairs that need no beat: re-send jobs a dead producer left unsent or
    whose task the broker lost, wake jobs whose budget period began, reclaim holds of
    jobs that died and slots of jobs whose record is gone, drop expired jobs from the
    indexes expiry cannot reach; with ARCHIVE_DIR, archive finished jobs every
    ARCHIVE_INTERVAL_SECONDS."""
    from orchestrator.jobs import files as fetching
    from orchestrator.jobs import sweeps
    from workers_tasks.schedule_tasks import resend_lost_runs

    loop = asyncio.get_running_loop()
    after = runtime.get_settings().resend_after_seconds
    every = min(15.0, after / 2)

    def repairs() -> None:
        rt = runtime.get_runtime()
        sweeps.resend_unsent(app, rt, after)
        sweeps.resend_lost(app, rt, after)
        fetching.resend_lost_files(app, rt, after)
        resend_lost_runs(rt, after)
        sweeps.release_budget_waiters(app, rt)
        rt.budgets.reclaim(int(rt.settings.hold_reclaim_seconds * 1000))
        sweeps.reclaim_gone_slots(app, rt)
        rt.store.prune_expired(now_ms())
        rt.store.prune_indexes()
        if archive is None:
            release_unarchived(rt.store)

    from orchestrator.ops.archive import ArchiveDir, archive_pass, release_unarchived

    archive_dir = runtime.get_settings().archive_dir
    archive = None if archive_dir is None else ArchiveDir(archive_dir)

    def archiving() -> None:
        assert archive is not None
        while archive_pass(runtime.get_runtime().store, archive) == 500:
            pass  # a backlog: keep going until the queue is short

    if archive is not None:
        every = min(every, runtime.get_settings().archive_interval_seconds)
    last_repairs = float("-inf")
    while not stop.is_set():
        try:
            if archive is not None:
                await loop.run_in_executor(None, archiving)
            if loop.time() - last_repairs >= min(15.0, after / 2):
                last_repairs = loop.time()
                await loop.run_in_executor(None, repairs)
        except Exception as exc:  # keep going: Redis may be briefly away
            log.warning("housekeeping failed: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


async def _end_sweep(stop: asyncio.Event) -> None:
    """End the jobs whose queue time-to-live, idle timeout or deadline passed, and settle
    the turns of jobs ended here once they end upstream (``lifecycle.sweep``); send the
    webhook deliveries due (``delivery.send_due``). It wakes when the next entry of
    either falls due (at most 1 s apart when idle, 5 s after an error)."""
    from orchestrator.hooks import delivery
    from orchestrator.jobs import lifecycle

    loop = asyncio.get_running_loop()

    def once() -> float:
        rt = runtime.get_runtime()
        counts = lifecycle.sweep(app, rt)
        if counts:
            log.info("end sweep: %s", counts)
        delivery.send_due(app, rt.store)
        pause = lifecycle.sweep_pause(rt)
        wake = delivery.next_due(rt.store)
        if wake is not None:
            pause = min(pause, max((wake - now_ms()) / 1000, 0.1))
        return pause

    while not stop.is_set():
        pause = 5.0
        try:
            pause = await loop.run_in_executor(None, once)
        except Exception as exc:  # keep going: Redis or the API may be briefly away
            log.warning("end sweep failed: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), pause)


def start() -> None:
    """Start the follower thread (idempotent)."""
    if "thread" in _state:
        return
    tune_gc()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    ready = threading.Event()

    def target() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(_main(stop, ready))

    thread = threading.Thread(target=target, name="stream-follower", daemon=True)
    _state.update(thread=thread, loop=loop, stop=stop)
    thread.start()
    ready.wait(timeout=10)
    # The outbox relay: sends the first tasks of the jobs the gateway stores.
    _state["relay"] = relay.start(app)


def stop() -> None:
    thread, loop, stop_event = _state.get("thread"), _state.get("loop"), _state.get("stop")
    if thread is None:
        return
    relay_thread, relay_stop = _state["relay"]
    relay_stop.set()
    loop.call_soon_threadsafe(stop_event.set)
    thread.join(timeout=10)
    relay_thread.join(timeout=relay.WAIT_SECONDS + 5)
    _state.clear()


@worker_process_init.connect
def _after_fork(**_: Any) -> None:
    runtime.reset()


@worker_ready.connect
def _on_ready(sender: Any = None, **_: Any) -> None:
    queues = {q.name for q in getattr(sender.task_consumer, "queues", [])} if sender else set()
    if STREAMS_QUEUE in queues:
        start()


@worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    stop()
