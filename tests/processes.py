"""Real processes for end-to-end tests: what :mod:`orchestrator.ops.processes` offers,
plus the tests' own flavour (quick retries; a timed-out wait is a failed assertion)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from orchestrator.ops import processes
from orchestrator.ops.processes import Proc, broker_depth, celery_beat, celery_worker
from orchestrator.ops.redis_server import free_port
from orchestrator.ops.stack import BIND_FAILED, PORT_ATTEMPTS

__all__ = [
    "Proc",
    "async_wait_for",
    "broker_depth",
    "celery_beat",
    "celery_worker",
    "joined",
    "stack_env",
    "start_on_a_free_port",
    "wait_for",
]

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``predicate`` until truthy; fail the test (AssertionError) after ``timeout``."""
    try:
        return processes.wait_for(predicate, timeout, what, every=interval)
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None


async def async_wait_for(
    predicate: Callable[[], Awaitable[T]], timeout: float, what: str, interval: float = 0.01
) -> T:
    """:func:`wait_for` inside an event loop: await ``predicate`` until truthy (other
    tasks run meanwhile); fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (value := await predicate()):
        assert time.monotonic() < deadline, f"timed out after {timeout:g}s waiting for {what}"
        await asyncio.sleep(interval)
    return value


def start_on_a_free_port(
    proc_for: Callable[[int], Proc], timeout: float = 60.0
) -> tuple[Proc, int]:
    """Start ``proc_for(port)`` on a port picked free and wait until it is ready; the
    process and its port. Picks again if another process binds that port first."""
    for attempt in range(PORT_ATTEMPTS):
        port = free_port()
        proc = proc_for(port)
        try:
            return proc.start(timeout=timeout), port
        except RuntimeError:  # it exited
            if attempt == PORT_ATTEMPTS - 1 or BIND_FAILED not in proc.launch_text().lower():
                raise
        except BaseException:  # not ready in time: nothing of it outlives the test
            proc.stop()
            raise
    raise AssertionError("not reached")


def joined(thread: threading.Thread, timeout: float = 30.0) -> None:
    """Join ``thread``; fail the test if it is still running after ``timeout``."""
    thread.join(timeout)
    assert not thread.is_alive(), f"thread {thread.name} still running after {timeout:g}s"


def stack_env(
    redis_url: str, prefix: str, api_url: str, api_key: str, **extra: str
) -> dict[str, str]:
    """A test deployment's environment: quick retries, so injected faults cost little time."""
    return processes.deployment_env(
        redis_url, prefix, api_url, api_key, **{**processes.QUICK_RETRIES, **extra}
    )
