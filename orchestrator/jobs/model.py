"""Typed records for jobs: what a backend submits, and what the store keeps.

A job is one turn of an upstream worker: ``create`` starts a new worker, ``continue``
adds a turn to an existing one. Its status only moves forward::

    queued -> submitted -> running -> completed | failed | cancelled | expired | timed_out

``cancelled``, ``expired`` (not started upstream within its queue time-to-live) and
``timed_out`` (no update for its idle timeout, or past its deadline) are ended here, not
upstream: the Workers API has no cancel route, so a turn already started goes on and is
billed, and its cost is settled into the ledger when it ends (see
:mod:`orchestrator.jobs.lifecycle`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
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
JobStatus = Literal[
    "queued", "submitted", "running", "completed", "failed", "cancelled", "expired", "timed_out"
]
STATUSES: tuple[JobStatus, ...] = (
    "queued", "submitted", "running", "completed", "failed", "cancelled", "expired", "timed_out",
)  # fmt: skip
#: The one statement of the status rule: a job moves only to a status of equal or
#: higher rank, and never out of a terminal one. The store's transition script is
#: generated from this table (``orchestrator.store.scripts.jobs.TRANSITION``).
STATUS_RANK: dict[JobStatus, int] = {
    "queued": 0, "submitted": 1, "running": 2, "completed": 3, "failed": 3, "cancelled": 3,
    "expired": 3, "timed_out": 3,
}  # fmt: skip
TERMINAL_RANK = max(STATUS_RANK.values())
TERMINAL: frozenset[str] = frozenset(s for s, rank in STATUS_RANK.items() if rank == TERMINAL_RANK)
#: End states reached here, not upstream (cancel and the three limits): the job stops
#: relaying and frees its slots at once; its upstream turn, if one began, is settled
#: into the ledger later, when it ends. Never retried.
LOCAL_ENDS: frozenset[str] = frozenset({"cancelled", "expired", "timed_out"})
#: The three per-job limits (seconds), as submit's keywords and the job's fields.
LIMITS = ("queue_ttl", "idle_timeout", "deadline")
#: The end states that are not success: a task that leaves its job in one fails in
#: Flower (``JobEnded``).
FAILED_ENDS: frozenset[str] = TERMINAL - {"completed"}

# The identifier rules live in orchestrator.rules; these names stay for their users.
TAG_KEY = rules.TAG_KEY.regex
TAG_VALUE = rules.TAG_VALUE.regex
IDEMPOTENCY_KEY = rules.IDEMPOTENCY_KEY.regex
MAX_TAGS = 16


#: The live index's score of a job none of whose limits applies (2**52: far beyond any
#: epoch ms, and exact as a double).
NEVER = 2**52


def limit_ms(seconds: float | None) -> int:
    """A limit in seconds as the store keeps it: whole milliseconds, 0 for off."""
    return 0 if seconds is None else max(1, round(seconds * 1000))


def next_due(job: Job, now: int, last_activity: int | None = None) -> int:
    """When the job's next limit falls due (epoch ms; :data:`NEVER` if none applies):
    its queue time-to-live while queued, its deadline, and once it is upstream its
    idle timeout counted from ``last_activity`` (default ``now``)."""
    due = [job.limit_at("deadline")]
    if job.status == "queued":
        due.append(job.limit_at("queue_ttl"))
    elif job.idle_timeout is not None:
        due.append((last_activity or now) + limit_ms(job.idle_timeout))
    return min((d for d in due if d is not None), default=NEVER)


def upstream_since(job: Job, last_relayed: int | None) -> int:
    """Since when a job upstream has been quiet: its last stored update, or its move to
    ``submitted`` if none came since (epoch ms)."""
    return max(last_relayed or 0, job.timestamps.get("submitted", job.created_at))


def overdue(job: Job, now: int, last_relayed: int | None = None) -> tuple[JobStatus, str] | None:
    """The end state a live job's limits put it in by ``now`` and why (the earliest limit
    passed), or None. ``last_relayed``: when an update of its worker was last stored."""
    passed: list[tuple[int, JobStatus, str]] = []
    if job.status == "queued" and (at := job.limit_at("queue_ttl")) is not None:
        passed.append((at, "expired", f"not started upstream within {job.queue_ttl:g}s"))
    if job.status in ("submitted", "running") and job.idle_timeout is not None:
        at = upstream_since(job, last_relayed) + limit_ms(job.idle_timeout)
        passed.append((at, "timed_out", f"no update for {job.idle_timeout:g}s (idle timeout)"))
    if (at := job.limit_at("deadline")) is not None:
        passed.append((at, "timed_out", f"not ended within its deadline of {job.deadline:g}s"))
    due = sorted(p for p in passed if p[0] <= now)
    return (due[0][1], due[0][2]) if due else None


def new_job_id() -> str:
    return "job_" + uuid.uuid4().hex


class Submission(BaseModel):
    """What a backend hands in. Validated before anything is written or enqueued."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: JobKind = "create"
    input: Annotated[StrictStr, AfterValidator(rules.problem_validator(rules.input_problem))]
    budget: Budget = "standard"
    tags: dict[str, str] = Field(default_factory=dict)
    idempotency_key: str | None = None
    fetch_files: StrictBool = False
    worker_id: str | None = None
    schedule_id: str | None = None
    priority: Priority = "interactive"
    # Seconds; None: the setting's default (JOB_QUEUE_TTL, JOB_IDLE_TIMEOUT, JOB_DEADLINE).
    queue_ttl: float | None = None
    idle_timeout: float | None = None
    deadline: float | None = None

    @field_validator("queue_ttl", "idle_timeout", "deadline", mode="before")
    @classmethod
    def _limit(cls, value: object) -> float | None:
        if value is None:
            return None
        problem = rules.job_limit_problem(value)
        if problem is not None:
            raise ValueError(problem)
        assert isinstance(value, int | float)
        return float(value)

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


