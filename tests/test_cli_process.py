"""The ``orchestrator`` command as a real child process: bad input is one line (or one
JSON object with ``--json``) and exit 2, never a traceback or an escape sequence, and
nothing is written; an unreachable Redis is one line too."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from orchestrator.ops.redis_server import free_port

from .cli_support import Env, child_env, cli
from .cli_support import env as env  # the fixture: a database and prefix of its own

# --- as a real process -----------------------------------------------------------


def test_process_refuses_bad_input_with_one_line_and_no_traceback(env: Env) -> None:
    depth = env.depth()
    done = cli(env, "submit", "ok", "--tag", "Bad Key=x")
    assert done.returncode == 2
    assert done.stderr.startswith("error: tags:") and len(done.stderr.splitlines()) == 1
    assert "Traceback" not in done.stderr + done.stdout and done.stdout == ""
    done = cli(env, "submit", "-", stdin="   ")
    assert done.returncode == 2 and done.stderr.startswith("error: input:")
    assert "Traceback" not in done.stderr
    assert env.our_keys() == [] and env.depth() == depth


def test_process_with_json_writes_errors_in_the_http_apis_shape(env: Env) -> None:
    """A command run with --json tells its refusal as one JSON object on stderr, as the
    HTTP API does (type, field, message), with the same exit status; nothing written."""
    depth = env.depth()
    done = cli(env, "submit", "ok", "--tag", "Bad Key=x", "--json")
    assert done.returncode == 2 and done.stdout == ""
    [line] = done.stderr.splitlines()
    error = json.loads(line)["error"]
    assert error["type"] == "invalid_request" and error["field"] == "tags", error
    assert error["message"] and "Traceback" not in done.stderr
    missing = cli(env, "status", "job_" + "0" * 32, "--json")
    assert missing.returncode == 2, missing.stderr
    assert json.loads(missing.stderr)["error"]["field"] == "job_id"
    dead = f"redis://127.0.0.1:{free_port()}/0"
    away = cli(env, "status", "job_" + "0" * 32, "--json", redis_url=dead)
    assert away.returncode == 1
    unreachable = json.loads(away.stderr)["error"]
    assert (unreachable["type"], unreachable["field"]) == ("unavailable", "REDIS_URL")
    assert unreachable["message"].startswith("cannot reach Redis") and dead not in away.stderr
    plain = cli(env, "submit", "ok", "--tag", "Bad Key=x")
    assert plain.stderr.startswith("error: tags:")  # without --json: the one line
    # argparse's own refusals too: a script that asked for JSON gets JSON.
    choice = cli(env, "submit", "ok", "--budget", "cheap", "--json")
    assert choice.returncode == 2 and choice.stdout == ""
    usage = json.loads(choice.stderr)["error"]
    assert (usage["type"], usage["field"]) == ("invalid_request", "--budget"), usage
    assert "cheap" in usage["message"]
    plain = cli(env, "submit", "ok", "--budget", "cheap")
    assert plain.stderr.startswith("error: --budget: invalid choice")
    assert env.our_keys() == [] and env.depth() == depth


def test_process_submits_and_reports_unreachable_redis_in_one_line(env: Env) -> None:
    depth = env.depth()
    done = cli(env, "submit", "-", "--json", stdin="from a pipe")
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["input"] == "from a pipe" and env.job_ids() == [job["id"]]
    assert env.depth() == depth + 1

    dead = f"redis://127.0.0.1:{free_port()}/0"
    done = cli(env, "status", job["id"], redis_url=dead)
    assert done.returncode == 1
    assert done.stderr.startswith("error: REDIS_URL: cannot reach Redis")
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1


# --- bad input, through the real command ----------------------------------------


def cli_bytes(
    env: Env, *argv: str | bytes, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *argv],
        input=stdin, capture_output=True, env=child_env(env), timeout=60,
    )  # fmt: skip


BAD = [
    (["status", b"job_\xff\xfe"], b"error: arguments:"),
    (["submit", b"caf\xe9"], b"error: arguments:"),
    (["schedules", "create", "--input", b"\xc3(", "--every", "60"], b"error: arguments:"),
    (["submit", "ok", "--wait", "--timeout", "nan"], b"error: timeout:"),
    (["submit", "ok", "--tail", "--timeout", "inf"], b"error: timeout:"),
    (["tail", "job_abc", "--timeout", "-1"], b"error: timeout:"),
    (["status", "job_\x1b[31mred"], b"error: job_id:"),
    (["status", "\x1b]0;title\x07"], b"error: job_id:"),
    (["nonsense"], b"error: COMMAND: invalid choice"),
    (["submit"], b"error: INPUT: is required"),
    (["costs", "--by", "job", "--limit", "0"], b"error: limit:"),
    (["costs", "--by", "tag", "--limit", "5"], b"error: limit:"),
    (["costs", "--by", "job", "--limit", "many"], b"error: --limit: invalid int value"),
    (["costs", "--by", "\x1b[2J"], b"error: --by: invalid choice"),
    (["health", "--timeout", "nan"], b"error: timeout:"),
    (["completion", "powershell"], b"error: shell: invalid choice"),
    (["schedules"], b"error: ACTION: is required"),
    (["budgets", "set", "global", "--usd", "0.0000001"], b"error: usd:"),
    (["limits", "set", "tag:tenant=acme", "100000000000000000000"], b"error: limit:"),
    (["--json"], b'{"error": {"type": "invalid_request", "field": "COMMAND", "message": "is requ'),
    (["submit", "--json"], b'{"error": {"type": "invalid_request", "field": "INPUT"'),
    (["submit", "x", "--nope"], b"error: --nope: is not an argument of this command\n"),
    (["submit", "x", "--nope", "--json"],
     b'{"error": {"type": "invalid_request", "field": "--nope"'),
    (["submit", "x", "--nope", "y"], b"error: --nope: is not an argument of this command (also"),
    (["costs", "--by", "\x1b[2J", "--json"],
     b'{"error": {"type": "invalid_request", "field": "--by"'),
]


@pytest.mark.parametrize(("argv", "expected"), BAD, ids=lambda v: repr(v)[:40])
def test_bad_input_through_the_real_command(
    env: Env, argv: list[str | bytes], expected: bytes
) -> None:
    depth = env.depth()
    done = cli_bytes(env, *argv)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(expected), done.stderr
    assert done.stderr.count(b"\n") == 1 and b"usage:" not in done.stderr
    assert b"Traceback" not in done.stderr + done.stdout
    assert b"\x1b" not in done.stderr + done.stdout and b"\x07" not in done.stderr
    assert env.our_keys() == [] and env.depth() == depth


def test_stdin_that_is_not_utf8_is_refused(env: Env) -> None:
    done = cli_bytes(env, "submit", "-", stdin=b"caf\xe9 au lait")
    assert done.returncode == 2 and done.stderr.startswith(b"error: input:"), done.stderr
    assert b"Traceback" not in done.stderr and env.our_keys() == []
