# ruff: noqa: F811  (the world fixture is imported by name)
"""Bad input corpus, the Python API: ``Orchestrator`` (jobs, limits, budgets, costs,
schedules) refuses bad input with an error naming the field, writes nothing under the
caller's key prefix and enqueues nothing (the broker's ``api`` list keeps its length).
Valid unicode is accepted wherever text is; file paths never escape their directory.
The CLI and settings: tests/test_bad_input_cli.py; the emulator and a malformed
upstream: tests/test_bad_input_upstream.py.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import InputError, UnknownIdError
from orchestrator.facade import Orchestrator
from orchestrator.jobs.files import safe_path
from orchestrator.settings import load_settings

from .bad_input import World, world  # noqa: F401
from .conftest import Emulator

# --- the Python API --------------------------------------------------------------------

Call = Callable[[Orchestrator], Any]
EVERY = {"type": "interval", "intervalSeconds": 60}

API: list[tuple[str, Call, str]] = [
    ("input int", lambda o: o.submit(123), "input"),
    ("input None", lambda o: o.submit(None), "input"),
    ("input bytes", lambda o: o.submit(b"raw bytes"), "input"),
    ("input empty", lambda o: o.submit(""), "input"),
    ("input whitespace", lambda o: o.submit(" \t\n "), "input"),
    ("input NUL", lambda o: o.submit("a\x00b"), "input"),
    ("input ESC sequence", lambda o: o.submit("\x1b[2J\x1b[31mred"), "input"),
    ("input DEL", lambda o: o.submit("a\x7fb"), "input"),
    ("input C1 CSI", lambda o: o.submit("a\x9b31mb"), "input"),
    ("input huge", lambda o: o.submit("x" * 1001), "input"),
    ("input huge unicode", lambda o: o.submit("🚀" * 1001), "input"),
    ("budget unknown", lambda o: o.submit("x", budget="huge"), "budget"),
    ("budget int", lambda o: o.submit("x", budget=3), "budget"),
    ("tags list", lambda o: o.submit("x", tags=["a"]), "tags"),
    ("tag value int", lambda o: o.submit("x", tags={"a": 1}), "tags.a"),
    ("17 tags", lambda o: o.submit("x", tags={f"k{i}": "v" for i in range(17)}), "tags"),
    ("tag key upper", lambda o: o.submit("x", tags={"Tenant": "a"}), "tags"),
    ("tag value unicode", lambda o: o.submit("x", tags={"tenant": "zürich"}), "tags"),
    ("idempotency traversal", lambda o: o.submit("x", idempotency_key="../etc"), "idempotency_key"),
    ("idempotency huge", lambda o: o.submit("x", idempotency_key="k" * 201), "idempotency_key"),
    ("fetch_files str", lambda o: o.submit("x", fetch_files="yes"), "fetch_files"),
    ("priority unknown", lambda o: o.submit("x", priority="urgent"), "priority"),
    ("continue traversal", lambda o: o.continue_("../../etc/passwd", "x"), "worker_id"),
    ("continue empty", lambda o: o.continue_("", "x"), "worker_id"),
    ("continue unknown job", lambda o: o.continue_("job_nope", "x"), "job_id"),
    ("continue unknown worker", lambda o: o.continue_("wrk_nosuchworker", "x"), "worker_id"),
    ("get not an id", lambda o: o.get("nope"), "job_id"),
    ("get int", lambda o: o.get(5), "job_id"),
    ("costs by month", lambda o: o.costs(by="month"), "by"),
    ("costs since by tag", lambda o: o.costs(by="tag", since=date(2026, 1, 1)), "since"),
    ("costs since text", lambda o: o.costs(by="job", since="2026-01-01"), "since"),
    ("costs until int", lambda o: o.costs(by="day", until=5), "until"),
    ("costs since datetime", lambda o: o.costs(since=datetime(2026, 11, 1)), "since"),
    ("costs limit text", lambda o: o.costs(by="job", limit="5"), "limit"),
    ("wait timeout text", lambda o: o.wait("job_x", timeout="a"), "timeout"),
    ("wait timeout nan", lambda o: o.wait("job_x", timeout=float("nan")), "timeout"),
    ("email unknown worker", lambda o: o.email("wrk_nosuchworker"), "worker_id"),
    ("email traversal", lambda o: o.email("../x"), "worker_id"),
    ("pause unknown schedule", lambda o: o.schedules.pause("sch_nope"), "schedule_id"),
    ("schedule input control", lambda o: o.schedules.create(None, "a\x00", EVERY), "input"),
    ("schedule unknown worker", lambda o: o.schedules.create("wrk_nope", "x", EVERY), "worker_id"),
    (
        "schedule tag key upper",
        lambda o: o.schedules.create(None, "x", EVERY, tags={"Tenant": "a"}),
        "tags",
    ),
    ("schedule tags list", lambda o: o.schedules.create(None, "x", EVERY, tags=["a"]), "tags"),
    (
        "schedule tag newline",
        lambda o: o.schedules.create(None, "x", EVERY, tags={"tenant": "a\n"}),
        "tags",
    ),
]


CRON, INTERVAL, DELAY, AT = "cron", "interval", "delayed", "scheduled"
DAILY = {"type": CRON, "cron": "0 7 * * *"}
SCHEDULES: list[tuple[str, Any, dict[str, Any], str]] = [
    ("cron minute 61", {"type": CRON, "cron": "61 * * * *"}, {}, "when.cron"),
    ("cron 6 fields", {"type": CRON, "cron": "* * * * * *"}, {}, "when.cron"),
    ("cron injection", {"type": CRON, "cron": "0 7 * * *; rm -rf /"}, {}, "when.cron"),
    ("interval negative", {"type": INTERVAL, "intervalSeconds": -5}, {}, "when.interval_seconds"),
    ("interval zero", {"type": INTERVAL, "intervalSeconds": 0}, {}, "when.interval_seconds"),
    ("interval huge", {"type": INTERVAL, "intervalSeconds": 10**30}, {}, "when.interval_seconds"),
    ("interval text", {"type": INTERVAL, "intervalSeconds": "often"}, {}, "when.interval_seconds"),
    ("interval fraction", {"type": INTERVAL, "intervalSeconds": 1.5}, {}, "when.interval_seconds"),
    # A JSON integer only: true was taken as 1 s (a schedule firing every second).
    ("interval true", {"type": INTERVAL, "intervalSeconds": True}, {}, "when.interval_seconds"),
    ("interval digits", {"type": INTERVAL, "intervalSeconds": "60"}, {}, "when.interval_seconds"),
    ("interval 60.0", {"type": INTERVAL, "intervalSeconds": 60.0}, {}, "when.interval_seconds"),
    ("delay true", {"type": DELAY, "delayInSeconds": True}, {}, "when.delay_in_seconds"),
    # A key the kind does not take was dropped unseen.
    ("when unknown key", {**EVERY, "jitter": 5}, {}, "when.jitter"),
    ("date misspelt at", {"type": AT, "at": "2099-01-01T07:00:00Z"}, {}, "when.date"),
    ("delay negative", {"type": DELAY, "delayInSeconds": -1}, {}, "when.delay_in_seconds"),
    ("delay huge", {"type": DELAY, "delayInSeconds": 10**15}, {}, "when.delay_in_seconds"),
    ("date past", {"type": AT, "date": "2001-01-01T00:00:00Z"}, {}, "when.date"),
    ("date naive", {"type": AT, "date": "2099-01-01T07:00:00"}, {}, "when.date"),
    ("date garbage", {"type": AT, "date": "next tuesday"}, {}, "when.date"),
    ("kind unknown", {"type": "sometimes"}, {}, "when"),
    ("kind missing", {"kind": CRON, "cron": "0 7 * * *"}, {}, "when"),
    ("when text", "every day", {}, "when"),
    ("timezone unknown", DAILY, {"timezone": "Mars/Olympus"}, "timezone"),
    ("timezone traversal", DAILY, {"timezone": "../../etc/passwd"}, "timezone"),
    ("catch_up unknown", EVERY, {"catch_up": "all"}, "catch_up"),
    ("overlap unknown", EVERY, {"overlap": "queue"}, "overlap"),
]
API += [
    (name, lambda o, w=when, kw=kwargs: o.schedules.create(None, "x", w, **kw), field)
    for name, when, kwargs, field in SCHEDULES
]
# Whole-string rules (issue #13): a trailing newline, a key separator or a wrong type
# never passes, and nothing is written for it (``re.match("^…$")`` accepted "x\n").
CAP = "tag:tenant=acme"
API += [
    ("idempotency newline", lambda o: o.submit("x", idempotency_key="k-42\n"), "idempotency_key"),
    ("tag value newline", lambda o: o.submit("x", tags={"tenant": "acme\n"}), "tags"),
    ("tag key newline", lambda o: o.submit("x", tags={"tenant\n": "acme"}), "tags"),
    ("schedule_id free text", lambda o: o.submit("x", schedule_id="any text"), "schedule_id"),
    ("schedule_id newline", lambda o: o.submit("x", schedule_id="sch_abc\n"), "schedule_id"),
    ("schedule_id unknown", lambda o: o.submit("x", schedule_id="sch_" + "0" * 32), "schedule_id"),
    ("continue worker newline", lambda o: o.continue_("wrk_1\n", "x"), "worker_id"),
    ("continue worker key", lambda o: o.continue_("victim:schedules", "x"), "worker_id"),
    ("continue job newline", lambda o: o.continue_("job_x\n", "x"), "job_id"),
    ("get history key", lambda o: o.get("job_x:history"), "job_id"),
    ("get newline", lambda o: o.get("job_x\n"), "job_id"),
    ("history key", lambda o: o.history("job_x:history"), "job_id"),
    ("worker traversal", lambda o: o.worker("job_x/../y"), "job_id"),
    ("files key", lambda o: o.files("job_x:files"), "job_id"),
    ("wait key", lambda o: o.wait("job_x:history", timeout=1), "job_id"),
    ("updates key", lambda o: list(o.updates("job_x:history", block=False)), "job_id"),
    ("email newline", lambda o: o.email("wrk_1\n"), "worker_id"),
    ("limit True", lambda o: o.limits.set(CAP, True), "limit"),
    ("limit 10**30", lambda o: o.limits.set(CAP, 10**30), "limit"),
    ("limit float", lambda o: o.limits.set(CAP, 2.0), "limit"),
    ("limit zero", lambda o: o.limits.set(CAP, 0), "limit"),
    ("limit key newline", lambda o: o.limits.set(CAP + "\n", 1), "key"),
    ("limit remove newline", lambda o: o.limits.remove(CAP + "\n"), "key"),
    ("cap 1e-10", lambda o: o.budgets.set_cap(scope=CAP, limit_usd=Decimal("1e-10")), "limit_usd"),
    ("cap NaN", lambda o: o.budgets.set_cap(scope=CAP, limit_usd=Decimal("NaN")), "limit_usd"),
    ("cap float", lambda o: o.budgets.set_cap(scope=CAP, limit_usd=5.5), "limit_usd"),
    ("cap bool", lambda o: o.budgets.set_cap(scope=CAP, limit_usd=True), "limit_usd"),
    ("cap 1e308", lambda o: o.budgets.set_cap(scope=CAP, limit_usd=Decimal("1e308")), "limit_usd"),
    ("cap scope newline", lambda o: o.budgets.set_cap(scope=CAP + "\n", limit_usd=1), "scope"),
    # Finer than a micro-dollar: it was kept as given and enforced rounded ($1.000000).
    ("cap 7 decimals", lambda o: o.budgets.set_cap(scope=CAP, limit_usd="1.0000001"), "limit_usd"),
    ("cap remove period", lambda o: o.budgets.remove_cap(CAP, period="week"), "period"),  # type: ignore[arg-type]
    ("schedule get newline", lambda o: o.schedules.get("sch_abc\n"), "schedule_id"),
    ("schedule cancel key", lambda o: o.schedules.cancel("sch_abc:runs"), "schedule_id"),
]  # fmt: skip


@pytest.mark.parametrize(("call", "field"), [c[1:] for c in API], ids=[c[0] for c in API])
def test_python_api_refuses(world: World, call: Call, field: str) -> None:
    with pytest.raises(InputError) as caught:
        call(world.orch)
    assert caught.value.field == field, str(caught.value)
    assert caught.value.message and "Traceback" not in caught.value.message


@pytest.mark.parametrize("worker", ["../x", "wrk_1\n", "victim:schedules", ""])
def test_schedules_check_a_worker_id_by_the_rules_before_asking_anyone(
    world: World, worker: str
) -> None:
    """The id rules' message, not a 404 from the upstream or the URL builder's own."""
    for call in (
        lambda: world.orch.schedules.create(worker, "x", EVERY),
        lambda: world.orch.schedules.import_upstream(worker),
        lambda: world.orch.schedules.list(worker),
    ):
        with pytest.raises(InputError) as caught:
            call()
        assert caught.value.field == "worker_id"
        assert "is not a worker id" in caught.value.message, caught.value.message


def test_a_well_formed_job_id_that_names_no_job_is_an_unknown_id(world: World) -> None:
    """As an unknown worker or schedule id is (the HTTP API's 404), not plain bad input."""
    nobody = "job_" + "0" * 32
    for call in (
        lambda: world.orch.get(nobody),
        lambda: world.orch.cancel(nobody),
        lambda: world.orch.continue_(nobody, "x"),
        lambda: world.orch.schedules.create(nobody, "x", EVERY),
    ):
        with pytest.raises(UnknownIdError) as caught:
            call()
        assert caught.value.field == "job_id"


def test_a_continue_checks_its_fields_before_asking_the_api_about_the_worker(
    world: World, emulator: Emulator
) -> None:
    """An empty input, a bad tier or bad tags are refused before the worker lookup: no
    request reaches the upstream (an unreachable one made the refusal wait out its
    retries)."""
    asked = emulator.ledger()["requests"]
    for kwargs, field in (
        ({"input": ""}, "input"), ({"input": "x", "budget": "cheap"}, "budget"),
        ({"input": "x", "tags": {"bad key": "v"}}, "tags"),
    ):  # fmt: skip
        with pytest.raises(InputError) as caught:
            world.orch.continue_("wrk_nosuchworker", **kwargs)
        assert caught.value.field.split(".")[0] == field, caught.value
    assert emulator.ledger()["requests"] == asked


def test_a_when_without_its_type_names_the_key_and_its_values(world: World) -> None:
    with pytest.raises(InputError) as caught:
        world.orch.schedules.create(None, "x", {"kind": "cron", "cron": "0 7 * * *"})
    assert caught.value.field == "when"
    assert '"type"' in caught.value.message and "interval" in caught.value.message


# fmt: off
VALID_TEXT = ["Grüße aus Köln", "你好 世界", "emoji 🚀✨ and ZWJ 👩‍💻", "עברית\u202eRTL",
              "tab\tand\nnewline"]
# fmt: on


@pytest.mark.parametrize("text", VALID_TEXT)
def test_valid_unicode_is_accepted_and_kept_exactly(
    redis_url: str, key_prefix: str, emulator: Emulator, text: str
) -> None:
    settings = load_settings(
        redis_url=redis_url,
        key_prefix=key_prefix,
        workers_api_url=emulator.url,
        workers_api_key=emulator.api_key,
    )
    with Orchestrator(settings) as orch:
        job = orch.submit(text, tags={"tenant": "ok"})
        assert orch.get(job.id).input == text
        schedule = orch.schedules.create(None, text, EVERY)
        assert schedule.input == text
    answer = emulator.http.post("/api/workers", json={"input": text})
    assert answer.status_code == 200, answer.text


def test_a_job_id_naming_another_key_is_refused_not_wrongtype(world: World) -> None:
    """``get("<job id>:history")`` named the job's history stream: a raw WRONGTYPE once."""
    job = world.orch.store.require_job(world.orch.submit("x").id)
    try:
        for call in (world.orch.get, world.orch.history, world.orch.files, world.orch.worker):
            with pytest.raises(InputError) as caught:
                call(f"{job.id}:history")
            assert caught.value.field == "job_id"
    finally:  # the world fixture checks that nothing else was written
        world.r.delete(*world.r.scan_iter(f"{world.prefix}:*"))
        world.r.delete(world.orch.store.keys.broker_queue("api"))


# --- file paths ------------------------------------------------------------------------

# fmt: off
EVIL_PATHS = ["../secret", "../../etc/passwd", "/etc/passwd", "a/../../b", "a/./b", "..\\x",
              "a\\..\\b", "a\x00.txt", "", ".", "a//b", "C:\\Windows"]
# fmt: on


@pytest.mark.parametrize("name", EVIL_PATHS)
def test_file_paths_that_escape_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(InputError) as caught:
        safe_path(tmp_path, name)
    assert caught.value.field == "file_path"


def test_unicode_file_names_stay_inside(tmp_path: Path, emulator: Emulator) -> None:
    assert safe_path(tmp_path, "résumé/年报.txt") == tmp_path.resolve() / "résumé" / "年报.txt"
    worker = emulator.http.post("/api/workers", json={"input": "x"}).json()["id"]
    for path in ("../../etc/passwd", "%2e%2e/%2e%2e/etc/passwd", "..%2fsecret"):
        answer = emulator.http.get(f"/api/workers/{worker}/files/{path}")
        assert answer.status_code == 404, (path, answer.status_code)
