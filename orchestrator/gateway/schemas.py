"""The request and response bodies of ``/v1`` (they make the OpenAPI document)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from orchestrator.jobs.model import Job, JobKind, JobStatus, Priority
from orchestrator.wire.models import Budget


class SubmitBody(BaseModel):
    """A new job. Values are checked by the same rules as the Python facade."""

    model_config = ConfigDict(extra="forbid")

    input: str = Field(description="what the worker is asked to do")
    budget: Budget = "standard"
    tags: dict[str, str] = Field(default_factory=dict)
    # Strict, as the Python facade is: JSON has true/false, and "no" must not mean true.
    fetch_files: bool = Field(default=False, strict=True)
    priority: Priority = "interactive"
    # Seconds, JSON numbers only; null or absent: JOB_QUEUE_TTL, JOB_IDLE_TIMEOUT,
    # JOB_DEADLINE. Bounds are the facade's (rules.job_limit_problem).
    queue_ttl: float | None = Field(
        default=None, strict=True, description="seconds it may wait to start upstream"
    )
    idle_timeout: float | None = Field(
        default=None, strict=True, description="seconds upstream without an update"
    )
    deadline: float | None = Field(
        default=None, strict=True, description="seconds from submission to its end"
    )


class ContinueBody(SubmitBody):
    """A new turn of a worker, named by its id or by one of our job ids."""

    worker: str = Field(description="a worker id, or the id of a job that made it")
    # Absent: the earlier job's (the job named, else the worker's latest of ours).
    budget: Budget | None = Field(  # type: ignore[assignment]
        default=None, description="absent: the earlier job's tier (standard if none)"
    )
    tags: dict[str, str] | None = Field(  # type: ignore[assignment]
        default=None, description="merged over the earlier job's tags (a key given wins)"
    )


class JobOut(BaseModel):
    id: str
    kind: JobKind
    status: JobStatus
    input: str
    budget: Budget
    tags: dict[str, str]
    priority: Priority
    schedule_id: str | None
    worker_id: str | None
    attempts: int
    error: str | None
    fetch_files: bool
    queue_ttl: float | None = None
    idle_timeout: float | None = None
    deadline: float | None = None
    update_from: int | None
    update_to: int | None
    cost_known: bool | None
    created_at: int = Field(description="epoch ms")
    timestamps: dict[str, int] = Field(description="status -> epoch ms it was reached")
    cost: dict[str, int] | None = Field(
        default=None, description="the turn's posted cost and usage (micro-dollars, tokens)"
    )

    @classmethod
    def of(cls, job: Job, cost: dict[str, int] | None = None) -> JobOut:
        data = job.model_dump(exclude={"idempotency_key"})
        return cls(**data, cost=cost)


class JobPage(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page")


class HistoryEntry(BaseModel):
    status: str
    at: int
    detail: str | None


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    size: int | None = None
    sha256: str | None = None
    refused: str | None = None
    error: str | None = None


class EmailOut(BaseModel):
    email: str


class LinkBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seconds: int | None = Field(default=None, ge=10, le=86_400, description="lifetime")


class LinkOut(BaseModel):
    url: str = Field(description="path of the job's live updates, readable without a token")
    expires_at: int = Field(description="epoch seconds")


class ScheduleBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    worker: str | None = Field(default=None, description="worker id or job id; none: a new one")
    input: str
    when: dict[str, Any] = Field(
        description="{type: scheduled|delayed|cron|interval, ...} as in the Workers API"
    )
    # Absent on a worker: the earlier job's, as for a continue (none, standard: without).
    budget: Budget | None = Field(
        default=None, description="each run's tier; absent: the worker's earlier job's"
    )
    tags: dict[str, str] | None = Field(
        default=None, description="each run's job tags, over the worker's earlier job's"
    )
    timezone: str = "UTC"
    catch_up: Literal["skip", "once"] = "skip"
    overlap: Literal["skip", "buffer"] = "skip"


class ScheduleUpdateBody(BaseModel):
    """The fields to change, named and checked as in the create body; those left out
    stay as they are."""

    model_config = ConfigDict(extra="forbid")

    input: str | None = None
    when: dict[str, Any] | None = Field(default=None, description="a new timing, as at create")
    budget: Budget | None = None
    tags: dict[str, str] | None = Field(
        default=None, description="all of each run's tags (replacing the old; {} clears them)"
    )
    timezone: str | None = Field(default=None, description="IANA zone of a cron schedule")
    catch_up: Literal["skip", "once"] | None = None
    overlap: Literal["skip", "buffer"] | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # A null would read as "unchanged"; leaving the field out says that.
        if value is None:
            raise PydanticCustomError("not_null", "must not be null (leave it out to keep it)")
        return value

    @model_validator(mode="after")
    def _something(self) -> ScheduleUpdateBody:
        if not self.model_fields_set:
            raise ValueError(f"give at least one of {', '.join(type(self).model_fields)}")
        return self


class Changed(BaseModel):
    changed: bool


class Triggered(BaseModel):
    slot: int = Field(description="the slot (epoch ms) that was run")


class CostsOut(BaseModel):
    by: str
    rows: list[dict[str, Any]]
    total: dict[str, int]


class DailySeries(BaseModel):
    key: str
    micro: list[int] = Field(description="money per day (micro-dollars), one per day")


class DailyOut(BaseModel):
    by: str
    days: list[str] = Field(description="the UTC days, oldest first")
    series: list[DailySeries]
    other_micro: list[int] = Field(description="the rest of each day's money")
    total_micro: list[int] = Field(description="each day's money")


class CapBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scope: str = Field(description="global or tag:key=value")
    period: Literal["day", "month"] = "day"
    limit_usd: str = Field(description='a decimal amount as a JSON string, e.g. "12.50"')
    warn_at: float = Field(default=0.8, gt=0, le=1)
    on_exceed: Literal["refuse", "wait"] = "refuse"

    @field_validator("limit_usd", mode="before")
    @classmethod
    def _money_is_text(cls, value: Any) -> Any:
        # A JSON number (12.5) is the first thing a caller tries; say what to send.
        if isinstance(value, int | float) and not isinstance(value, bool):
            raise PydanticCustomError(
                "money_text", 'a decimal amount as a JSON string, e.g. "12.50" (money is exact)'
            )
        return value


class LimitBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(description="tag:key=value or budget:<tier>")
    limit: int = Field(strict=True, description="1-10000 running turns (a JSON integer)")


class MeOut(BaseModel):
    token_id: str
    role: Literal["read", "submit", "admin"]
    tenant: str | None = Field(description="the tenant the token is bound to; none: all")


class Health(BaseModel):
    status: str


class CancelBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, description="kept in the job's history")


class BulkCancelBody(CancelBody):
    """Live jobs matching every filter given (at least one)."""

    tags: dict[str, str] | None = Field(default=None, description="a subset of the job's tags")
    status: JobStatus | None = Field(default=None, description="a live status")
    schedule_id: str | None = None


class CancelOut(BaseModel):
    job: JobOut
    note: str = Field(description="what happens upstream: the turn goes on and is billed")


class BulkCancelOut(BaseModel):
    cancelled: list[str] = Field(description="the ids of the jobs cancelled now")
    note: str = Field(description="what happens upstream: the turn goes on and is billed")


class WebhookBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="http or https; private and loopback hosts are refused")
    events: list[str] = Field(
        description="job.completed, job.failed, job.cancelled, job.expired, job.timed_out,"
        " budget.threshold"
    )
    tenant: str | None = Field(
        default=None,
        description="only this tenant's events (a tenant-bound token's own, always); none: all",
    )


class WebhookOut(BaseModel):
    id: str
    url: str
    events: list[str]
    tenant: str | None
    created_at: int = Field(description="epoch ms")


class WebhookCreated(WebhookOut):
    secret: str = Field(description="the signing secret (whsec_…), shown this once only")
