"""The rules for every identifier and value a caller or the upstream hands in, in one
place: the facade, the CLI, the settings, the controls, the job model and the wire
models all check against these.

Patterns are anchored with ``\\A`` and ``\\Z`` and applied with :func:`re.fullmatch`, so
a trailing newline never passes (``$`` would accept ``"x\\n"``), and even a caller that
still uses :meth:`re.Pattern.match` gets a whole-string check. Every rule raises an
:class:`~orchestrator.errors.InputError` naming the field, or, for pydantic
validators, gives the problem as text (:meth:`Rule.problem`).

Imports nothing of the package but :mod:`orchestrator.errors` and
:mod:`orchestrator.money`, so every room (the wire layer too) may use it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import TypeVar
from urllib.parse import urlsplit

from orchestrator.errors import InputError
from orchestrator.money import MICRO_PER_USD

T = TypeVar("T")

__all__ = [
    "CAP_MAX_USD",
    "CAP_MIN_USD",
    "IDEMPOTENCY_KEY",
    "JOB_ID",
    "JOB_LIMIT_MAX_SECONDS",
    "KEY_PREFIX",
    "LIMIT_MAX",
    "LIST_CURSOR",
    "SCHEDULE_ID",
    "TAG_KEY",
    "TAG_VALUE",
    "WORKER_ID",
    "Rule",
    "cap_usd",
    "check_validator",
    "day",
    "duration_seconds",
    "input_problem",
    "input_text",
    "job_limit",
    "job_limit_problem",
    "limit_value",
    "new_cap_usd",
    "positive_seconds",
    "problem_validator",
    "reason_text",
    "retention_by_tag",
    "shown",
    "tag",
]


def shown(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut short: an error message never carries a huge value."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class Rule:
    """A whole-string pattern for one kind of identifier."""

    what: str  # "a tag key": for messages
    regex: re.Pattern[str]
    hint: str  # the pattern in words

    @property
    def pattern(self) -> str:
        return self.regex.pattern

    def ok(self, value: object) -> bool:
        return isinstance(value, str) and self.regex.fullmatch(value) is not None

    def problem(self, value: object) -> str | None:
        """None if ``value`` passes, else what is wrong (without the field name)."""
        if self.ok(value):
            return None
        return f"{shown(value)} is not {self.what} ({self.hint})"

    def check(self, value: object, field: str) -> str:
        """``value`` if it passes; InputError naming ``field`` otherwise."""
        problem = self.problem(value)
        if problem is not None:
            raise InputError(field, problem)
        assert isinstance(value, str)
        return value

    def validator(self, value: str) -> str:
        """For pydantic (``AfterValidator`` / ``field_validator``): ValueError if bad."""
        problem = self.problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    def quiet_validator(self, value: str) -> str:
        """:meth:`validator` whose message never echoes the value (settings: a rejected
        value may be a secret put in the wrong variable)."""
        if not self.ok(value):
            raise ValueError(f"must be {self.what} ({self.hint})")
        return value


def check_validator(check: Callable[[T], object]) -> Callable[[T], T]:
    """A pydantic validator (``AfterValidator``) of a rule that raises InputError: a
    ValueError with its message (pydantic names the field); a value that passes is kept
    as given, not as the rule parses it."""

    def validate(value: T) -> T:
        try:
            check(value)
        except InputError as exc:
            raise ValueError(exc.message) from None
        return value

    return validate


def problem_validator(problem: Callable[[T], str | None]) -> Callable[[T], T]:
    """A pydantic validator (``AfterValidator``) of a rule that gives its problem as
    text (None: the value passes): a ValueError with that text."""

    def validate(value: T) -> T:
        text = problem(value)
        if text is not None:
            raise ValueError(text)
        return value

    return validate


def _rule(what: str, body: str, hint: str) -> Rule:
    return Rule(what, re.compile(rf"\A{body}\Z"), hint)


TAG_KEY = _rule("a tag key", r"[a-z][a-z0-9_.-]{0,62}", "a-z, then up to 62 of a-z 0-9 _ . -")
TAG_VALUE = _rule("a tag value", r"[A-Za-z0-9_.:@+-]{1,128}", "1-128 of A-Z a-z 0-9 _ . : @ + -")
IDEMPOTENCY_KEY = _rule(
    "an idempotency key", r"[A-Za-z0-9_.:@+=-]{1,200}", "1-200 of A-Z a-z 0-9 _ . : @ + = -"
)
#: Our ids of upstream workers, and every worker id the upstream answers with: they
#: name Redis keys and file directories, so only these characters ever pass.
WORKER_ID = _rule("a worker id", r"[A-Za-z0-9_-]{1,128}", "1-128 of A-Z a-z 0-9 _ -")
JOB_ID = _rule("a job id", r"job_[A-Za-z0-9_-]{1,64}", "job_ then 1-64 of A-Z a-z 0-9 _ -")
SCHEDULE_ID = _rule(
    "a schedule id", r"sch_[A-Za-z0-9_-]{1,64}", "sch_ then 1-64 of A-Z a-z 0-9 _ -"
)
#: Where a page of the gateway's job list goes on: ``<creation ms>.<job id>``.
LIST_CURSOR = _rule(
    "a list cursor", r"[0-9]{1,15}\.job_[A-Za-z0-9_-]{1,64}", "as returned in next_cursor"
)
#: Webhook subscriptions and their deliveries (made here, hex after the prefix).
SUBSCRIPTION_ID = _rule("a subscription id", r"whk_[0-9a-f]{16}", "whk_ then 16 of 0-9 a-f")
TOKEN_ID = _rule("a token id", r"tok_[0-9a-f]{16}", "tok_ then 16 of 0-9 a-f")
DELIVERY_ID = _rule("a delivery id", r"dlv_[0-9a-f]{32}", "dlv_ then 32 of 0-9 a-f")
KEY_PREFIX = _rule("a key prefix", r"[A-Za-z0-9_.:-]{1,64}", "1-64 of A-Z a-z 0-9 _ . : -")

#: The largest concurrency limit (a larger one means no limit: remove it instead).
LIMIT_MAX = 10_000
#: A budget cap is at least one micro-dollar (a smaller one rounds to 0) ...
CAP_MIN_USD = Decimal(1) / MICRO_PER_USD
#: ... and at most a billion USD.
CAP_MAX_USD = Decimal("1e9")


def tag(key: object, value: object, field: str = "tags") -> tuple[str, str]:
    """A tag ``key=value`` pair, both parts checked; InputError naming ``field``."""
    return TAG_KEY.check(key, field), TAG_VALUE.check(value, field)


def limit_value(value: object, field: str = "limit") -> int:
    """A concurrency limit: an int (not a bool), 1..:data:`LIMIT_MAX`."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InputError(field, f"{shown(value)} is not a whole number")
    if not 1 <= value <= LIMIT_MAX:
        raise InputError(field, f"must be between 1 and {LIMIT_MAX}, not {shown(value)}")
    return value


