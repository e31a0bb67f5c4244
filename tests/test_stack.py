"""`orchestrator up` from nothing: embedded Redis, emulator, worker, beat, Flower and the
metrics exporter as real processes; a job through the CLI; Flower's auth; and nothing
left after SIGINT."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from orchestrator.ops.redis_server import free_port

from .processes import wait_for

pytestmark = pytest.mark.slow


def descendants(pid: int) -> set[int]:
    """Every process whose ancestry reaches ``pid`` (read from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_up_runs_everything_and_leaves_nothing(tmp_path: Path) -> None:
    flower_port = free_port()
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("REDIS_", "WORKERS_", "FLOWER_", "KEY_PREFIX"))
    }  # fmt: skip
    env.update(FLOWER_USER="ops", FLOWER_PASSWORD="flower-test-pw", EMULATOR_TURN_SECONDS="0.5",
               PYTHONUNBUFFERED="1", WEBHOOK_ALLOW_PRIVATE="1")  # fmt: skip
    log = tmp_path / "up.log"
    started = time.monotonic()
    with open(log, "wb") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "up", "--workdir", str(tmp_path / "stack"),
             "--flower-port", str(flower_port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
        )  # fmt: skip
    try:
        wait_for(lambda: "every part is ready" in log.read_text() or up.poll() is not None,
                 90, "the stack to come up")  # fmt: skip
        text = log.read_text()
        assert up.poll() is None, text
        assert "the local emulator stands in for the hosted API" in text
        children = descendants(up.pid)
        assert len(children) >= 7, text  # redis, emulator, worker, beat, flower, metrics, gateway
        redis_url = re.search(r"redis-server at (redis://\S+)", text)
        metrics_url = re.search(
            r"^metrics\s+ready\s+(http://127\.0\.0\.1:\d+/metrics)$", text, re.M
        )
        assert metrics_url, text
        scraped = httpx.get(metrics_url.group(1), timeout=10)
        assert scraped.status_code == 200 and "orchestrator_store_up 1.0" in scraped.text
        api_url = re.search(r"hosted API at (http://\S+)", text)
        assert redis_url and api_url

        # A job through the CLI, against the running stack, from what up wrote for a shell.
        shell_env = tmp_path / "stack" / "stack.env"
        assert f". {shell_env};" in text
        assert shell_env.stat().st_mode & 0o777 == 0o600
        pairs = dict(line.split("=", 1) for line in shell_env.read_text().splitlines())
        assert pairs["REDIS_URL"] == redis_url.group(1)
        assert pairs["WORKERS_API_URL"] == api_url.group(1)
        assert pairs["WORKERS_API_KEY"] not in text  # the key is in the file, not printed
        cli_env = {**env, **pairs}
        submit = subprocess.run(
            [sys.executable, "-m", "orchestrator", "submit", "hello from the CLI",
             "--wait", "--timeout", "60", "--json"],
            env=cli_env, capture_output=True, text=True, timeout=90,
        )  # fmt: skip
        assert submit.returncode == 0, submit.stderr
        job = json.loads(submit.stdout)
        assert job["status"] == "completed"
        # Each process serves its own metrics at the targets up printed and wrote: the
        # worker's count this job's upstream calls and relayed updates.
        line = re.search(r"^scrape\s+(.+?)\s+\(each serves /metrics\)$", text, re.M)
        assert line, text
        targets = dict(zip(*[iter(line.group(1).split())] * 2, strict=True))
        assert set(targets) == {"worker", "beat", "gateway", "metrics"}, targets
        assert pairs["SCRAPE_TARGETS"] == ",".join(targets.values())
        scraped = {name: httpx.get(f"http://{where}/metrics", timeout=10).text
                   for name, where in targets.items()}  # fmt: skip
        relayed = re.search(r"^orchestrator_stream_events_relayed_total (\S+)$",
                            scraped["worker"], re.M)  # fmt: skip
        assert relayed and float(relayed.group(1)) >= 1, scraped["worker"]
        assert 'orchestrator_upstream_request_duration_seconds_count{call="create"' in (
            scraped["worker"]
        )
        assert "# TYPE orchestrator_schedule_runs_total counter" in scraped["beat"]
        assert "# TYPE orchestrator_jobs_ended_here_total counter" in scraped["gateway"]
        email = subprocess.run(
            [sys.executable, "-m", "orchestrator", "email", job["worker_id"]],
            env=cli_env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert email.returncode == 0 and "@" in email.stdout, email.stderr
        # The stack's archive, read from the same shell (docs/retention.md).
        assert pairs["ARCHIVE_DIR"] == str(tmp_path / "stack" / "archive")

        def archived() -> str:
            listed = subprocess.run(
                [sys.executable, "-m", "orchestrator", "archive", "list"],
                env=cli_env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert listed.returncode == 0, listed.stderr
            return listed.stdout

        wait_for(lambda: " 1 jobs " in archived(), 60, "the job in the archive list")

        # A shell that has only what up wrote answers as the stack does: up's shell
        # allows private webhook targets, so the other one does too.
        assert pairs["WEBHOOK_ALLOW_PRIVATE"] == "1"
        other_shell = {k: v for k, v in env.items() if k != "WEBHOOK_ALLOW_PRIVATE"}
        hook = subprocess.run(
            [sys.executable, "-m", "orchestrator", "webhooks", "create",
             "http://127.0.0.1:9/hook", "--event", "job.completed", "--json"],
            env={**other_shell, **pairs}, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert hook.returncode == 0, hook.stderr

        # The HTTP API: a token made by the CLI (into a header file, never on a command
        # line), then curl as the README shows it.
        gateway = re.search(r"gateway\s+(http://\S+)/v1", text)
        assert gateway and pairs["GATEWAY_URL"] == gateway.group(1), text
        header = tmp_path / "auth.hdr"
        made = subprocess.run(
            [sys.executable, "-m", "orchestrator", "tokens", "create", "--role", "submit",
             "--header-file", str(header)],
            env=cli_env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        assert header.stat().st_mode & 0o777 == 0o600
        curl = subprocess.run(
            ["curl", "-sS", "--fail-with-body", "-H", f"@{header}", "-H",
             "Content-Type: application/json", "-d", '{"input": "hello over HTTP"}',
             f"{gateway.group(1)}/v1/jobs"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert curl.returncode == 0, curl.stdout + curl.stderr
        assert json.loads(curl.stdout)["status"] == "queued"

        # Flower answers with auth and refuses without.
        flower = f"http://127.0.0.1:{flower_port}"
        assert httpx.get(f"{flower}/api/workers", timeout=10).status_code == 401
        authed = httpx.get(f"{flower}/api/tasks", auth=("ops", "flower-test-pw"), timeout=10)
        assert authed.status_code == 200
        assert "flower-test-pw" not in authed.text
        # Flower started once the worker answered: its look at the workers as it starts
        # found this one, and it warned of no question left unanswered.
        known = httpx.get(f"{flower}/api/workers", auth=("ops", "flower-test-pw"), timeout=10)
        assert known.status_code == 200 and known.json(), known.text
        assert "Inspect method" not in (tmp_path / "stack" / "flower.log").read_text()
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(timeout=60)
    assert "stopped   every process this stack started" in log.read_text()
    assert not shell_env.exists()
    wait_for(lambda: not any(alive(p) for p in children), 20, "every child to exit")
    assert time.monotonic() - started < 120
