"""The shape of the whole ``orchestrator`` CLI: every command takes ``--json`` (and its
output parses), every option has help, one money and one time format, errors are one
line, bad input never gives a traceback; ``tail`` text, ``status`` cost, ``costs --by
job``, ``--version`` and shell completion.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator import __version__
from orchestrator.cli import build_parser
from orchestrator.cli.output import clean, usd, when
from orchestrator.cli.tail import Transcript
from orchestrator.ops.redis_server import free_port
from orchestrator.wire.models import Worker

from .cli_support import ROOT, Env, day_ms, play_turn, queued_job, run, worker
from .cli_support import env as env  # the fixture: a database and prefix of its own
from .conftest import Emulator
from .processes import joined, wait_for

ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
MONEY = r"\$\d+\.\d{6}"


def leaves(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser of the tree, with its command path; ``leaf`` ones have no subcommand."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from leaves(child, (*path, name))


def test_every_option_and_argument_has_help() -> None:
    missing = [
        f"{' '.join(path) or 'orchestrator'} {action.option_strings or action.dest}"
        for path, parser in leaves(build_parser())
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction)
        and (not action.help or action.help == argparse.SUPPRESS)
    ]
    assert missing == []


def test_help_reads_as_plain_text() -> None:
    """No docstring markup (``name``) reaches a --help page."""
    marked = [" ".join(path) or "orchestrator" for path, parser in leaves(build_parser())
              if "``" in parser.format_help()]  # fmt: skip
    assert marked == []


def test_every_command_takes_json() -> None:
    commands = [
        (path, parser)
        for path, parser in leaves(build_parser())
        if path and not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
    ]
    assert len(commands) > 30
    lacking = [
        " ".join(p) for p, parser in commands if "--json" not in parser._option_string_actions
    ]
    assert lacking == []


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"orchestrator {__version__}"


# --- formats ---------------------------------------------------------------------


def test_one_money_and_one_time_format() -> None:
    assert usd(170_925) == "$0.170925" and usd(0) == "$0.000000" and usd(None) == "-"
    assert usd(12_345_678_901) == "$12345.678901"
    at = "2026-01-31T12:00:00.000Z"
    assert when(1_769_860_800_000) == at
    assert when("2026-01-31T13:00:00+01:00") == at
    assert when("2026-01-31T12:00:00") == at  # naive: UTC
    assert when(None) == "-"


def test_clean_shows_escape_sequences_and_undecodable_bytes() -> None:
    assert clean("job_\x1b[2Jx") == "job_\\x1b[2Jx"
    assert clean("a\x9bb\x7f") == "a\\x9bb\\x7f"
    assert clean(b"job_\xff".decode("utf-8", "surrogateescape")) == "job_\\xff"
    assert clean("tab\tand\nnewline") == "tab\tand\nnewline"


# --- every command's --json ------------------------------------------------------


def json_of(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, (argv, err)
    return json.loads(out)


def test_every_quick_command_prints_json_that_parses(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    job = json_of(capsys, "submit", "hello", "--tag", "tenant=acme")
    assert job["status"] == "queued"
    first = queued_job(env)
    env.store.set_submitted(first, Worker(id="wrk_json"))
    assert json_of(capsys, "continue", "wrk_json", "more")["kind"] == "continue"
    assert json_of(capsys, "status", job["id"], "--history")["history"][0]["status"] == "queued"
    code, out, _ = run(capsys, "tail", job["id"], "--no-follow", "--json")
    assert code == 0 and out == ""  # no updates yet: no lines
    assert json_of(capsys, "files", job["id"]) == {}
    for by in ("day", "budget", "tag", "schedule", "worker", "job"):
        assert json_of(capsys, "costs", "--by", by)["by"] == by
    assert json_of(capsys, "budgets", "set", "global", "--usd", "5")["cap_micro"] == 5_000_000
    assert json_of(capsys, "budgets")["caps"][0]["cap_micro"] == 5_000_000
    assert json_of(capsys, "budgets", "show")["caps"]
    assert json_of(capsys, "budgets", "remove", "global")["removed"]["scope"] == "global"
    assert json_of(capsys, "limits", "set", "tag:tenant=acme", "3")["limit"] == 3
    assert json_of(capsys, "limits", "show")["limits"][0]["limit"] == 3
    assert json_of(capsys, "limits")["limits"]
    assert json_of(capsys, "limits", "remove", "tag:tenant=acme")["removed"] == "tag:tenant=acme"
    made = json_of(capsys, "schedules", "create", "wrk_json", "--input", "x", "--every", "60")
    sid = made["id"]
    assert json_of(capsys, "schedules", "list")[0]["id"] == sid
    assert json_of(capsys, "schedules", "list", "wrk_json")["schedules"]
    shown = json_of(capsys, "schedules", "show", sid)
    assert all(re.fullmatch(ISO, t) for t in shown["next_runs"])
    updated = json_of(capsys, "schedules", "update", sid, "--input", "y", "--tag", "team=a")
    assert (updated["id"], updated["input"], updated["tags"]) == (sid, "y", {"team": "a"})
    assert json_of(capsys, "schedules", "pause", sid)["changed"] is True
    assert json_of(capsys, "schedules", "resume", sid)["changed"] is True
    triggered = json_of(capsys, "schedules", "trigger", sid)
    assert re.fullmatch(ISO, triggered["slot"]) and isinstance(triggered["slot_ms"], int)
    assert json_of(capsys, "schedules", "history", sid) == []  # no worker ran it
    assert json_of(capsys, "schedules", "cancel", sid)["changed"] is True
    # Exit 1: the workers named above do not exist upstream; the report still parses.
    code, out, _ = run(capsys, "reconcile", "--hours", "1", "--json")
    assert code == 1 and json.loads(out)["workers"] == 1
    health = json_of(capsys, "health")
    assert health["ok"] is True and health["checks"]
    completion = json_of(capsys, "completion", "bash")
    assert completion["shell"] == "bash" and "orchestrator" in completion["script"]


def test_email_and_import_print_json(
    env: Env, emulator: Emulator, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    monkeypatch.setenv("WORKERS_API_URL", emulator.url)
    monkeypatch.setenv("WORKERS_API_KEY", emulator.api_key)
    made = emulator.http.post("/api/workers", json={"input": "x"}).json()
    assert "@" in json_of(capsys, "email", made["id"])["email"]
    imported = json_of(capsys, "schedules", "import", made["id"])
    assert imported == {"imported": [], "already": [], "cancelled_upstream": []}


def _first_json_line(
    argv: list[str], child_env: dict[str, str], then: Callable[[Any], object] = bool
) -> Any:
    """Start a long-running command, read its first stdout line as JSON, call ``then``
    with it while the command still runs, stop it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *argv],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=child_env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # bounded: the process exits (EOF) if it fails
        said = json.loads(line)
        then(said)
        return said
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_servers_announce_themselves_as_json(env: Env) -> None:
    child_env = {
        **os.environ, "REDIS_URL": env.url, "KEY_PREFIX": env.prefix, "PYTHONPATH": str(ROOT),
        "EMULATOR_API_KEY": "sk-shape",
    }  # fmt: skip
    metrics = _first_json_line(["metrics", "--port", "0", "--json"], child_env)
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/metrics", metrics["url"])
    port = free_port()
    faults = ["--rate-lost-response", "1", "--rate-slow", "0.5", "--slow-seconds", "0.01"]
    given: dict[str, Any] = {}

    def read_faults(_: object) -> None:
        def answer() -> bool:
            try:
                url = f"http://127.0.0.1:{port}/_emulator/faults"
                auth = {"Authorization": "Bearer sk-shape"}
                given.update(httpx.get(url, timeout=2, headers=auth).json())
            except httpx.TransportError:
                return False
            return True

        wait_for(answer, 20, "the emulator to answer")

    emulator = _first_json_line(
        ["emulator", "--port", str(port), *faults, "--json"], child_env, read_faults
    )
    assert emulator["url"] == f"http://127.0.0.1:{port}/api"
    shown = (given["rate_lost_response"], given["rate_slow"], given["slow_seconds"])
    assert shown == (1, 0.5, 0.01)
    worker = _first_json_line(["worker", "--queues", "api", "--json"], child_env)
    assert worker == {"queues": ["api"], "pool": "threads", "concurrency": 8}
    beat = _first_json_line(["beat", "--json"], child_env)
    assert beat["scheduler"].endswith(":RedisScheduler")
    flower = _first_json_line(["flower", "--no-auth", "--port", str(port), "--json"], child_env)
    assert flower == {"url": f"http://127.0.0.1:{port}"}


