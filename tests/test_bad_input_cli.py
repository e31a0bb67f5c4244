# ruff: noqa: F811  (the world fixture is imported by name)
"""Bad input corpus, the command line: the CLI (in process, and a sample as real
subprocesses) and settings from the environment refuse bad input in one error line
naming the field, with no traceback, writing and enqueuing nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import redis

from orchestrator import cli

from .bad_input import World, orchestrator, world  # noqa: F401

# --- the command line ------------------------------------------------------------------

CLI = [
    (["submit", "\x1b[2J"], "error: input:"),
    (["submit", "ok", "--tag", "tenant=zürich"], "error: tags:"),
    (["submit", "ok", "--priority", "urgent"], "error: --priority: invalid choice"),
    (["status", "../../etc/passwd"], "error: job_id:"),
    (["tail", "job_x", "--timeout", "soon"], "error: --timeout: invalid float value"),
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
