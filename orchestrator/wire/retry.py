"""The retry policy for calls to the Workers API: the one place that decides
whether a failed call is tried again, and after how long. The clients, the typed
errors (``APIStatusError.retryable``), the metrics hook (:func:`retry_reason`) and the
follower's reconnect loops (:class:`Backoff`) all ask this module.

Rules (``shared/reference/wire.md``): retry 408, 409, 429, 5xx and connection errors;
never 400/401/403/404/422. A response header ``x-should-retry: true|false`` overrides
the status. The wait honours ``retry-after-ms`` first, then ``Retry-After`` (seconds or
an HTTP date) when it asks for at most ``max_retry_after`` seconds; otherwise it is
exponential backoff with full jitter, capped at ``max_delay``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

#: The retryable statuses below 500 (every 5xx retries too), with the reason a metric
#: counts their retries under.
RETRY_REASONS: dict[int, str] = {408: "timeout", 409: "conflict", 429: "rate_limited"}
RETRYABLE_STATUSES = frozenset(RETRY_REASONS)


def retryable_status(status: int) -> bool:
    """Whether an HTTP status is worth another attempt (headers aside)."""
    return status in RETRY_REASONS or status >= 500


def retry_reason(status: int) -> str | None:
    """Why an attempt that ended with ``status`` is retried, or None if it is not.

    ``status`` 0 means no answer came (connection error, timeout): always retried.
    """
    if status == 0:
        return "connection"
    if status >= 500:
        return "server_error"
    return RETRY_REASONS.get(status)


def backoff_ceiling(retry: int, initial: float, maximum: float) -> float:
    """The longest wait before retry number ``retry`` (1 first): doubling, capped."""
    return min(maximum, initial * 2.0 ** max(retry - 1, 0))


@dataclass(frozen=True)
class RetryPolicy:
    """How many times, and how patiently, a call is retried.

    ``max_retries`` counts retries, so a call makes at most ``max_retries + 1`` attempts.
    """

    max_retries: int = 5
    initial_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 60.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def should_retry_status(self, status: int, headers: Mapping[str, str]) -> bool:
        """Whether a response with this status and headers is worth another attempt."""
        override = headers.get("x-should-retry", "").strip().lower()
        if override == "true":
            return True
        if override == "false":
            return False
        return retryable_status(status)

    def delay(self, retry: int, headers: Mapping[str, str] | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry)."""
        asked = retry_after(headers or {}, now=datetime.now(UTC))
        if asked is not None and 0 <= asked <= self.max_retry_after:
            return asked
        ceiling = backoff_ceiling(retry, self.initial_delay, self.max_delay)
        # Full jitter keeps a fleet of clients from retrying in lock-step.
        return self.rng.uniform(ceiling / 2, ceiling)


@dataclass
class Backoff:
    """The waits of a loop that retries until it succeeds (a stream reconnect, a store
    read): ``initial`` seconds, doubled after each wait, capped at ``maximum``.

    No jitter, unlike :meth:`RetryPolicy.delay`: the follower's loops never had any.
    """

    initial: float = 0.2
    maximum: float = 5.0
    retries: int = 0

    @property
    def delay(self) -> float:
        """The wait :meth:`next` returns next (for a log line before it)."""
        return backoff_ceiling(self.retries + 1, self.initial, self.maximum)

    def next(self) -> float:
        """The wait before the next attempt; the one after is longer (up to the cap)."""
        wait = self.delay
        self.retries += 1
        return wait

    def reset(self) -> None:
        """Start again from ``initial`` (after a success)."""
        self.retries = 0


def retry_after(headers: Mapping[str, str], *, now: datetime) -> float | None:
    """The wait the server asked for, in seconds, or None if it asked for none."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(float(millis) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - now).total_seconds(), 0.0)
