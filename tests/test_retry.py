"""Pure retry-policy maths: which statuses retry, and how long to wait."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from orchestrator.errors import status_error
from orchestrator.wire.retry import (
    Backoff,
    RetryPolicy,
    retry_after,
    retry_reason,
    retryable_status,
)

NOW = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_retryable_statuses(status: int) -> None:
    assert RetryPolicy().should_retry_status(status, {})


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_caller_errors_never_retry(status: int) -> None:
    assert not RetryPolicy().should_retry_status(status, {})


def test_should_retry_header_overrides_status() -> None:
    policy = RetryPolicy()
    assert policy.should_retry_status(400, {"x-should-retry": "true"})
    assert not policy.should_retry_status(503, {"x-should-retry": "false"})


def test_retry_after_forms() -> None:
    assert retry_after({"retry-after-ms": "1500"}, now=NOW) == 1.5
    # retry-after-ms wins over Retry-After.
    assert retry_after({"retry-after-ms": "100", "retry-after": "9"}, now=NOW) == 0.1
    assert retry_after({"retry-after": "3"}, now=NOW) == 3.0
    date = format_datetime(NOW + timedelta(seconds=7), usegmt=True)
    assert retry_after({"retry-after": date}, now=NOW) == 7.0
    assert retry_after({"retry-after": "soon"}, now=NOW) is None
    assert retry_after({}, now=NOW) is None


def test_delay_honours_server_ask_up_to_cap() -> None:
    policy = RetryPolicy(max_retry_after=60)
    assert policy.delay(1, {"retry-after": "2"}) == 2.0
    # Past the cap the server's ask is ignored for our own backoff.
    assert policy.delay(1, {"retry-after": "3600"}) <= policy.max_delay


def test_backoff_grows_with_jitter_and_caps() -> None:
    policy = RetryPolicy(initial_delay=0.5, max_delay=4.0, rng=random.Random(7))
    for retry, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)]:
        delays = [policy.delay(retry) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered, not lock-step


def test_one_rule_for_retryable_statuses() -> None:
    for status in range(400, 600):
        assert status_error("call", status, {}).retryable == retryable_status(status)
        assert (retry_reason(status) is not None) == retryable_status(status)
        assert RetryPolicy().should_retry_status(status, {}) == retryable_status(status)
    assert retry_reason(0) == "connection"
    assert [retry_reason(s) for s in (408, 409, 429, 503)] == [
        "timeout", "conflict", "rate_limited", "server_error",
    ]  # fmt: skip


def test_backoff_doubles_to_its_cap_and_resets() -> None:
    backoff = Backoff(initial=0.2, maximum=1.0)
    assert backoff.delay == 0.2  # what the next wait will be, for a log line
    assert [backoff.next() for _ in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    assert backoff.next() == 0.2
