"""Bad input corpus: every entry point refuses bad input with a clear error naming the
field, writes nothing under the caller's key prefix and enqueues nothing (the broker's
``api`` list keeps its length), and no traceback reaches a CLI user. Valid unicode is
accepted wherever text is. Covered: the Python API (``Orchestrator``), schedules, the
CLI (in process, and a sample as real subprocesses), settings from the environment, the
emulator over HTTP (422 naming the field), file paths, and a malformed upstream (a tiny
local HTTP server answering garbage, JSON and SSE): the client raises typed errors.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis

from orchestrator import cli
from orchestrator.errors import APIError, InputError, UnknownIdError
from orchestrator.facade import Orchestrator
from orchestrator.jobs.files import safe_path
from orchestrator.settings import load_settings
from orchestrator.wire.client import WorkersClient
from orchestrator.wire.retry import RetryPolicy

from .conftest import Emulator

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class World:
    orch: Orchestrator
    r: Any
    prefix: str
    env: dict[str, str]

    def state(self) -> tuple[int, list[str]]:
        """The broker's ``api`` queue length and every key under our prefix."""
        depth = self.r.llen(self.orch.store.keys.broker_queue("api"))
        return int(depth), sorted(self.r.scan_iter(f"{self.prefix}:*"))


@pytest.fixture
def world(
    redis_url: str,
    key_prefix: str,
    emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Iterator[World]:
    env = {
        "REDIS_URL": redis_url,
        "KEY_PREFIX": key_prefix,
        "MAX_INPUT_CHARS": "1000",
        "WORKERS_API_URL": emulator.url,
        "WORKERS_API_KEY": emulator.api_key,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)  # no .env here
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    with Orchestrator(load_settings()) as orch:
        world = World(orch, r, key_prefix, env)
        before = world.state()
        yield world
        assert world.state() == before, "something was written or enqueued"
    r.close()


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


# --- the command line ------------------------------------------------------------------

CLI = [
    (["submit", "\x1b[2J"], "error: input:"),
    (["submit", "ok", "--tag", "tenant=zürich"], "error: tags:"),
    (["submit", "ok", "--priority", "urgent"], "error: argument --priority"),
    (["status", "../../etc/passwd"], "error: job_id:"),
    (["tail", "job_x", "--timeout", "soon"], "error: argument --timeout"),
    (["costs", "--since", "2026-13-01"], "error: since:"),
    (["schedules", "create", "--input", "x", "--cron", "61 * * * *"], "error: when.cron:"),
    (["schedules", "create", "--input", "x", "--every", "-5"], "error: when.interval_seconds:"),
    (["schedules", "create", "--input", "x", "--at", "2001-01-01T00:00:00Z"], "error: when.date:"),
    (["schedules", "create", "--input", "x", "--in", "0"], "error: when.delay_in_seconds:"),
    (
        ["schedules", "create", "--input", "x", "--cron", "0 7 * * *", "--tz", "Nowhere/City"],
        "error: timezone:",
    ),
    (["schedules", "history", "sch_nope", "--limit", "0"], "error:"),
    (
        ["schedules", "create", "--input", "x", "--every", "60", "--tag", "team=zürich"],
        "error: tags:",
    ),
    (["schedules", "create", "--input", "x", "--every", "60", "--tag", "tenant"], "error: tags:"),
    (["worker", "--queues", "nope"], "error: queues:"),
    (["worker", "--concurrency", "0"], "error: concurrency:"),
    (["metrics", "--port", "70000"], "error: port:"),
    (["emulator", "--api-key", "k", "--turn-seconds", "-1"], "error: turn_seconds:"),
    (["emulator", "--api-key", "k", "--rate-lost-response", "2"], "error: rate_lost_response:"),
    (["emulator", "--api-key", "k", "--slow-seconds", "-1"], "error: slow_seconds:"),
    (["health", "--max-age", "-1"], "error: max_age:"),
    (["reconcile", "--hours", "0"], "error: hours:"),
    (["reconcile", "--grace", "-1"], "error: grace:"),
    (["status", "job_x:history"], "error: job_id:"),
    (["submit", "ok", "--tag", "tenant=acme\n"], "error: tags:"),
    (["submit", "ok", "--idempotency-key", "order-42\n"], "error: idempotency_key:"),
    (["continue", "wrk_1\n", "more"], "error: worker_id:"),
    (["continue", "wrk_nosuchworker", "more"], "error: worker_id: no worker wrk_nosuchworker"),
    (["limits", "set", "tag:tenant=acme", str(10**30)], "error: limit:"),
    (["limits", "set", "tag:tenant=acme\n", "1"], "error: key:"),
    (["budgets", "set", "global", "--usd", "1e-10"], "error: usd:"),
    (["budgets", "set", "global", "--usd", "NaN"], "error: usd:"),
    (["budgets", "set", "global", "--usd", "2.0000005"], "error: usd:"),
    (["budgets", "set", "tag:tenant=acme\n", "--usd", "1"], "error: scope:"),
    (["costs", "--since", "2026-01-01\n"], "error: since:"),
    (["schedules", "pause", "sch_abc\n"], "error: schedule_id:"),
]


@pytest.fixture
def run_cli() -> Callable[[list[str]], int]:
    """``orchestrator.cli.main``, as the ``orchestrator`` command runs it."""

    def run(argv: list[str]) -> int:
        try:
            return cli.main(argv)
        except SystemExit as exc:  # argparse's own usage errors
            return int(exc.code or 0)

    return run


@pytest.mark.parametrize(("argv", "expected"), CLI, ids=[" ".join(a)[:40] for a, _ in CLI])
def test_cli_refuses_in_one_line(
    world: World,
    run_cli: Callable[[list[str]], int],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    expected: str,
) -> None:
    code = run_cli(argv)
    out = capsys.readouterr()
    assert code == 2, (code, out.err)
    errors = [line for line in out.err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and out.err.splitlines()[-1].startswith(expected), out.err
    assert "Traceback" not in out.err + out.out


SUBPROCESS = [
    (["submit", "bell\x07"], "error: input:"),
    (["continue", "wrk/../../x", "more"], "error: worker_id:"),
    (["continue", "wrk_nosuchworker", "more"], "error: worker_id: no worker wrk_nosuchworker"),
    (["schedules", "create", "--input", "x", "--cron", "0 25 * * *"], "error: when.cron:"),
]


@pytest.mark.parametrize(("argv", "expected"), SUBPROCESS, ids=lambda v: repr(v)[:30])
def test_cli_subprocess_refuses_in_one_line(world: World, argv: list[str], expected: str) -> None:
    done = orchestrator(argv, world.env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(expected) and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_cli_subprocess_accepts_unicode(redis_url: str, key_prefix: str) -> None:
    env = {"REDIS_URL": redis_url, "KEY_PREFIX": key_prefix}
    done = orchestrator(["submit", "Grüße 🚀", "--json"], env)
    assert done.returncode == 0, done.stderr
    job_id = re.search(r'"id": "(job_[0-9a-f]+)"', done.stdout)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    assert job_id and r.hget(f"{key_prefix}:job:{job_id.group(1)}", "input") == "Grüße 🚀"


def orchestrator(argv: list[str], extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m orchestrator ARGV`` with our environment plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "WORKERS_"))}
    env.update(extra, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "orchestrator", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


# --- settings from the environment -----------------------------------------------------

# fmt: off
SETTINGS = [
    ("HTTP_TIMEOUT", "abc"), ("HTTP_TIMEOUT", "-1"), ("REDIS_URL", "ftp://host/0"),
    ("KEY_PREFIX", "has space"), ("MAX_RETRIES", "-1"), ("WORKERS_API_URL", "file:///etc"),
    ("VISIBILITY_TIMEOUT", "5"), ("MAX_INPUT_CHARS", "1e9"), ("METRICS_PORT", "70000"),
    ("BUDGET_HOLDS_USD", "not json"), ("KEY_PREFIX", "orch\n"), ("FAIR_SHARE_TAG", "tenant\n"),
]
# fmt: on


@pytest.mark.parametrize(("variable", "value"), SETTINGS, ids=lambda v: str(v)[:20])
def test_bad_setting_is_one_configuration_error_line(
    world: World, variable: str, value: str
) -> None:
    done = orchestrator(["costs"], {**world.env, variable: value})
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"configuration error: {variable}:"), done.stderr
    assert done.stderr.count("\n") == 1 and value not in done.stderr, done.stderr


# --- the emulator over HTTP ------------------------------------------------------------

# fmt: off
EMULATOR = [
    ('{"input": 5}', "input"), ('{"input": ""}', "input"), ("{}", "input"),
    ('{"input": "x", "budget": "huge"}', "budget"), ('{"input": "x", "extra": 1}', "extra"),
    ("not json", "body"), ("[1, 2]", "body"), ('{"input": "x", "stream": "yes"}', "stream"),
    ('{"input": ["a"]}', "input"),
]
# fmt: on
SCHEDULE_BODIES = [
    ({"input": "x", "when": {"type": "cron", "cron": "bad"}}, "when.cron"),
    ({"input": "x", "when": {"type": "interval", "intervalSeconds": -1}}, "when.interval_seconds"),
    ({"input": "x", "when": {**EVERY, "intervalSeconds": True}}, "when.interval_seconds"),
    ({"input": "x", "when": {"type": "scheduled", "date": "2001-01-01T00:00:00Z"}}, "when.date"),
    ({"input": "x", "when": {"type": "x"}}, "when"),
    ({"input": "x"}, "when"),
]


@pytest.mark.parametrize(("body", "field"), EMULATOR, ids=[b[:30] for b, _ in EMULATOR])
def test_emulator_answers_422_naming_the_field(emulator: Emulator, body: str, field: str) -> None:
    answer = emulator.http.post(
        "/api/workers", content=body, headers={"content-type": "application/json"}
    )
    assert answer.status_code == 422, answer.text[:200]
    assert answer.json()["error"]["field"] == field


@pytest.mark.parametrize(("body", "field"), SCHEDULE_BODIES, ids=lambda v: str(v)[:40])
def test_emulator_schedule_answers_422(
    emulator: Emulator, body: dict[str, Any], field: str
) -> None:
    worker = emulator.http.post("/api/workers", json={"input": "x"}).json()["id"]
    answer = emulator.http.post(f"/api/workers/{worker}/schedules", json=body)
    assert answer.status_code == 422 and answer.json()["error"]["field"] == field, answer.text


# --- a malformed upstream ----------------------------------------------------------------


class Garbage:
    """A tiny HTTP server answering whatever ``answers[path]`` says: (status, type, body)."""

    def __init__(self) -> None:
        answers: dict[str, tuple[int, str, bytes]] = {}

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                status, kind, body = answers[self.path.split("?")[0]]
                self.send_response(status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.answers = answers
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.client = WorkersClient(
            f"http://127.0.0.1:{self.server.server_address[1]}",
            "sk-garbage",
            retry=RetryPolicy(max_retries=0),
        )


@pytest.fixture(scope="module")
def garbage() -> Iterator[Garbage]:
    g = Garbage()
    yield g
    g.client.close()
    g.server.shutdown()


NAN = b'{"id": "w", "costs": {"internal_cost_usd": NaN, "model_cost_usd": 0, "tool_cost_usd": 0}}'
# fmt: off
JSON_GARBAGE = [
    (200, "application/json", b"<html>oops</html>"), (200, "application/json", b'{"id": 5}'),
    (200, "application/json", b"[1, 2, 3]"), (200, "application/json", b""),
    (200, "application/json", b"[" * 100_000), (200, "application/json", b'{"id": "\xff\xfe"}'),
    (200, "application/json", NAN), (500, "application/json", b"[" * 100_000),
    (500, "application/octet-stream", bytes(range(256))), (429, "text/html", b"<h1>slow</h1>"),
]
# fmt: on


@pytest.mark.parametrize("answer", JSON_GARBAGE, ids=lambda a: f"{a[0]}:{a[2][:16]!r}")
def test_client_raises_a_typed_error_for_a_malformed_answer(
    garbage: Garbage, answer: tuple[int, str, bytes]
) -> None:
    garbage.answers["/api/workers/w1"] = answer
    with pytest.raises(APIError) as caught:
        garbage.client.retrieve("w1")
    assert len(str(caught.value)) < 1000 and "sk-garbage" not in str(caught.value)


SSE_GARBAGE = [
    b'data: {"a": 1}\n\nthis is not sse\n\ndata: not json\n\n',
    b"data: \xff\xfe\n\n",
    b"data: " + b"[" * 100_000 + b"\n\n",
]
# An event over EVENT_MAX_BYTES is no error: it becomes a marked, truncated record
# (tests/test_client.py, tests/test_bounds.py).


@pytest.mark.parametrize("body", SSE_GARBAGE, ids=lambda b: repr(b[:20]))
def test_client_raises_a_typed_error_for_a_garbage_stream(garbage: Garbage, body: bytes) -> None:
    garbage.answers["/api/workers/w1/stream"] = (200, "text/event-stream", body)
    with pytest.raises(APIError):
        list(garbage.client.stream_updates("w1"))
    garbage.answers["/api/workers/w1/stream"] = (200, "application/json", b"{}")
    with pytest.raises(APIError, match="expected an event stream"):
        list(garbage.client.stream_updates("w1"))