def parse_tag(text: str, field: str = "tags") -> tuple[str, str]:
    """``key=value`` (as given on the command line) to a pair; InputError naming
    ``field`` (the option or parameter it came in) if malformed."""
    key, sep, value = text.partition("=")
    if not sep:
        raise InputError(field, f"{rules.shown(text)} is not key=value")
    return rules.tag(key, value, field)


def parse_tags(texts: Iterable[str]) -> dict[str, str]:
    """``key=value`` texts (``--tag``, repeatable) to one dict; InputError for a malformed
    one or a key given twice (a later value must not silently replace an earlier one)."""
    tags: dict[str, str] = {}
    for text in texts:
        key, value = parse_tag(text)
        if key in tags:
            raise InputError("tags", f"key {key!r} is given twice")
        tags[key] = value
    return tags


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
    # The job's limits in seconds (None: off), resolved from submit and the settings.
    queue_ttl: float | None = None
    idle_timeout: float | None = None
    deadline: float | None = None
    created_at: int
    timestamps: dict[str, int] = Field(default_factory=dict)

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> Job:
        """Rebuild from the store's hash (all values are strings there)."""

        def opt_int(name: str) -> int | None:
            return int(data[name]) if data.get(name) not in (None, "") else None

        def seconds(name: str) -> float | None:
            ms = int(data.get(f"{name}_ms") or 0)
            return ms / 1000 if ms > 0 else None

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
            queue_ttl=seconds("queue_ttl"),
            idle_timeout=seconds("idle_timeout"),
            deadline=seconds("deadline"),
            created_at=int(data["created_at"]),
            timestamps={k[3:]: int(v) for k, v in data.items() if k.startswith("at_")},
        )

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def limit_at(self, name: str) -> int | None:
        """When a limit counted from submission falls due (epoch ms), or None if off."""
        value = getattr(self, name)
        return None if value is None else self.created_at + limit_ms(value)

    def short_input(self, limit: int = 40) -> str:
        text = " ".join(self.input.split())
        return text if len(text) <= limit else text[: limit - 1] + "…"