#: A job's queue time-to-live, idle timeout or deadline: at least a millisecond (what
#: the store keeps), at most 31 days.
JOB_LIMIT_MIN_SECONDS = 0.001
JOB_LIMIT_MAX_SECONDS = 31 * 86_400


def job_limit_problem(value: object) -> str | None:
    """What is wrong with a job limit in seconds, or None: a number (not a bool),
    finite, from a millisecond to :data:`JOB_LIMIT_MAX_SECONDS`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{shown(value)} is not a number of seconds"
    if not JOB_LIMIT_MIN_SECONDS <= value <= JOB_LIMIT_MAX_SECONDS:  # NaN fails too
        return (
            f"must be between {JOB_LIMIT_MIN_SECONDS} and {JOB_LIMIT_MAX_SECONDS} seconds,"
            f" not {shown(value)}"
        )
    return None


def job_limit(value: object, field: str) -> float:
    """A job limit in seconds (see :func:`job_limit_problem`); InputError naming ``field``."""
    problem = job_limit_problem(value)
    if problem is not None:
        raise InputError(field, problem)
    assert isinstance(value, int | float)
    return float(value)


def positive_seconds(value: object, field: str = "timeout") -> float:
    """A duration in seconds: a finite number above 0 (``nan`` and ``inf`` refused)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(field, f"{shown(value)} is not a number of seconds")
    if not math.isfinite(value) or value <= 0:
        raise InputError(field, f"must be a finite positive number of seconds, not {value}")
    return float(value)