# --- tail, status, costs ---------------------------------------------------------


def emulator_updates(turn: int = 1) -> list[dict[str, Any]]:
    return [
        {"type": "start", "turn": turn},
        {"type": "text-delta", "id": "t1", "delta": "Hello"},
        {"type": "tool-input-available", "toolCallId": "c1", "toolName": "web_search",
         "input": {"query": "weather"}},
        {"type": "text-delta", "id": "t1", "delta": " brave"},
        {"type": "text-delta", "id": "t1", "delta": " world\x1b[2J"},
        {"type": "mystery", "x": 1},
        {"type": "finish"},
    ]  # fmt: skip


def finished_job(env: Env, worker_id: str) -> str:
    job = queued_job(env, tags={"tenant": "acme"})
    env.store.set_submitted(job, Worker(id=worker_id))
    env.store.append_updates(worker_id, 0, [json.dumps(u) for u in emulator_updates()])
    snapshot = worker(worker_id, ("0.1", "0.07", "0.000925", "0"), 1234)
    assert env.store.post_turn(job, snapshot, day_ms("2026-01-10")) is not None
    env.r.hset(env.store.keys.job(job.id), "update_to", 7)
    env.store.transition(job.id, "completed")
    return job.id


def test_tail_assembles_text_and_ends_with_the_turns_cost(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    job_id = finished_job(env, "wrk_text")
    code, out, err = run(capsys, "tail", job_id, "--timeout", "10")
    assert code == 0, err
    assert out.splitlines() == [
        "Hello",
        '[web_search {"query":"weather"}]',
        " brave world\\x1b[2J",
        f"── {job_id} completed: 7 updates, cost $0.170925, 1234 tokens",
    ]
    code, out, _ = run(capsys, "tail", job_id, "--raw", "--no-follow")
    assert out.splitlines()[1] == '1\t{"type":"text-delta","id":"t1","delta":"Hello"}'


def test_submit_tail_shows_the_text_then_the_outcome(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    player = threading.Thread(target=play_turn, args=(env, ["one ", "two ", "three"]))
    player.start()
    code, out, err = run(capsys, "submit", "go", "--tail", "--timeout", "10")
    joined(player)
    assert code == 0, err
    (job_id,) = env.job_ids()
    assert out.splitlines() == [
        f"{job_id}  queued",
        "one two three",
        f"── {job_id} completed: 3 updates, cost not posted yet",
        f"{job_id}  completed",
    ]


def test_transcript_draws_a_progress_line_on_a_terminal(tmp_path: Path) -> None:
    class Tty:
        def __init__(self) -> None:
            self.text = ""

        def isatty(self) -> bool:
            return True

        def write(self, text: str) -> None:
            self.text += text

        def flush(self) -> None:
            pass

    out, progress = Tty(), Tty()
    transcript = Transcript(out, progress)  # type: ignore[arg-type]
    for index, data in enumerate(emulator_updates()):
        transcript.feed(index, data)
    transcript.close("done")
    assert re.search(r"\r… \d+ updates, \d+ chars, [0-9.]+ s", progress.text)
    assert progress.text.endswith("\r\x1b[K")  # cleared before the summary
    assert out.text.endswith("done\n")


def test_status_shows_the_jobs_cost(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    job_id = finished_job(env, "wrk_status")
    code, out, _ = run(capsys, "status", job_id)
    assert code == 0
    assert re.search(r"^cost\s+\$0\.170925 \(1234 tokens\)$", out, re.M)
    assert re.search(rf"^created\s+{ISO}$", out, re.M)
    assert json_of(capsys, "status", job_id)["cost"]["model_cost_micro"] == 70_000
    waiting = queued_job(env)
    code, out, _ = run(capsys, "status", waiting.id)
    assert re.search(r"^cost\s+- \(not posted yet\)$", out, re.M)


def test_costs_by_job_lists_each_jobs_turn_newest_first(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    posted = finished_job(env, "wrk_costs")
    waiting = queued_job(env)
    code, out, _ = run(capsys, "costs", "--by", "job")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["job", "turns", "usd", "tokens"]
    assert lines[1].split() == [waiting.id, "0", "-", "-"]
    assert lines[2].split() == [posted, "1", "$0.170925", "1234"]
    assert lines[-1].split() == ["total", "1", "$0.170925", "1234"]
    report = json_of(capsys, "costs", "--by", "job", "--limit", "1")
    assert [row["key"] for row in report["rows"]] == [waiting.id]
    assert report["rows"][0]["posted"] is False
    today = json_of(
        capsys, "costs", "--by", "job", "--since", "2000-01-01", "--until", "2000-01-02"
    )
    assert today["rows"] == [] and today["total"]["turns"] == 1


def test_schedule_times_and_money_use_the_one_format(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    made = json_of(capsys, "schedules", "create", "--input", "x", "--cron", "0 7 * * *")
    code, out, _ = run(capsys, "schedules", "show", made["id"])
    assert code == 0
    assert re.search(rf"^next runs\s+{ISO}\n(\s+{ISO}\n){{9}}", out, re.M)
    assert re.search(rf"^cost\s+{MONEY} over 0 turn\(s\)$", out, re.M)
    code, out, _ = run(capsys, "schedules", "trigger", made["id"])
    assert re.fullmatch(rf"{made['id']}: run sent for slot {ISO}\n", out)
    code, out, _ = run(capsys, "schedules", "list")
    assert re.search(ISO, out)



def test_an_empty_list_says_so(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """`webhooks list-failed` printed only its header when nothing had failed."""
    said = {
        ("webhooks", "list-failed"): "no failed deliveries\n",
        ("webhooks", "list"):
            "no webhook subscriptions (add one: orchestrator webhooks create URL)\n",
        ("tokens", "list"): "no tokens (make one: orchestrator tokens create --role read)\n",
        ("schedules", "list"): "no live schedules (--all: done ones too)\n",
        ("schedules", "list", "--all"): "no schedules\n",
    }
    for argv, text in said.items():
        assert run(capsys, *argv) == (0, text, ""), argv
        assert json_of(capsys, *argv, "--json") == [], argv

# --- completion and the stack's JSON lines ---------------------------------------


def test_completion_completes_commands_and_choices(tmp_path: Path) -> None:
    answer = tmp_path / "completions"

    def complete(line: str) -> list[str]:
        child_env = {
            **os.environ, "PYTHONPATH": str(ROOT), "_ARGCOMPLETE": "1", "COMP_LINE": line,
            "COMP_POINT": str(len(line)), "_ARGCOMPLETE_STDOUT_FILENAME": str(answer),
        }  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "orchestrator"], env=child_env, capture_output=True,
            timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return sorted(answer.read_text().split("\v"))

    assert complete("orchestrator sche") == ["schedules "]
    assert complete("orchestrator costs --by ") == sorted(
        ["day", "budget", "tag", "schedule", "worker", "job"]
    )


def test_the_stack_speaks_json_lines_when_asked(tmp_path: Path) -> None:
    import io

    from orchestrator.ops.stack import Stack
    from orchestrator.settings import load_settings

    out = io.StringIO()
    stack = Stack(load_settings(), tmp_path, json_lines=True, out=out)
    stack._say("metrics   ready  http://127.0.0.1:9/metrics")
    assert json.loads(out.getvalue()) == {
        "part": "metrics", "message": "ready  http://127.0.0.1:9/metrics"
    }  # fmt: skip
