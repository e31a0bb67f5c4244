"""Cost and usage maths: what a Worker snapshot says was spent, as integer fields.

The upstream reports cumulative ``costs`` (USD) and ``usage`` per worker. A turn's cost
is the difference between the cumulative figures after it and those already counted;
:mod:`orchestrator.store.scripts.jobs` (POST_TURN) applies that difference atomically.
This module, pure maths, says which fields are money and usage, turns a snapshot into
those integer fields, and names the ledger rows a turn adds to.

Upstream figures are untrusted input (invariant 10). :func:`cumulative` checks each one
before anything is written: finite, non-negative, and at most :data:`MAX_FIGURE` (10**15:
one billion USD in micro-dollars, or 10**15 tokens/steps/credits, per worker). The ceiling
is below 2**53, so the Lua scripts, whose numbers are doubles, compute every delta
exactly; a ledger row (a 64-bit Redis integer) is refused a post that would take it over
:data:`ROW_CEILING`. A figure outside the bounds raises :class:`FigureError`: the job
fails with that reason, nothing is posted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from orchestrator.errors import OrchestratorError
from orchestrator.money import MICRO_PER_USD, to_micro
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

#: The largest cumulative figure a worker may report, per field: micro-dollars for money
#: (so at most 1,000,000,000 USD), a count for usage. Below 2**53 (Lua's exact integers).
MAX_FIGURE = 10**15
MAX_USD = Decimal(MAX_FIGURE) / MICRO_PER_USD
#: A ledger row's field may not be taken above this by a post (Redis integers are 64-bit;
#: the margin below 2**63 covers the doubles Lua compares with).
ROW_CEILING = 2**62


class FigureError(OrchestratorError, ValueError):
    """An upstream cost or usage figure is outside the ledger's bounds; ``field`` names
    it (e.g. ``costs.model_cost_usd``). Nothing was posted."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"upstream {field} {message}")


def cumulative(worker: Worker) -> dict[str, int] | None:
    """The worker's cumulative figures as integers, or None while costs are unknown.

    ``costs: null`` means *unknown*, not zero: nothing is posted until a snapshot says.
    Raises :class:`FigureError` for a figure outside the bounds (see the module doc).
    """
    costs, usage = worker.costs, worker.usage
    if costs is None or usage is None:
        return None
    return {
        "internal_cost_micro": _micro("costs.internal_cost_usd", costs.internal_cost_usd),
        "model_cost_micro": _micro("costs.model_cost_usd", costs.model_cost_usd),
        "sandbox_cost_micro": _micro("costs.sandbox_cost_usd", costs.sandbox_cost_usd),
        "tool_cost_micro": _micro("costs.tool_cost_usd", costs.tool_cost_usd),
        "usage_cost_micro": _micro("usage.cost_usd", usage.cost_usd),
        "input_tokens": _count("usage.input_tokens", usage.input_tokens),
        "output_tokens": _count("usage.output_tokens", usage.output_tokens),
        "reasoning_tokens": _count("usage.reasoning_tokens", usage.reasoning_tokens),
        "cache_read_tokens": _count("usage.cache_read_tokens", usage.cache_read_tokens),
        "cache_write_tokens": _count("usage.cache_write_tokens", usage.cache_write_tokens),
        "total_tokens": _count("usage.total_tokens", usage.total_tokens),
        "steps": _count("usage.steps", usage.steps),
        "credits": _count("usage.credits", usage.credits or 0),
    }


def _micro(name: str, amount: object) -> int:
    if not isinstance(amount, Decimal | int) or isinstance(amount, bool):
        raise FigureError(name, f"is not a number: {amount!r}")
    value = Decimal(amount)
    if not value.is_finite():
        raise FigureError(name, f"is not a finite number: {value}")
    if value < 0:
        raise FigureError(name, f"is negative: {value}")
    if value > MAX_USD:
        raise FigureError(name, f"is above the ceiling of {MAX_USD} USD: {value:.6E}")
    return to_micro(value)


def _count(name: str, count: object) -> int:
    if not isinstance(count, int) or isinstance(count, bool):
        raise FigureError(name, f"is not an integer: {count!r}")
    if count < 0:
        raise FigureError(name, f"is negative: {count}")
    if count > MAX_FIGURE:
        raise FigureError(name, f"is above the ceiling of {MAX_FIGURE}: {count}")
    return count


def check_figures(figures: dict[str, int]) -> dict[str, int]:
    """``figures`` if it holds every ledger field as an integer within the bounds (what
    the POST_TURN and RECONCILE_WORKER scripts receive); FigureError otherwise."""
    for name in FIELDS:
        if name not in figures:
            raise FigureError(name, "is missing")
        _count(name, figures[name])
    extra = sorted(set(figures) - set(FIELDS))
    if extra:
        raise FigureError(extra[0], "is not a ledger field")
    return figures


def total_cost_micro(row: dict[str, int]) -> int:
    """The money of a row: the four cost components (usage cost is their mirror)."""
    return sum(row.get(f, 0) for f in COST_FIELDS)


def rollups(
    job: Job, worker_id: str, at_ms: int, extra: Sequence[tuple[str, str]] = ()
) -> list[tuple[str, str]]:
    """The ``(dimension, value)`` ledger rows a turn of ``job`` on ``worker_id`` at
    ``at_ms`` adds to, beside the total: its day, budget, worker, tags, schedule, and
    ``extra`` (the budget periods it counts against)."""
    day = utc_day(at_ms)
    members = [("day", day), ("budget", job.budget), ("worker", worker_id)]
    members += [("tag", f"{k}={v}") for k, v in sorted(job.tags.items())]
    # Spend per day per tier and per schedule (per tag per day is among the budgets'
    # ``extra``): what the console stacks, read by key for each day of a period.
    members.append(("budget-day", f"{job.budget}|{day}"))
    if job.schedule_id:
        members += [("schedule", job.schedule_id), ("schedule-day", f"{job.schedule_id}|{day}")]
    return members + list(extra)


def utc_day(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).strftime("%Y-%m-%d")


def empty_row() -> dict[str, int]:
    return dict.fromkeys(REPORT_FIELDS, 0)


def sum_rows(rows: Iterable[dict[str, int]]) -> dict[str, int]:
    """Rows added field by field (the cells' rows of one rollup; exact integers)."""
    total = empty_row()
    for row in rows:
        for key in total:
            total[key] += row.get(key, 0)
    return total


def parse_row(data: dict[str, str]) -> dict[str, int]:
    row = empty_row()
    for key, value in data.items():
        if key in row:
            row[key] = int(value)
    return row
