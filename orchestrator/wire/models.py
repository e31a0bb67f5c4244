"""Pydantic models of the Workers API wire format (``shared/reference/wire.md``).

Python names are snake_case; the wire names are given as aliases exactly as the wire
uses them (camelCase for multi-word names, except the Worker's own ``created_at``,
``output_text`` and ``incomplete_details``, which are snake_case on the wire too).
Dump with ``model_dump(mode="json", by_alias=True, exclude_none=...)`` to get wire
JSON. Unknown fields from the server are kept, not rejected, so a newer API does not
break us. Money fields are :class:`~decimal.Decimal`, parsed from the JSON text.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictBool,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
)
from pydantic.alias_generators import to_camel

from orchestrator import rules
from orchestrator.errors import InputError

Budget = Literal["low", "standard", "high", "unlimited"]
BUDGETS: tuple[Budget, ...] = ("low", "standard", "high", "unlimited")
WorkerStatus = Literal["running", "completed", "pending"]

# Money: exact Decimal in Python, a JSON number on the wire.
Usd = Annotated[
    Decimal,
    Field(ge=0),
    PlainSerializer(lambda d: float(d), return_type=float, when_used="json"),
]
Count = Annotated[int, Field(ge=0)]
# A worker id names Redis keys and file directories: an upstream answer with any other
# id (``../up``, ``a/b``, ``victim:schedules``, empty, over 128 characters) is malformed.
WorkerId = Annotated[str, AfterValidator(rules.WORKER_ID.validator)]


def _utc_iso(value: datetime) -> str:
    text = value.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


UtcDatetime = Annotated[
    AwareDatetime,
    PlainSerializer(_utc_iso, return_type=str, when_used="json"),
]


class WireModel(BaseModel):
    """Base of models whose multi-word names are camelCase on the wire."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="allow",
        frozen=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The wire JSON of this model (aliases, JSON types, no unset optionals)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# --- requests ---------------------------------------------------------------------


class CreateWorker(WireModel):
    """Body of create and continue."""

    model_config = ConfigDict(extra="forbid")

    input: Annotated[StrictStr, Field(min_length=1)]
    budget: Budget | None = None
    stream: StrictBool | None = None


# --- worker ------------------------------------------------------------------------


class File(WireModel):
    filename: str | None = None
    media_type: str
    url: str


class OutputContent(WireModel):
    text: str
    type: Literal["output_text"] = "output_text"


class Output(WireModel):
    id: str
    content: list[OutputContent]
    role: Literal["assistant"] = "assistant"
    status: Literal["completed"] = "completed"
    type: Literal["message"] = "message"


class Source(WireModel):
    id: str
    title: str | None = None
    type: Literal["url"] = "url"
    url: str


class Costs(WireModel):
    """Cumulative cost of a worker so far, in USD."""

    internal_cost_usd: Usd
    model_cost_usd: Usd
    sandbox_cost_usd: Usd
    tool_cost_usd: Usd


class Usage(WireModel):
    """Cumulative usage of a worker so far."""

    cache_read_tokens: Count
    cache_write_tokens: Count
    cost_usd: Usd
    input_tokens: Count
    output_tokens: Count
    reasoning_tokens: Count
    steps: Count
    total_tokens: Count
    credits: Count | None = None
    duration_ms: Count | None = None


class Worker(BaseModel):
    """A worker: one conversation with the agent, turn after turn."""

    # The Worker's own multi-word names are snake_case on the wire.
    model_config = ConfigDict(extra="allow", frozen=True)

    id: WorkerId
    created_at: int | None = None
    error: Any = None
    files: list[File] = Field(default_factory=list)
    incomplete_details: Any = None
    messages: list[Any] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    object: Literal["worker"] = "worker"
    output: list[Output] = Field(default_factory=list)
    output_text: str = ""
    running: bool = False
    sources: list[Source] = Field(default_factory=list)
    status: WorkerStatus = "pending"
    costs: Costs | None = None
    usage: Usage | None = None

    def to_wire(self) -> dict[str, Any]:
        """Wire JSON: every field present (``null`` where unknown), as the API sends."""
        return self.model_dump(mode="json", by_alias=True)


# --- schedules ---------------------------------------------------------------------


