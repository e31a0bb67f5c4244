"""The archive before expiry (issue #14), on a real Redis: finished jobs wait for the
archiver, are written to the day's gzip JSON Lines file, and only then get their
expiry; a crash mid-file is cut back and resumed with no duplicate; the CLI lists,
shows and re-imports a day. Then the memory gauge and the health warning."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.jobs.model import validate_submission
from orchestrator.ops import collector
from orchestrator.ops.archive import (
    ArchiveDir,
    archive_pass,
    members,
    release_unarchived,
    utc_day,
)
from orchestrator.ops.redis_server import RedisServer
from orchestrator.store.archive import ArchiveStore
from orchestrator.store.connection import connect
from orchestrator.store.jobs import RedisStore, now_ms
from orchestrator.store.retention import RetentionPolicy

from .processes import wait_for
from .test_retention import finished_job, worker

ARCHIVED = RetentionPolicy(default_seconds=2, archive=True)


@pytest.fixture
def archived(redis_url: str, key_prefix: str) -> Iterator[RedisStore]:
    """A store that archives finished jobs first, then keeps them 2 s."""
    s = RedisStore(connect(redis_url), key_prefix, retention=ARCHIVED)
    yield s
    s.r.close()


def cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        env=full, cwd=cwd, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_nothing_expires_before_it_is_archived_and_the_round_trip_is_whole(
    archived: RedisStore, tmp_path: Path
) -> None:
    r = archived.r
    jobs = [finished_job(archived, f"wrk_arc_{i}", idem=f"arc-{i}") for i in range(3)]
    queue = ArchiveStore(archived)
    assert [j for j, _ in queue.due()] == [j.id for j in jobs]
    for job in jobs:  # queued for the archive: no expiry yet
        assert r.pttl(archived.keys.job(job.id)) == -1
        # The worker hash holds the snapshot and the folded turn (the stream is gone).
        assert r.pttl(archived.keys.worker(str(job.worker_id))) == -1
    archive = ArchiveDir(tmp_path / "archive")
    assert archive_pass(archived, archive) == 3
    assert queue.due() == []
    day = utc_day(now_ms())
    assert archive.days() == [day]
    for job in jobs:
        assert 0 < r.pttl(archived.keys.job(job.id)) <= 2000
    records = list(archive.read(day))
    assert [rec["job"]["id"] for rec in records] == [j.id for j in jobs]
    first = records[0]
    assert [h["status"] for h in first["history"]] == ["queued", "submitted", "completed"]
    assert [i for i, _ in first["updates"]] == list(range(10))
    assert first["ledger"]["model_cost_micro"] == "500000"
    assert first["files"]["out.txt"]["size"] == 1
    assert first["worker"]["id"] == "wrk_arc_0"
    # The file is plain gzip: any reader takes it.
    with gzip.open(archive.path(day), "rt") as f:
        assert len(f.read().splitlines()) == 3
    # After expiry, re-import brings the job back (without touching the ledger).
    wait_for(lambda: not r.exists(archived.keys.job(jobs[0].id)), 10, "the records to expire")
    total = archived.costs()["total"]
    restore = ArchiveStore(archived)
    assert restore.restore(first, 5000)
    assert not restore.restore(first, 5000)  # in Redis now: left alone
    back = archived.require_job(jobs[0].id)
    assert back.status == "completed" and back.worker_id == "wrk_arc_0"
    assert [h["status"] for h in archived.history(back.id)] == ["queued", "submitted", "completed"]
    assert archived.read_updates("wrk_arc_0")[:2] == [(0, {"n": 0}), (1, {"n": 1})]
    assert archived.turn_cost(back.id) == {k: int(v) for k, v in first["ledger"].items()}
    assert archived.costs()["total"] == total


def test_a_crash_mid_file_is_cut_back_and_resumed_without_duplicates(
    archived: RedisStore, tmp_path: Path
) -> None:
    archive = ArchiveDir(tmp_path / "archive")
    first = [finished_job(archived, f"wrk_cr_{i}") for i in range(2)]
    assert archive_pass(archived, archive) == 2
    day = utc_day(now_ms())
    path = archive.path(day)
    whole = path.stat().st_size
    # The crash: the next batch was being written (half a gzip member on disk) and the
    # jobs it held were written but their expiry never set.
    second = [finished_job(archived, f"wrk_cr_{i}") for i in range(2, 4)]
    queue = ArchiveStore(archived)
    records = [queue.record(j.id) for j in second]
    blob = gzip.compress(b"".join(json.dumps(rec).encode() + b"\n" for rec in records))
    with open(path, "ab") as f:
        f.write(gzip.compress(json.dumps(records[0]).encode() + b"\n"))  # one whole member
        f.write(blob[: len(blob) // 2])  # and half of the next
    # A new archiver process (nothing cached) resumes.
    resumed = ArchiveDir(tmp_path / "archive")
    assert archive_pass(archived, resumed) == 2
    ids = [rec["job"]["id"] for rec in resumed.read(day)]
    assert ids == [j.id for j in first + second], ids  # each once, in order
    ends = [end for end, _ in members(path)]
    assert ends[-1] == path.stat().st_size and ends[0] == whole
    assert queue.due() == []
    for job in second:
        assert archived.r.pttl(archived.keys.job(job.id)) > 0


def test_jobs_left_waiting_when_the_archive_is_switched_off_still_expire(
    archived: RedisStore,
) -> None:
    job = finished_job(archived, "wrk_off")
    key = archived.keys.job(job.id)
    assert archived.r.pttl(key) == -1
    assert release_unarchived(archived) == 1
    assert 0 < archived.r.pttl(key) <= 2000
    assert 0 < archived.r.pttl(archived.keys.worker("wrk_off")) <= 2000
    assert ArchiveStore(archived).due() == []


def test_archive_cli_lists_shows_and_imports_a_day(
    archived: RedisStore, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    archive = ArchiveDir(tmp_path / "archive")
    job = finished_job(archived, "wrk_cli_1")
    refused, _ = archived.create_job(validate_submission(1000, kind="create", input="no turn"))
    assert archived.transition(refused.id, "failed", "refused before any turn")
    assert archive_pass(archived, archive) == 2
    day = utc_day(now_ms())
    env = {"REDIS_URL": redis_url, "KEY_PREFIX": key_prefix, "ARCHIVE_DIR": str(archive.root),
           "RETENTION": "1m"}  # fmt: skip
    listed = cli("archive", "list", env=env, cwd=tmp_path)
    assert listed.returncode == 0 and listed.stdout.startswith(f"{day}  2 jobs"), listed
    shown = cli("archive", "show", day, env=env, cwd=tmp_path)
    assert shown.returncode == 0 and job.id in shown.stdout and "updates=10" in shown.stdout
    # The turn's money once: usage cost mirrors the four components, never added to them.
    assert "cost=$0.500000" in shown.stdout, shown.stdout
    assert f"{refused.id}  failed  worker=-  updates=0  cost=-" in shown.stdout  # unknown, not $0
    as_json = cli("archive", "show", day, "--json", env=env, cwd=tmp_path)
    assert {json.loads(line)["job"]["id"] for line in as_json.stdout.splitlines()} == {
        job.id, refused.id}
    days = json.loads(cli("archive", "list", "--json", env=env, cwd=tmp_path).stdout)
    assert days[0]["day"] == day and days[0]["jobs"] == 2 and days[0]["bytes"] > 0
    bad = cli("archive", "show", "2026-13-01", env=env, cwd=tmp_path)
    assert bad.returncode == 2 and "day" in bad.stderr and "Traceback" not in bad.stderr
    gone = [archived.keys.job(job.id), archived.keys.job(refused.id)]
    wait_for(lambda: not archived.r.exists(*gone), 10, "expiry")
    loaded = cli("archive", "import", day, env=env, cwd=tmp_path)
    assert loaded.returncode == 0 and "imported 2 jobs" in loaded.stdout, loaded
    assert archived.require_job(job.id).status == "completed"
    assert 50_000 < archived.r.pttl(archived.keys.job(job.id)) <= 60_000
    off = cli("archive", "list", env={**env, "ARCHIVE_DIR": ""}, cwd=tmp_path)
    assert off.returncode == 2 and "archive_dir" in off.stderr


def test_memory_gauge_by_record_kind(key_prefix: str) -> None:
    # A server of its own: the gauge's bounded scan (10,000 keys) must see this test's
    # few keys, not those the session's other tests left in a shared one.
    with RedisServer(appendonly=False) as server:
        store = RedisStore(connect(server.url), key_prefix)
        try:
            _gauge_by_kind(store)
        finally:
            store.close()


def _gauge_by_kind(store: RedisStore) -> None:
    for i in range(3):
        finished_job(store, f"wrk_mem_{i}")
    # A turn still running keeps its updates in a stream (a finished one's are folded).
    running, _ = store.create_job(validate_submission(1000, input="runs"))
    assert store.set_submitted(running, worker("wrk_mem_live"))
    store.append_updates("wrk_mem_live", 0, ['{"n": 0}'])
    registry = collector.store_registry(store)
    text = generate_latest(registry).decode()
    found = {
        sample.labels.get("kind", ""): sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "orchestrator_redis_memory_bytes"
        for sample in family.samples
    }
    for kind in ("job", "worker", "updates", "job_files"):
        assert found.get(kind, 0) > 0, (kind, found)
    assert "orchestrator_redis_used_memory_bytes" in text
    assert "orchestrator_jobs_retained 3.0" in text


def test_health_warns_past_the_memory_share(tmp_path: Path) -> None:
    with RedisServer(appendonly=False) as server:
        env = {"REDIS_URL": server.url, "KEY_PREFIX": "hm"}
        ok = cli("health", env=env, cwd=tmp_path)
        assert ok.returncode == 0 and "warning" not in ok.stdout, ok.stdout
        client = connect(server.url)
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", used * 2)
        client.config_set("hash-max-ziplist-value", 64)
        client.close()
        warned = cli("health", env={**env, "MEMORY_WARN_SHARE": "0.3"}, cwd=tmp_path)
        assert warned.returncode == 0, warned.stdout + warned.stderr
        assert "warning: redis used_memory" in warned.stdout
        assert "warning: redis hash-max-ziplist-value is 64" in warned.stdout
        assert len(warned.stdout.strip().splitlines()) == 1
