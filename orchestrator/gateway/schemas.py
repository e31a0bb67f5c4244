"""The request and response bodies of ``/v1`` (they make the OpenAPI document)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.jobs.model import Job, JobKind, JobStatus, Priority
from orchestrator.wire.models import Budget


class SubmitBody(BaseModel):
    """A new job. Values are checked by the same rules as the Python facade."""

    model_config = ConfigDict(extra="forbid")

    input: str = Field(description="what the worker is asked to do")
    budget: Budget = "standard"
    tags: dict[str, str] = Field(default_factory=dict)
    fetch_files: bool = False
    priority: Priority = "interactive"


class ContinueBody(SubmitBody):
    """A new turn of a worker, named by its id or by one of our job ids."""

    worker: str = Field(description="a worker id, or the id of a job that made it")


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
    budget: Budget = "standard"
    timezone: str = "UTC"
    catch_up: Literal["skip", "once"] = "skip"
    overlap: Literal["skip", "buffer"] = "skip"


class Changed(BaseModel):
    changed: bool


class Triggered(BaseModel):
    slot: int = Field(description="the slot (epoch ms) that was run")


class CostsOut(BaseModel):
    by: str
    rows: list[dict[str, Any]]
    total: dict[str, int]


class CapBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scope: str = Field(description="global or tag:key=value")
    period: Literal["day", "month"] = "day"
    limit_usd: str = Field(description="a decimal amount, e.g. 12.50")
    warn_at: float = Field(default=0.8, gt=0, le=1)
    on_exceed: Literal["refuse", "wait"] = "refuse"


class LimitBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(description="tag:key=value or budget:<tier>")
    limit: int


class Health(BaseModel):
    status: str