def cap_problem(value: Decimal) -> str | None:
    """What is wrong with a budget cap in USD, or None."""
    if not value.is_finite():
        return "must be a finite amount"
    if value < CAP_MIN_USD:
        return f"must be at least {CAP_MIN_USD} USD (one micro-dollar)"
    if value > CAP_MAX_USD:
        return f"must be at most {CAP_MAX_USD:f} USD"
    return None


def cap_usd(value: object, field: str = "limit_usd") -> Decimal:
    """A budget cap in USD: a Decimal (or int, or decimal text), finite, at least one
    micro-dollar, at most :data:`CAP_MAX_USD`. Floats and bools are refused (inexact)."""
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise InputError(field, f"{shown(value)} is not an amount (give a Decimal or text)")
    try:
        amount = Decimal(value.strip() if isinstance(value, str) else value)
    except (InvalidOperation, ValueError):
        raise InputError(field, f"{shown(value)} is not an amount") from None
    problem = cap_problem(amount)
    if problem is not None:
        raise InputError(field, problem)
    return amount


def new_cap_usd(value: object, field: str = "limit_usd") -> Decimal:
    """A budget cap being set: :func:`cap_usd`, in whole micro-dollars. A finer one was
    kept as given and enforced rounded (1.0000001 as $1.000000). Stored caps are read
    with :func:`cap_usd` alone, so one set before this rule still loads."""
    amount = cap_usd(value, field)
    if amount != amount.quantize(CAP_MIN_USD):
        raise InputError(field, f"{amount} is finer than a micro-dollar (6 decimals at most)")
    return amount


def input_problem(value: str) -> str | None:
    """What is wrong with a job's input text, or None: empty, only whitespace, a control
    character (tab, CR and LF are text; other C0, DEL and C1 are not), or a lone
    surrogate (no UTF-8 for it: it could be neither stored nor sent)."""
    if not value.strip():
        return "must not be empty or only whitespace"
    for c in value:
        if (ord(c) < 32 and c not in "\n\r\t") or 127 <= ord(c) < 160:
            return f"contains control character {ord(c):#04x}"
        if 0xD800 <= ord(c) <= 0xDFFF:  # a lone surrogate (e.g. from JSON "\ud800")
            return "is not valid Unicode text (a lone surrogate)"
    return None


#: The longest reason a cancel takes (kept in the job's history).
REASON_MAX_CHARS = 500


def reason_text(value: object, field: str = "reason") -> str:
    """A cancel's reason: text as for an input (:func:`input_problem`), stripped, at most
    :data:`REASON_MAX_CHARS` characters; InputError naming ``field``."""
    text = input_text(value, field).strip()
    if len(text) > REASON_MAX_CHARS:
        raise InputError(field, f"is {len(text)} characters; the limit is {REASON_MAX_CHARS}")
    return text


def input_text(value: object, field: str = "input") -> str:
    """A job's input text; InputError naming ``field``."""
    if not isinstance(value, str):
        raise InputError(field, "must be text")
    problem = input_problem(value)
    if problem is not None:
        raise InputError(field, problem)
    return value


