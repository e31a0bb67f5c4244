"""Real processes for end-to-end tests: what :mod:`orchestrator.ops.processes` offers,
plus the tests' own flavour (quick retries; a timed-out wait is a failed assertion)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from orchestrator.ops import processes
from orchestrator.ops.processes import Proc, broker_depth, celery_beat, celery_worker

__all__ = ["Proc", "broker_depth", "celery_beat", "celery_worker", "stack_env", "wait_for"]

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``predicate`` until truthy; fail the test (AssertionError) after ``timeout``."""
    try:
        return processes.wait_for(predicate, timeout, what, every=interval)
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None


def stack_env(
    redis_url: str, prefix: str, api_url: str, api_key: str, **extra: str
) -> dict[str, str]:
    """A test deployment's environment: quick retries, so injected faults cost little time."""
    return processes.deployment_env(
        redis_url, prefix, api_url, api_key, **{**processes.QUICK_RETRIES, **extra}
    )
