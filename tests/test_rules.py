"""The identifier and value rules (``orchestrator.rules``) and the places that use them.

Every rule matches the whole string: a trailing newline (which ``re.match("^…$")``
let through), a leading one, a control character or an overlong value is refused,
with an :class:`InputError` naming the field. Pure: no Redis, no HTTP.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from orchestrator import rules
from orchestrator.controls.budgets import BudgetCap, parse_scope
from orchestrator.controls.limits import check_limit_key
from orchestrator.errors import ConfigError, InputError
from orchestrator.jobs.model import IDEMPOTENCY_KEY, TAG_KEY, TAG_VALUE, parse_tag
from orchestrator.jobs.model import validate_submission as _validate
from orchestrator.schedules.timing import SCHEDULE_ID
from orchestrator.settings import load_settings
from orchestrator.wire.models import ScheduleList, Worker

GOOD: list[tuple[rules.Rule, str]] = [
    (rules.TAG_KEY, "tenant"),
    (rules.TAG_VALUE, "acme"),
    (rules.IDEMPOTENCY_KEY, "order-42"),
    (rules.WORKER_ID, "wrk_0123abc"),
    (rules.JOB_ID, "job_" + "a" * 32),
    (rules.SCHEDULE_ID, "sch_" + "b" * 32),
    (rules.KEY_PREFIX, "orch"),
]
# What each good value becomes when a hostile caller bends it.
BENDS = {
    "trailing newline": lambda v: v + "\n",
    "trailing CRLF": lambda v: v + "\r\n",
    "leading newline": lambda v: "\n" + v,
    "inner newline": lambda v: v[:2] + "\n" + v[2:],
    "NUL": lambda v: v + "\x00",
    "tab": lambda v: v + "\t",
    "space": lambda v: v + " ",
    "unicode lookalike": lambda v: v + "\u0430",  # Cyrillic a
    "fullwidth digit": lambda v: v + "\uff11",
    "overlong": lambda v: v + "x" * 300,
    "path": lambda v: v + "/../x",
    "redis key separator": lambda v: v + ":history" if ":" not in v else v + "/x",
}


def rule_id(item: tuple[rules.Rule, str]) -> str:
    return item[0].what


@pytest.mark.parametrize("item", GOOD, ids=rule_id)
def test_good_values_pass(item: tuple[rules.Rule, str]) -> None:
    rule, value = item
    assert rule.ok(value) and rule.check(value, "f") == value and rule.problem(value) is None


@pytest.mark.parametrize("bend", list(BENDS), ids=str)
@pytest.mark.parametrize("item", GOOD, ids=rule_id)
def test_bent_values_are_refused_naming_the_field(item: tuple[rules.Rule, str], bend: str) -> None:
    rule, value = item
    bad = BENDS[bend](value)
    if bend == "redis key separator" and rule in (rules.TAG_VALUE, rules.IDEMPOTENCY_KEY):
        return  # ':' is allowed in those two (they never name a key on their own)
    if bend == "redis key separator" and rule is rules.KEY_PREFIX:
        bad = value + "/x"
    assert not rule.ok(bad)
    with pytest.raises(InputError) as caught:
        rule.check(bad, "the_field")
    assert caught.value.field == "the_field"
    # The message names the value shortly, never a wall of it.
    assert len(caught.value.message) < 200


@pytest.mark.parametrize("item", GOOD, ids=rule_id)
def test_legacy_match_callers_are_whole_string_too(item: tuple[rules.Rule, str]) -> None:
    """Anchored with \\A…\\Z: a caller still using ``.match`` cannot be fooled either."""
    rule, value = item
    assert rule.regex.match(value)
    assert rule.regex.match(value + "\n") is None
    assert rule.regex.match(value + ":x/y") is None


@pytest.mark.parametrize("value", [None, 5, b"acme", ["acme"], 1.5, True])
def test_non_text_is_refused(value: Any) -> None:
    for rule, _ in GOOD:
        with pytest.raises(InputError):
            rule.check(value, "f")


def test_the_model_names_use_the_rules() -> None:
    assert TAG_KEY.match("tenant\n") is None
    assert SCHEDULE_ID.match("sch_abc\n") is None
    assert TAG_VALUE.match("acme\n") is None
    assert IDEMPOTENCY_KEY.match("order-42\n") is None


# --- submissions ---------------------------------------------------------------------


def validate(**fields: Any) -> Any:
    return _validate(1000, **{"input": "x", **fields})


SUBMISSIONS: list[tuple[str, dict[str, Any], str]] = [
    ("idempotency newline", {"idempotency_key": "order-42\n"}, "idempotency_key"),
    ("tag value newline", {"tags": {"tenant": "acme\n"}}, "tags"),
    ("tag key newline", {"tags": {"tenant\n": "acme"}}, "tags"),
    ("worker id newline", {"kind": "continue", "worker_id": "wrk_1\n"}, "worker_id"),
    ("worker id traversal", {"kind": "continue", "worker_id": "../up"}, "worker_id"),
    ("schedule id text", {"schedule_id": "anything at all"}, "schedule_id"),
    ("schedule id newline", {"schedule_id": "sch_abc\n"}, "schedule_id"),
    ("schedule id job", {"schedule_id": "job_abc"}, "schedule_id"),
    ("schedule id int", {"schedule_id": 5}, "schedule_id"),
    ("input NUL", {"input": "a\x00"}, "input"),
    ("input only newlines", {"input": "\n\n"}, "input"),
]


@pytest.mark.parametrize(
    ("fields", "field"), [s[1:] for s in SUBMISSIONS], ids=[s[0] for s in SUBMISSIONS]
)
def test_submission_refuses(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(InputError) as caught:
        validate(**fields)
    assert caught.value.field == field, str(caught.value)


def test_submission_accepts_a_schedule_id_and_newlines_inside_input() -> None:
    sub = validate(schedule_id="sch_" + "0" * 32, input="line one\nline two\n")
    assert sub.schedule_id == "sch_" + "0" * 32 and sub.input.endswith("\n")


@pytest.mark.parametrize("text", ["tenant=acme\n", "tenant\n=acme", "tenant=", "=acme", "tenant"])
def test_cli_tags_refused(text: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_tag(text)
    assert caught.value.field == "tags"


# --- controls ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scope", ["tag:tenant=acme\n", "global\n", "tag:tenant\n=acme", "tag:tenant=a/b", "", 5]
)
def test_budget_scopes_refused(scope: Any) -> None:
    with pytest.raises(InputError) as caught:
        parse_scope(scope)
    assert caught.value.field == "scope"


@pytest.mark.parametrize(
    "key", ["tag:tenant=acme\n", "budget:low\n", "tag:tenant\n=acme", "budget:", "x", 5, None]
)
def test_limit_keys_refused(key: Any) -> None:
    with pytest.raises(InputError) as caught:
        check_limit_key(key)
    assert caught.value.field == "key"


def test_limit_keys_accepted() -> None:
    assert check_limit_key("tag:tenant=acme") == "tag:tenant=acme"
    assert check_limit_key("budget:high") == "budget:high"


@pytest.mark.parametrize("value", [True, False, 0, -1, 10_001, 10**30, 1.0, "5", None])
def test_limit_values_refused(value: Any) -> None:
    with pytest.raises(InputError) as caught:
        rules.limit_value(value)
    assert caught.value.field == "limit"


def test_limit_values_accepted() -> None:
    assert rules.limit_value(1) == 1 and rules.limit_value(rules.LIMIT_MAX) == rules.LIMIT_MAX


@pytest.mark.parametrize(
    "amount",
    [Decimal("1e-10"), Decimal("0.0000001"), Decimal(0), Decimal(-1), Decimal("NaN"),
     Decimal("Infinity"), Decimal("1e308"), Decimal("1000000000.000001")],
    ids=str,
)  # fmt: skip
def test_caps_refused(amount: Decimal) -> None:
    with pytest.raises(ValidationError) as caught:
        BudgetCap(scope="global", limit_usd=amount)
    assert caught.value.errors()[0]["loc"] == ("limit_usd",)
    with pytest.raises(InputError) as raised:
        rules.cap_usd(amount, "usd")
    assert raised.value.field == "usd"


@pytest.mark.parametrize("amount", ["1e-10", "nan", "-inf", "abc", "", 0.5, True, None])
def test_cap_text_refused(amount: Any) -> None:
    with pytest.raises(InputError) as caught:
        rules.cap_usd(amount, "usd")
    assert caught.value.field == "usd"


def test_caps_accepted_from_one_micro_dollar_to_the_ceiling() -> None:
    assert BudgetCap(scope="global", limit_usd=Decimal("0.000001")).limit_micro == 1
    assert BudgetCap(scope="global", limit_usd=rules.CAP_MAX_USD).limit_micro == 10**15
    assert rules.cap_usd("12.50") == Decimal("12.50") and rules.cap_usd(3) == 3


# --- settings ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("key_prefix", "orch\n"), ("key_prefix", "a b"), ("key_prefix", ""), ("key_prefix", "x" * 65),
     ("fair_share_tag", "tenant\n"), ("fair_share_tag", "Tenant")],
)  # fmt: skip
def test_settings_refuse_without_echoing(field: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(**{field: value, "redis_url": None})
    assert caught.value.variable == field.upper()
    assert value.strip() not in str(caught.value) or not value.strip()


# --- upstream answers ----------------------------------------------------------------

HOSTILE_WORKER_IDS = ["../../etc", "a/b", "", "victim:schedules", "../up", "w" * 129, "wrk\n",
                      "wrk 1", "wrk\x00", ".", "..", "wrk.1"]  # fmt: skip


@pytest.mark.parametrize("worker_id", HOSTILE_WORKER_IDS, ids=repr)
def test_upstream_worker_ids_are_checked(worker_id: str) -> None:
    with pytest.raises(ValidationError):
        Worker.model_validate_json(json.dumps({"id": worker_id}))
    with pytest.raises(ValidationError):
        Worker(id=worker_id)
    with pytest.raises(ValidationError):
        ScheduleList(schedules=[], worker_id=worker_id)


def test_upstream_worker_ids_accepted() -> None:
    assert Worker(id="wrk_" + "f" * 124).id.startswith("wrk_")
    assert ScheduleList(schedules=[], worker_id="wrk_1").worker_id == "wrk_1"


# --- input text ----------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "  ", "\n", "a\x00", "a\x1b[2J", "a\x7f", "a\x85", 5, None])
def test_input_text_refused(text: Any) -> None:
    with pytest.raises(InputError) as caught:
        rules.input_text(text)
    assert caught.value.field == "input"


@pytest.mark.parametrize("text", ["x", "tab\tand\nnewline\r\n", "Grüße 🚀", "עברית\u202e"])
def test_input_text_accepted(text: str) -> None:
    assert rules.input_text(text) == text