#: What a webhook subscription may ask for (see docs/gateway.md, Webhooks).
WEBHOOK_EVENTS = (
    "job.completed", "job.failed", "job.cancelled", "job.expired", "job.timed_out",
    "budget.threshold",
)  # fmt: skip
WEBHOOK_URL_MAX_CHARS = 2048
_URL_CHARS = re.compile(r"\A[\x21-\x7e]+\Z")


def webhook_url(value: object, field: str = "url") -> str:
    """A webhook target: an absolute http(s) URL with a host, no user or password, printable
    ASCII only (whether its addresses may be reached is checked when it is resolved)."""
    if not isinstance(value, str) or not value:
        raise InputError(field, "must be an http or https URL")
    if len(value) > WEBHOOK_URL_MAX_CHARS:
        raise InputError(field, f"is over {WEBHOOK_URL_MAX_CHARS} characters")
    if not _URL_CHARS.fullmatch(value):
        raise InputError(field, "must be printable ASCII without spaces")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise InputError(field, f"{shown(value)} is not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(field, "must be an http or https URL with a host")
    if parts.username is not None or parts.password is not None:
        raise InputError(field, "must not carry a user or password")
    if port == 0:
        raise InputError(field, "port 0 cannot be reached")
    return value


def webhook_events(value: object, field: str = "events") -> list[str]:
    """A subscription's events: a non-empty list of known names, each once (sorted)."""
    if not isinstance(value, list) or not value:
        raise InputError(field, f"give one or more of {', '.join(WEBHOOK_EVENTS)}")
    for name in value:
        if name not in WEBHOOK_EVENTS:
            raise InputError(field, f"{shown(name)} is not one of {', '.join(WEBHOOK_EVENTS)}")
    return sorted(set(value))


#: A UTC day as text: exactly ``YYYY-MM-DD``; a date-time or a timestamp is not a day.
_DAY = re.compile(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")


def day(value: object, field: str = "date") -> date:
    """Text exactly ``YYYY-MM-DD`` (the CLI's and the gateway's form) as a date;
    InputError naming ``field``."""
    if isinstance(value, str) and _DAY.fullmatch(value):
        try:
            return date.fromisoformat(value)
        except ValueError:  # e.g. 2026-02-30
            pass
    raise InputError(field, f"{shown(value)} is not a date YYYY-MM-DD")


#: Durations (retention): a whole number and a unit, ``30s``, ``15m``, ``12h``, ``7d``.
_DURATION = re.compile(r"\A([0-9]{1,6})([smhd])\Z")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
#: The longest duration taken: ten years.
DURATION_MAX_SECONDS = 3650 * 86_400


def duration_seconds(value: object, field: str = "retention") -> int:
    """A duration like ``7d``, ``12h``, ``15m`` or ``30s`` in seconds (1 s to ten years);
    InputError naming ``field``."""
    match = _DURATION.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise InputError(field, f"{shown(value)} is not a duration like 7d, 12h, 15m or 30s")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not 1 <= seconds <= DURATION_MAX_SECONDS:
        raise InputError(field, f"{shown(value)} must be between 1s and 3650d")
    return seconds


def retention_by_tag(value: object, field: str = "retention_by_tag") -> dict[tuple[str, str], int]:
    """Per-tag retention overrides, ``key=value=duration`` comma-separated (``tenant=acme=30d,
    tier=gold=90d``), as {(key, value): seconds}; InputError naming ``field``."""
    if not isinstance(value, str):
        raise InputError(field, "must be text like tenant=acme=30d")
    out: dict[tuple[str, str], int] = {}
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        pieces = part.rsplit("=", 2)
        if len(pieces) != 3:
            raise InputError(field, f"{shown(part)} is not key=value=duration")
        key, tag_value = tag(pieces[0].strip(), pieces[1].strip(), field)
        out[(key, tag_value)] = duration_seconds(pieces[2].strip(), field)
    return out
