"""Files from the upstream are written only under FILES_DIR/<job id>: no path escapes."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import InputError
from orchestrator.facade import Orchestrator
from orchestrator.jobs import files as fetching
from orchestrator.jobs import steps as pipeline
from orchestrator.jobs.model import validate_submission
from orchestrator.runtime import Runtime
from orchestrator.settings import load_settings
from orchestrator.store.jobs import RedisStore, connect
from orchestrator.wire.models import Worker

from .conftest import Emulator
from .processes import celery_worker, wait_for


@pytest.mark.parametrize(
    "name",
    ["../escape.txt", "a/../../b", "/etc/passwd", "a//b", "./a", "a\\..\\b", "", "x\x00y"],
)
def test_unsafe_paths_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(InputError) as info:
        fetching.safe_path(tmp_path / "job", name)
    assert info.value.field == "file_path"


def test_symlink_escape_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "job"
    root.mkdir()
    (root / "link").symlink_to(tmp_path.parent)
    with pytest.raises(InputError):
        fetching.safe_path(root, "link/outside.txt")


@pytest.mark.parametrize("name", ["report.md", "data/charts/plot.bin", "a b/ü.txt"])
def test_safe_paths_stay_inside(tmp_path: Path, name: str) -> None:
    root = tmp_path / "job"
    assert fetching.safe_path(root, name).is_relative_to(root.resolve())


def test_escaping_file_is_recorded_as_refused_and_not_fetched(
    tmp_path: Path, redis_url: str, key_prefix: str
) -> None:
    settings = load_settings(
        redis_url=redis_url, key_prefix=key_prefix, files_dir=tmp_path / "files",
        workers_api_url="http://127.0.0.1:9", workers_api_key="never-used",
    )  # fmt: skip
    store = RedisStore(connect(redis_url), key_prefix)
    job, _ = store.create_job(validate_submission(100, input="x", fetch_files=True))
    store.set_submitted(job, Worker(id="wrk_x"))
    rt = Runtime(settings, store)
    info = fetching.fetch_file(rt, job.id, "../../outside.txt")
    assert "refused" in info
    assert store.files(job.id) == {"../../outside.txt": info}
    assert not (tmp_path / "outside.txt").exists()
    assert not list((tmp_path).rglob("outside.txt"))


@pytest.mark.slow
def test_a_file_fetch_the_broker_lost_is_sent_again_and_fetched_once(
    orch: Orchestrator, emulator: Emulator, env: dict[str, str], tmp_path: Path
) -> None:
    """Finalize sent the job's file fetches and a worker died as it took them (kombu
    pops a message before it records it unacked): housekeeping sends them again."""
    fast = {**env, "RESEND_AFTER_SECONDS": "1"}
    queue, r = orch.store.keys.broker_queue("api"), orch.store.r
    job = orch.submit("files, lost on the way", fetch_files=True)
    # The create step here, so that no worker consumes the api queue yet.
    pipeline.start_turn(orch.rt, orch.app, job.id)
    r.delete(queue)
    streams = celery_worker(fast, tmp_path / "s.log", queues="streams", name="s").start()
    try:
        assert orch.wait(job.id, timeout=30).status == "completed"
        count = len(emulator.server.state.workers[str(orch.get(job.id).worker_id)].files)
        assert count >= 2 and r.llen(queue) == count  # the fetches, sent
        r.delete(queue)  # and lost
        wait_for(lambda: r.llen(queue) == count, 30, "the fetches to be sent again")
    finally:
        streams.stop()
    assert streams.text().count("the broker lost it") == count
    worker = celery_worker(fast, tmp_path / "w.log", queues="api").start()
    try:
        wait_for(lambda: len(orch.files(job.id)) == count, 30, "the files fetched")
        wait_for(lambda: r.zcard(orch.store.keys.files_dispatched) == 0, 10, "none left")
    finally:
        worker.stop()
    assert all("sha256" in info for info in orch.files(job.id).values())
