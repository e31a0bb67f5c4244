"""The job commands of the ``orchestrator`` CLI against a real Redis, without workers.

With no Celery worker running, a submitted job stays queued and its task stays on the
broker: the Redis list ``api``. Each test gets its own key prefix and its own Redis
database (so that list is its own too), and checks what a command wrote.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import sys
import threading
import time
from pathlib import Path

import pytest

from orchestrator.ops.redis_server import free_port
from orchestrator.settings import load_settings
from orchestrator.wire.client import WorkersClient
from orchestrator.wire.models import Worker

from .cli_support import Env, play_turn, queued_job, run
from .cli_support import env as env  # the fixture: a database and prefix of its own
from .conftest import Emulator
from .processes import joined, wait_for

# --- bad input -------------------------------------------------------------------

BAD_INPUT = [
    (["submit", ""], "error: input:"),
    (["submit", "  \n "], "error: input:"),
    (["submit", "x" * 1001], "error: input:"),
    (["submit", "bell \x07 inside"], "error: input:"),
    (["submit", "ok", "--budget", "huge"], "error: --budget: invalid choice"),
    (["submit", "ok", "--tag", "tenant"], "error: tags:"),
    (["submit", "ok", "--tag", "Bad Key=x"], "error: tags:"),
    (["submit", "ok", "--tag", "tenant=has space"], "error: tags:"),
    (["submit", "ok", "--tag", "a=1", "--tag", "a=2"], "error: tags:"),
    (["submit", "ok", "--idempotency-key", "has space"], "error: idempotency_key:"),
    (["submit", "ok", "--wait", "--timeout", "0"], "error: timeout:"),
    (["continue", "job_nope", "more"], "error: job_id:"),
    (["continue", "wrk/../x", "more"], "error: worker_id:"),
    (["continue", "wrk_1", ""], "error: input:"),
    (["status", "job_nope"], "error: job_id:"),
    (["status", "not-a-job", "--history"], "error: job_id:"),
    (["tail", "job_nope", "--no-follow"], "error: job_id:"),
    (["tail", "job_nope", "--after", "-2"], "error: after:"),
    (["files", "job_nope"], "error: job_id:"),
    (["files", "job_nope", "--download", "a.txt"], "error: to:"),
    (["email", ""], "error: worker_id:"),
    (["email", "job_nope"], "error: job_id:"),
    (["costs", "--by", "month"], "error: --by: invalid choice"),
    (["costs", "--since", "2026-1-5"], "error: since:"),
    (["costs", "--until", "yesterday"], "error: until:"),
    (["costs", "--since", "2026-11-01T00:00:00"], "error: since:"),
    (["costs", "--until", "1793491200"], "error: until:"),
    (["costs", "--until", "2026-02-30"], "error: until:"),
    (["costs", "--since", "2026-02-01", "--until", "2026-01-01"], "error: until:"),
    (["costs", "--by", "tag", "--since", "2026-01-01"], "error: since:"),
    # A header file that cannot be made: no token is created that nobody holds.
    (["tokens", "create", "--role", "read", "--header-file", "no-dir/auth"], "error: header_file:"),
]


@pytest.mark.parametrize(("argv", "expected"), BAD_INPUT, ids=lambda v: repr(v)[:40])
def test_bad_input_is_one_line_exit_2_and_nothing_written(
    env: Env, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    depth = env.depth()
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert expected in err, err
    assert "Traceback" not in err + out
    assert env.job_ids() == [] and env.our_keys() == []
    assert env.depth() == depth


def test_empty_stdin_is_refused(
    env: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    depth = env.depth()
    code, _, err = run(capsys, "submit", "-")
    assert code == 2 and err.startswith("error: input:")
    assert env.job_ids() == [] and env.depth() == depth


def test_help_needs_no_redis(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    for command in ("submit", "continue", "status", "tail", "files", "email", "costs"):
        code, out, _ = run(capsys, command, "--help")
        assert code == 0 and "--json" in out, command


# --- submit, continue, status ----------------------------------------------------


def test_submit_json_is_the_queued_job_and_one_message(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    depth = env.depth()
    code, out, err = run(
        capsys, "submit", "hello", "--budget", "low", "--tag", "tenant=acme", "--json"
    )
    assert code == 0, err
    job = json.loads(out)
    assert job["status"] == "queued" and job["kind"] == "create"
    assert job["budget"] == "low" and job["tags"] == {"tenant": "acme"}
    assert env.job_ids() == [job["id"]]
    assert env.depth() == depth + 1

    code, out, _ = run(capsys, "status", job["id"], "--json")
    shown = json.loads(out)
    assert code == 0 and shown.pop("cost") is None and shown == job


def test_submit_prints_the_id_reads_stdin_and_honours_the_idempotency_key(
    env: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    depth = env.depth()
    monkeypatch.setattr(sys, "stdin", io.StringIO("from stdin"))
    code, out, _ = run(capsys, "submit", "-", "--idempotency-key", "order-42")
    assert code == 0
    job_id, status = out.split()
    assert job_id.startswith("job_") and status == "queued"
    stored = env.store.get_job(job_id)
    assert stored is not None and stored.input == "from stdin"

    code, out, _ = run(capsys, "submit", "again", "--idempotency-key", "order-42")
    assert code == 0 and out.split()[0] == job_id
    assert env.job_ids() == [job_id] and env.depth() == depth + 1


def test_continue_a_worker_by_its_id_or_by_a_job_that_made_it(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    first = queued_job(env)
    env.store.set_submitted(first, Worker(id="wrk_cli1"))
    code, out, _ = run(capsys, "continue", first.id, "more", "--fetch-files", "--json")
    assert code == 0
    job = json.loads(out)
    assert job["kind"] == "continue" and job["worker_id"] == "wrk_cli1"
    assert job["fetch_files"] is True
    code, out, _ = run(capsys, "continue", "wrk_cli1", "and more", "--json")
    assert code == 0 and json.loads(out)["worker_id"] == "wrk_cli1"
    assert len(env.job_ids()) == 3
    # The tier and tags not given are the earlier job's; a tag given wins its key.
    tenant = queued_job(env, budget="high", tags={"tenant": "acme", "team": "x"})
    env.store.set_submitted(tenant, Worker(id="wrk_cli2"))
    code, out, _ = run(capsys, "continue", tenant.id, "more", "--tag", "team=y", "--json")
    job = json.loads(out)
    assert code == 0 and (job["budget"], job["tags"]) == ("high", {"tenant": "acme", "team": "y"})


def test_status_history_lists_each_transition(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    job = queued_job(env, tags={"tenant": "acme"})
    code, out, _ = run(capsys, "status", job.id, "--history")
    assert code == 0
    assert re.search(r"^status\s+queued$", out, re.M)
    assert re.search(r"^tags\s+tenant=acme$", out, re.M)
    assert re.search(r"^history\n  \d{4}-\d\d-\d\dT[0-9:.]+Z  queued$", out, re.M)

    env.store.transition(job.id, "submitted")
    env.store.transition(job.id, "failed", "upstream said no")
    code, out, _ = run(capsys, "status", job.id, "--history", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["id"] == job.id and report["status"] == "failed"
    assert [h["status"] for h in report["history"]] == ["queued", "submitted", "failed"]
    assert report["history"][-1]["detail"] == "upstream said no"
    code, out, _ = run(capsys, "status", job.id)
    assert re.search(r"^error\s+upstream said no$", out, re.M) and "history" not in out


def test_wait_that_times_out_leaves_the_job_queued(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    depth = env.depth()
    code, out, err = run(capsys, "submit", "slow", "--wait", "--timeout", "0.3")
    assert code == 1 and err.startswith("timeout:") and "Traceback" not in err
    (job_id,) = env.job_ids()
    assert out.split() == [job_id, "queued"]
    assert env.depth() == depth + 1
    # Scripts still get the job, as JSON, to look at later.
    code, out, err = run(capsys, "submit", "slow", "--wait", "--timeout", "0.2", "--json")
    assert code == 1 and json.loads(err)["error"]["type"] == "timeout"  # the JSON error shape
    assert json.loads(out)["status"] == "queued" and json.loads(out)["id"] in env.job_ids()


def test_tail_of_a_job_stops_at_its_turn_when_the_worker_went_on(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    job = queued_job(env)
    env.store.set_submitted(job, Worker(id="wrk_went_on", status="running"))
    env.store.transition(job.id, "running")
    delta = lambda text: json.dumps({"type": "text-delta", "id": "t", "delta": text})  # noqa: E731
    env.store.append_updates("wrk_went_on", 0, [delta("its"), delta(" turn")])
    env.r.hset(env.store.keys.job(job.id), "update_to", 2)
    env.store.transition(job.id, "completed")
    env.store.append_updates("wrk_went_on", 2, [delta(" the next turn")])  # a continue's
    for follow in ("--no-follow", "--timeout=10"):
        code, out, _ = run(capsys, "tail", job.id, "--raw", follow)
        assert code == 0 and [line.split("\t")[0] for line in out.splitlines()] == ["0", "1"]
    code, out, _ = run(capsys, "tail", job.id, "--no-follow")
    assert "its turn" in out and "next turn" not in out


def test_submit_tail_prints_updates_live_then_the_finished_job(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    player = threading.Thread(target=play_turn, args=(env, ["one", "two", "three"]))
    player.start()
    code, out, err = run(capsys, "submit", "go", "--tail", "--json", "--timeout", "10")
    joined(player)
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[:3] == [
        {"index": i, "data": {"text": t}} for i, t in enumerate(["one", "two", "three"])
    ]
    assert lines[3]["status"] == "completed" and lines[3]["worker_id"] == "wrk_play"
    assert len(lines) == 4


def test_submit_wait_prints_the_outcome_and_output(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    player = threading.Thread(target=play_turn, args=(env, ["one"]))
    player.start()
    code, out, err = run(capsys, "submit", "go", "--wait", "--timeout", "10")
    joined(player)
    assert code == 0, err
    job_id = env.job_ids()[0]
    assert out.splitlines() == [f"{job_id}  queued", f"{job_id}  completed", "all done"]


# --- tail and files --------------------------------------------------------------


def test_tail_prints_stored_updates_in_order(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    job = queued_job(env)
    env.store.set_submitted(job, Worker(id="wrk_tail"))
    payloads = [json.dumps({"n": i, "text": f"step {i}"}) for i in range(4)]
    env.store.append_updates("wrk_tail", 0, payloads)

    code, out, _ = run(capsys, "tail", job.id, "--no-follow", "--raw")
    assert code == 0
    assert out.splitlines() == [f'{i}\t{{"n":{i},"text":"step {i}"}}' for i in range(4)]

    code, out, _ = run(capsys, "tail", job.id, "--no-follow", "--after", "1", "--json")
    assert [json.loads(line)["index"] for line in out.splitlines()] == [2, 3]

    # Following ends by itself once the job is done and every update was printed.
    env.r.hset(env.store.keys.job(job.id), "update_to", 4)
    env.store.transition(job.id, "completed")
    started = time.monotonic()
    code, out, _ = run(capsys, "tail", job.id, "--json", "--timeout", "10")
    assert code == 0 and time.monotonic() - started < 5
    assert [json.loads(line)["data"]["n"] for line in out.splitlines()] == [0, 1, 2, 3]


def test_files_lists_fetched_refused_and_failed_files(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    job = queued_job(env)
    code, out, _ = run(capsys, "files", job.id)
    assert code == 0 and out.strip() == "no files fetched"
    sha = "ab" * 32
    env.store.record_file(
        job.id, "report.txt", {"path": "/f/report.txt", "size": 1234, "sha256": sha}
    )
    env.store.record_file(job.id, "../etc/passwd", {"refused": "escapes the files directory"})
    env.store.record_file(job.id, "big.bin", {"error": "HTTP 404: not found"})

    code, out, _ = run(capsys, "files", job.id)
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert lines["report.txt"].split() == ["report.txt", "1234", sha, "/f/report.txt"]
    assert "refused: escapes the files directory" in lines["../etc/passwd"]
    assert "error: HTTP 404: not found" in lines["big.bin"]

    code, out, _ = run(capsys, "files", job.id, "--json")
    assert json.loads(out)["report.txt"]["size"] == 1234


def test_email_and_download_ask_the_upstream(
    env: Env,
    emulator: Emulator,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("WORKERS_API_URL", emulator.url)
    monkeypatch.setenv("WORKERS_API_KEY", emulator.api_key)
    with WorkersClient.from_settings(load_settings()) as client:
        created = client.create("write a report")

        def finished() -> Worker | None:
            upstream = client.retrieve(created.id)
            return upstream if not upstream.running and upstream.files else None

        upstream = wait_for(finished, 10, "the emulator's turn to finish")
        expected_email = client.retrieve_email(upstream.id)
    job = queued_job(env)
    env.store.set_submitted(job, upstream)

    code, out, _ = run(capsys, "email", job.id)
    assert code == 0 and out.strip() == expected_email and "@" in expected_email
    code, out, _ = run(capsys, "email", upstream.id, "--json")
    assert json.loads(out) == {"email": expected_email}

    name = upstream.files[0].filename or upstream.files[0].url.rsplit("/", 1)[-1]
    code, out, err = run(
        capsys, "files", job.id, "--download", name, "--to", str(tmp_path), "--json"
    )
    assert code == 0, err
    got = json.loads(out)
    saved = Path(got["path"])
    assert saved.parent == tmp_path and saved.stat().st_size == got["size"] > 0
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == got["sha256"]

    code, _, err = run(capsys, "files", job.id, "--download", "../x", "--to", str(tmp_path))
    assert code == 2 and err.startswith("error: file_path:")
