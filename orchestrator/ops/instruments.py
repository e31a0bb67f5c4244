"""Process-local Prometheus instruments, in the default registry: each process exports
its own, if it serves them. The clients, the follower, beat and the fleet rate limiter
update them as they work; nothing here reads the store (for the figures read from Redis
on each scrape see :mod:`orchestrator.ops.collector`).

- :data:`UPSTREAM_LATENCY` and :data:`UPSTREAM_RETRIES`, both fed by
  :func:`record_attempt` (the clients' ``on_attempt`` hook);
- :data:`EVENTS_RELAYED`, :data:`QUICK_READS`, :data:`SCHEDULE_RUNS`, :data:`SCHEDULE_LATENESS`,
  :data:`RATE_LIMIT_WAITS`, :data:`COST_ANOMALIES` and :data:`JOBS_ENDED_HERE`.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from orchestrator.wire.retry import retry_reason

__all__ = [
    "COST_ANOMALIES",
    "EVENTS_RELAYED",
    "JOBS_ENDED_HERE",
    "QUICK_READS",
    "RATE_LIMIT_WAITS",
    "SCHEDULE_LATENESS",
    "SCHEDULE_RUNS",
    "UPSTREAM_LATENCY",
    "UPSTREAM_RETRIES",
    "record_attempt",
    "retry_reason",
]

UPSTREAM_LATENCY = Histogram(
    "orchestrator_upstream_request_duration_seconds",
    "Duration of each attempt of a call to the Workers API, by call and HTTP status "
    "(status 0: no answer).",
    ["call", "status"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0),
)
UPSTREAM_RETRIES = Counter(
    "orchestrator_upstream_retries_total",
    "Attempts of a Workers API call that failed in a way the retry policy retries, by reason.",
    ["call", "reason"],
)
EVENTS_RELAYED = Counter(
    "orchestrator_stream_events_relayed_total",
    "Update-stream events stored (each once) by this process.",
)
QUICK_READS = Counter(
    "orchestrator_quick_reads_total",
    "New turns' streams a create task read itself, by outcome: ended (within "
    "QUICK_RELAY_SECONDS: stored and settled by the task), ran_on (handed to the "
    "followers), skipped (recent turns ran on: sent to the followers unread).",
    ["outcome"],
)
SCHEDULE_RUNS = Counter(
    "orchestrator_schedule_runs_total",
    "Schedule slots this beat put on the broker, by outcome: sent (claimed here), resent "
    "(a claim a dead beat left unsent), released (a run buffered behind its previous job).",
    ["outcome"],
)
RATE_LIMIT_WAITS = Counter(
    "orchestrator_rate_limit_waits_total",
    "Times a request waited for the fleet-wide rate limit or a 429 pause.",
)
COST_ANOMALIES = Counter(
    "orchestrator_cost_anomalies_total",
    "Turns whose upstream cumulative cost or usage figure fell below what was already "
    "counted (nothing posted for that field; see orchestrator reconcile), by field.",
    ["field"],
)
JOBS_ENDED_HERE = Counter(
    "orchestrator_jobs_ended_here_total",
    "Jobs this process ended itself, by end state: cancelled (by a user), expired (not "
    "started upstream within its queue time-to-live), timed_out (idle timeout or deadline).",
    ["state"],
)
SCHEDULE_LATENESS = Histogram(
    "orchestrator_schedule_lateness_seconds",
    "How long after its due time a schedule slot was fired.",
    buckets=(0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0),
)


def record_attempt(call: str, status: int, seconds: float) -> None:
    """The clients' ``on_attempt`` hook: observe one attempt's latency, count a retry.

    ``status`` is the HTTP status, or 0 when no answer came (connection error, timeout).
    A retryable failure is counted in :data:`UPSTREAM_RETRIES` whether or not the
    client has retries left, so the counter measures how often the upstream misbehaves.
    Pass it as ``WorkersClient(..., on_attempt=record_attempt)``.
    """
    UPSTREAM_LATENCY.labels(call=call, status=str(status)).observe(max(seconds, 0.0))
    reason = retry_reason(status)
    if reason is not None:
        UPSTREAM_RETRIES.labels(call=call, reason=reason).inc()
