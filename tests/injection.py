"""The failure injection tests' parts: a store and a follow store that fail on cue, the
hostile upstream, a runtime on the test's Redis, and jobs taken to a given step."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from orchestrator import runtime as runtime_module
from orchestrator.jobs.follower import Follower
from orchestrator.jobs.model import Job, validate_submission
from orchestrator.ops.redis_server import free_port
from orchestrator.runtime import Runtime
from orchestrator.settings import Settings, load_settings
from orchestrator.store.follows import FollowStore, Pending
from orchestrator.store.jobs import RedisStore, connect
from orchestrator.wire.aclient import AsyncWorkersClient
from workers_tasks import tasks

from .hostile_api import HostileAPI

MiB = 2**20
TENANT = {"tenant": "acme"}


class Injected(RuntimeError):
    """An exception raised in our own code on purpose."""


class FlakyStore(RedisStore):
    """The real store, with a method armed to raise :class:`Injected` ``n`` times, or
    to run a hook first (once: :meth:`before`)."""

    armed: dict[str, int]
    hooks: dict[str, Callable[[], Any]]

    def arm(self, method: str, times: int = 1) -> None:
        self.armed[method] = times

    def before(self, method: str, hook: Callable[[], Any]) -> None:
        self.hooks[method] = hook

    def _trip(self, method: str) -> None:
        hook = self.hooks.pop(method, None)
        if hook is not None:
            hook()
        left = self.armed.get(method, 0)
        if left:
            self.armed[method] = left - 1
            raise Injected(f"injected failure in {method}")

    def count_attempt(self, *args: Any, **kwargs: Any) -> int:
        self._trip("count_attempt")
        return super().count_attempt(*args, **kwargs)

    def get_job(self, *args: Any, **kwargs: Any) -> Any:
        self._trip("get_job")
        return super().get_job(*args, **kwargs)

    def set_submitted(self, *args: Any, **kwargs: Any) -> bool:
        self._trip("set_submitted")
        return super().set_submitted(*args, **kwargs)

    def settle_into(self, *args: Any, **kwargs: Any) -> Any:
        self._trip("settle_into")
        return super().settle_into(*args, **kwargs)

    def record_file(self, *args: Any, **kwargs: Any) -> bool:
        self._trip("record_file")
        return super().record_file(*args, **kwargs)

    def append_updates_into(self, *args: Any, **kwargs: Any) -> int:
        self._trip("append_updates_into")
        return super().append_updates_into(*args, **kwargs)

    def chain_into(self, batch: Any, chain: Any) -> int:
        """Armed as "chain reply": the batch runs, then its reply is lost (raises)."""
        self._trip("chain_into")
        at = super().chain_into(batch, chain)
        if self.armed.get("chain reply"):
            sent = batch.execute

            def lost(**kwargs: Any) -> list[Any]:
                sent(**kwargs)
                self._trip("chain reply")
                return []

            batch.execute = lost
        return at


class FlakyFollows(FollowStore):
    """The follower's real store; its update writes fail ``fail_writes`` times, and
    ``before_write`` runs (once) before the first."""

    fail_writes = 0
    before_write: Callable[[], Any] | None = None

    async def append_updates(
        self, pending: Pending, maxlen: int, running: Sequence[str] = ()
    ) -> list[Any]:
        hook, self.before_write = self.before_write, None
        if hook is not None:
            hook()
        if self.fail_writes:
            self.fail_writes -= 1
            raise Injected("injected failure in append_updates")
        return await super().append_updates(pending, maxlen, running)


@pytest.fixture(scope="module")
def api() -> Iterator[HostileAPI]:
    with HostileAPI(event_gap=0.005) as server:
        server.drip_seconds = 0.2
        yield server


def settings_for(
    redis_url: str, prefix: str, url: str, files: Path, quick_relay: float = 0.0
) -> Settings:
    """The runtime's settings; the create task hands every stream to the followers
    (whose faults these tests inject) unless ``quick_relay`` says otherwise."""
    return load_settings(
        redis_url=redis_url, key_prefix=prefix, files_dir=files, workers_api_url=url,
        workers_api_key="sk-injection", max_retries=1, retry_initial_delay=0.01,
        retry_max_delay=0.02, http_deadline=0.6, file_deadline=1.0, file_max_bytes=MiB,
        task_max_retries=1, stream_max_parse_failures=2, stream_read_timeout=0.5,
        files_max_per_turn=25, quick_relay_seconds=quick_relay,
    )  # fmt: skip


@pytest.fixture
def make_rt(
    redis_url: str, key_prefix: str, api: HostileAPI, tmp_path: Path, monkeypatch: Any
) -> Iterator[Any]:
    """``make_rt(url=...)``: a runtime over a :class:`FlakyStore`, installed as the
    process runtime the task functions use; the tenant has 1 slot and a cap."""
    made: list[Runtime] = []

    def make(url: str | None = None, quick_relay: float = 0.0) -> Runtime:
        files = tmp_path / "files"
        settings = settings_for(redis_url, key_prefix, url or api.url, files, quick_relay)
        store = FlakyStore(connect(redis_url), key_prefix)
        store.armed, store.hooks = {}, {}
        rt = Runtime(settings, store)
        rt.limits.set("tag:tenant=acme", 1)
        rt.budgets.set_cap(scope="tag:tenant=acme", limit_usd=Decimal("100"))
        monkeypatch.setattr(runtime_module, "_runtime", rt)
        made.append(rt)
        return rt

    yield make
    for rt in made:
        rt.close()


DEAD = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused


def submit(rt: Runtime, text: str, **fields: Any) -> Job:
    sub = validate_submission(10_000, input=text, tags=TENANT, budget="low", **fields)
    job, _ = rt.store.create_job(sub)
    rt.store.mark_sending(job.id)
    rt.store.mark_sent(job.id)
    return job


def follow(
    rt: Runtime, job_id: str, *, fail_writes: int = 0, seconds: float = 60,
    before_write: Callable[[], Any] | None = None,
) -> list[str]:  # fmt: skip
    """Run a real follower (in this process) until the job's turn is finalized, or for
    ``seconds`` at most; finalize runs through its task function. Its outcomes.
    ``before_write`` runs before the follower's first update write."""
    outcomes: list[str] = []
    settings = rt.settings
    assert settings.redis_url is not None

    async def run() -> None:
        follows = FlakyFollows.from_url(settings.redis_url or "", settings.key_prefix)
        follows.fail_writes = fail_writes
        follows.before_write = before_write
        done, stop = asyncio.Event(), asyncio.Event()

        async def finished(finished_id: str) -> None:
            result = await asyncio.to_thread(tasks.finalize.apply, args=[finished_id])
            outcomes.append(str(result.result))
            if outcomes[-1] != "refollow":
                done.set()

        async with AsyncWorkersClient.from_settings(settings) as client:
            follower = Follower(follows, client, finished, poll_seconds=0.05, lease_seconds=2,
                                max_parse_failures=settings.stream_max_parse_failures)  # fmt: skip
            task = asyncio.create_task(follower.run(stop))
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), seconds)
            finally:
                stop.set()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, 10)
                await follows.close()

    asyncio.run(run())
    return outcomes


def started(rt: Runtime, text: str, **fields: Any) -> Job:
    """A job whose create step ran through its task: returns it as stored."""
    job = submit(rt, text, **fields)
    tasks.create.apply(args=[job.id])
    return rt.store.require_job(job.id)


def error_of(rt: Runtime, job_id: str) -> str:
    return str(rt.store.require_job(job_id).error)


def streamed(rt: Runtime, text: str, **fields: Any) -> Job:
    """A submitted job whose stream the upstream has served whole (its turn is over)."""
    job = started(rt, text, **fields)
    assert job.status == "submitted" and job.worker_id is not None
    list(rt.client.stream_updates(job.worker_id))
    return job