def _check_cron(expr: str) -> str:
    # Imported lazily: croniter is only needed where schedules are validated.
    from croniter import croniter

    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"a cron expression has 5 fields, got {len(fields)}")
    if not croniter.is_valid(expr, strict=True):
        raise ValueError(f"invalid cron expression {expr!r}")
    return " ".join(fields)


CronExpr = Annotated[str, AfterValidator(_check_cron)]
# Strict: a JSON integer only. Lax, ``true`` passed as 1 s (a schedule firing every
# second) and ``"60"`` as 60.
PositiveSeconds = Annotated[StrictInt, Field(gt=0, le=10 * 365 * 24 * 3600)]


class _When(WireModel):
    """A schedule's timing, as asked for: a key its kind does not take is refused
    (a misspelt ``at`` for ``date`` or an unknown ``jitter`` would be dropped unseen)."""

    model_config = ConfigDict(extra="forbid")


class ScheduledWhen(_When):
    type: Literal["scheduled"] = "scheduled"
    date: UtcDatetime


class DelayedWhen(_When):
    type: Literal["delayed"] = "delayed"
    delay_in_seconds: PositiveSeconds


class CronWhen(_When):
    type: Literal["cron"] = "cron"
    cron: CronExpr


class IntervalWhen(_When):
    type: Literal["interval"] = "interval"
    interval_seconds: PositiveSeconds


When = Annotated[
    ScheduledWhen | DelayedWhen | CronWhen | IntervalWhen,
    Field(discriminator="type"),
]
WHEN_ADAPTER: TypeAdapter[ScheduledWhen | DelayedWhen | CronWhen | IntervalWhen] = TypeAdapter(When)


class CreateSchedule(WireModel):
    """Body of create schedule."""

    model_config = ConfigDict(extra="forbid")

    input: Annotated[str, Field(min_length=1)]
    when: When
    budget: Budget | None = None


class _ScheduleBase(WireModel):
    id: str
    budget: Budget
    input: str
    next_run_at: UtcDatetime


class ScheduledSchedule(_ScheduleBase):
    type: Literal["scheduled"] = "scheduled"


class DelayedSchedule(_ScheduleBase):
    type: Literal["delayed"] = "delayed"
    delay_in_seconds: int


class CronSchedule(_ScheduleBase):
    type: Literal["cron"] = "cron"
    cron: str


class IntervalSchedule(_ScheduleBase):
    type: Literal["interval"] = "interval"
    interval_seconds: int


WorkerSchedule = Annotated[
    ScheduledSchedule | DelayedSchedule | CronSchedule | IntervalSchedule,
    Field(discriminator="type"),
]
WORKER_SCHEDULE_ADAPTER: TypeAdapter[
    ScheduledSchedule | DelayedSchedule | CronSchedule | IntervalSchedule
] = TypeAdapter(WorkerSchedule)


class ScheduleList(WireModel):
    schedules: list[WorkerSchedule]
    worker_id: WorkerId


class ScheduleCancel(WireModel):
    cancelled: bool


# --- validation helpers -----------------------------------------------------------

_UNION_TAGS = frozenset({"scheduled", "delayed", "cron", "interval"})


def input_error(exc: ValidationError) -> InputError:
    """The first problem of a validation error, as an InputError naming the field."""
    first = exc.errors()[0]
    if first["type"] == "union_tag_not_found" and first["loc"][-1:] == ("when",):
        # pydantic says "Unable to extract tag using discriminator": name the key and
        # its values instead, which is what a caller who wrote "kind" needs to read.
        kinds = ", ".join(sorted(_UNION_TAGS))
        return InputError(error_field(first["loc"]), f'needs "type": one of {kinds}')
    return InputError(error_field(first["loc"]), error_message(first["msg"]))


def error_message(msg: str) -> str:
    """pydantic's message without its ``Value error, `` prefix."""
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def error_field(loc: tuple[int | str, ...]) -> str:
    """Dotted snake_case field name from a pydantic error location.

    Tagged-union tags that pydantic inserts into the location are dropped, so
    ``("when", "cron", "cron")`` becomes ``when.cron``.
    """
    parts: list[str] = []
    for i, item in enumerate(loc):
        text = str(item)
        if text in _UNION_TAGS and i + 1 < len(loc) and i > 0 and parts[-1] == "when":
            continue
        parts.append("".join("_" + c.lower() if c.isupper() else c for c in text))
    return ".".join(parts) or "body"
