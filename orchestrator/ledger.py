"""Cost and usage maths: what a Worker snapshot says was spent, as integer fields.

The upstream reports cumulative ``costs`` (USD) and ``usage`` per worker. A turn's cost
is the difference between the cumulative figures after it and those already counted;
:mod:`orchestrator.store.scripts.jobs` (POST_TURN) applies that difference atomically.
This module, pure maths, says which fields are money and usage, turns a snapshot into
those integer fields, and names the ledger rows a turn adds to.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from orchestrator.money import to_micro
from orchestrator.wire.models import Worker

if TYPE_CHECKING:
    from orchestrator.jobs.model import Job

# The one list of which ledger fields are money and which are usage. Lua that sums or
# compares fields receives them from here (ARGV), never a list of its own.
#: The four cost components; their sum is a turn's money.
COST_FIELDS = (
    "internal_cost_micro",
    "model_cost_micro",
    "sandbox_cost_micro",
    "tool_cost_micro",
)
#: Every money field: the components and the usage cost (the upstream's own sum of them).
MONEY_FIELDS = (*COST_FIELDS, "usage_cost_micro")
TOKEN_FIELDS = (
    "input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "total_tokens",
    "steps",
    "credits",
)
FIELDS = MONEY_FIELDS + TOKEN_FIELDS
REPORT_FIELDS = (*FIELDS, "turns")


def cumulative(worker: Worker) -> dict[str, int] | None:
    """The worker's cumulative figures as integers, or None while costs are unknown.

    ``costs: null`` means *unknown*, not zero: nothing is posted until a snapshot says.
    """
    costs, usage = worker.costs, worker.usage
    if costs is None or usage is None:
        return None
    return {
        "internal_cost_micro": to_micro(costs.internal_cost_usd),
        "model_cost_micro": to_micro(costs.model_cost_usd),
        "sandbox_cost_micro": to_micro(costs.sandbox_cost_usd),
        "tool_cost_micro": to_micro(costs.tool_cost_usd),
        "usage_cost_micro": to_micro(usage.cost_usd),
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "total_tokens": usage.total_tokens,
        "steps": usage.steps,
        "credits": usage.credits or 0,
    }


def total_cost_micro(row: dict[str, int]) -> int:
    """The money of a row: the four cost components (usage cost is their mirror)."""
    return sum(row.get(f, 0) for f in COST_FIELDS)


def rollups(
    job: Job, worker_id: str, at_ms: int, extra: Sequence[tuple[str, str]] = ()
) -> list[tuple[str, str]]:
    """The ``(dimension, value)`` ledger rows a turn of ``job`` on ``worker_id`` at
    ``at_ms`` adds to, beside the total: its day, budget, worker, tags, schedule, and
    ``extra`` (the budget periods it counts against)."""
    members = [("day", utc_day(at_ms)), ("budget", job.budget), ("worker", worker_id)]
    members += [("tag", f"{k}={v}") for k, v in sorted(job.tags.items())]
    if job.schedule_id:
        members.append(("schedule", job.schedule_id))
    return members + list(extra)


def utc_day(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).strftime("%Y-%m-%d")


def empty_row() -> dict[str, int]:
    return dict.fromkeys(REPORT_FIELDS, 0)


def parse_row(data: dict[str, str]) -> dict[str, int]:
    row = empty_row()
    for key, value in data.items():
        if key in row:
            row[key] = int(value)
    return row
