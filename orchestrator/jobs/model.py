"""Typed records for jobs: what a backend submits, and what the store keeps.

A job is one turn of an upstream worker: ``create`` starts a new worker, ``continue``
adds a turn to an existing one. Its status only moves forward::

    queued -> submitted -> running -> completed | failed | cancelled
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    ValidationError,
    field_validator,
)

from orchestrator import rules
from orchestrator.errors import InputError
from orchestrator.wire.models import Budget, input_error

JobKind = Literal["create", "continue"]
Priority = Literal["interactive", "batch"]
JobStatus = Literal["queued", "submitted", "running", "completed", "failed", "cancelled"]
STATUSES: tuple[JobStatus, ...] = (
    "queued", "submitted", "running", "completed", "failed", "cancelled",
)  # fmt: skip
#: The one statement of the status rule: a job moves only to a status of equal or
#: higher rank, and never out of a terminal one. The store's transition script is
#: generated from this table (``orchestrator.store.scripts.jobs.TRANSITION``).
STATUS_RANK: dict[JobStatus, int] = {
    "queued": 0, "submitted": 1, "running": 2, "completed": 3, "failed": 3, "cancelled": 3,
}  # fmt: skip
TERMINAL_RANK = max(STATUS_RANK.values())
TERMINAL: frozenset[str] = frozenset(s for s, rank in STATUS_RANK.items() if rank == TERMINAL_RANK)
#: The end states that are not success: a task that leaves its job in one fails in
#: Flower (``JobEnded``).
FAILED_ENDS: frozenset[str] = TERMINAL - {"completed"}

# The identifier rules live in orchestrator.rules; these names stay for their users.
TAG_KEY = rules.TAG_KEY.regex
TAG_VALUE = rules.TAG_VALUE.regex
IDEMPOTENCY_KEY = rules.IDEMPOTENCY_KEY.regex
MAX_TAGS = 16


def new_job_id() -> str:
    return "job_" + uuid.uuid4().hex


class Submission(BaseModel):
    """What a backend hands in. Validated before anything is written or enqueued."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: JobKind = "create"
    input: StrictStr
    budget: Budget = "standard"
    tags: dict[str, str] = Field(default_factory=dict)
    idempotency_key: str | None = None
    fetch_files: StrictBool = False
    worker_id: str | None = None
    schedule_id: str | None = None
    priority: Priority = "interactive"

    @field_validator("input")
    @classmethod
    def _input(cls, value: str) -> str:
        problem = rules.input_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_TAGS:
            raise ValueError(f"at most {MAX_TAGS} tags")
        for key, tag_value in value.items():
            problem = rules.TAG_KEY.problem(key)
            if problem is None and (problem := rules.TAG_VALUE.problem(tag_value)) is not None:
                problem = f"tag {key}: {problem}"
            if problem is not None:
                raise ValueError(problem)
        return value

    @field_validator("idempotency_key")
    @classmethod
    def _idem(cls, value: str | None) -> str | None:
        return None if value is None else rules.IDEMPOTENCY_KEY.validator(value)

    @field_validator("worker_id")
    @classmethod
    def _worker(cls, value: str | None) -> str | None:
        return None if value is None else rules.WORKER_ID.validator(value)

    @field_validator("schedule_id")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        return None if value is None else rules.SCHEDULE_ID.validator(value)


def validate_submission(max_input_chars: int, **fields: Any) -> Submission:
    """Build a :class:`Submission`, raising :class:`InputError` naming the bad field."""
    try:
        sub = Submission.model_validate(fields)
    except ValidationError as exc:
        raise input_error(exc) from None
    if len(sub.input) > max_input_chars:
        raise InputError("input", f"is {len(sub.input)} characters; the limit is {max_input_chars}")
    if sub.kind == "continue" and sub.worker_id is None:
        raise InputError("worker_id", "is required to continue a worker")
    return sub


def parse_tag(text: str) -> tuple[str, str]:
    """``key=value`` (as given on the command line) to a pair; InputError if malformed."""
    key, sep, value = text.partition("=")
    if not sep:
        raise InputError("tags", f"{rules.shown(text)} is not key=value")
    return rules.tag(key, value, "tags")


class Job(BaseModel):
    """A job as stored: the submission plus what happened to it."""

    model_config = ConfigDict(frozen=True)

    id: str
    kind: JobKind
    input: str
    budget: Budget
    tags: dict[str, str] = Field(default_factory=dict)
    idempotency_key: str | None = None
    fetch_files: bool = False
    schedule_id: str | None = None
    priority: Priority = "interactive"
    status: JobStatus
    worker_id: str | None = None
    attempts: int = 0
    error: str | None = None
    update_from: int | None = None
    update_to: int | None = None
    cost_known: bool | None = None
    created_at: int
    timestamps: dict[str, int] = Field(default_factory=dict)

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> Job:
        """Rebuild from the store's hash (all values are strings there)."""

        def opt_int(name: str) -> int | None:
            return int(data[name]) if data.get(name) not in (None, "") else None

        return cls(
            id=data["id"],
            kind=data["kind"],
            input=data["input"],
            budget=data["budget"],
            tags=json.loads(data.get("tags") or "{}"),
            idempotency_key=data.get("idempotency_key") or None,
            fetch_files=data.get("fetch_files") == "1",
            schedule_id=data.get("schedule_id") or None,
            priority="batch" if data.get("priority") == "batch" else "interactive",
            status=data["status"],
            worker_id=data.get("worker_id") or None,
            attempts=int(data.get("attempts") or 0),
            error=data.get("error") or None,
            update_from=opt_int("update_from"),
            update_to=opt_int("update_to"),
            cost_known=None if "cost_known" not in data else data["cost_known"] == "1",
            created_at=int(data["created_at"]),
            timestamps={k[3:]: int(v) for k, v in data.items() if k.startswith("at_")},
        )

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def short_input(self, limit: int = 40) -> str:
        text = " ".join(self.input.split())
        return text if len(text) <= limit else text[: limit - 1] + "…"
