"""Files from the upstream are written only under FILES_DIR/<job id>: no path escapes."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import pipeline
from orchestrator.errors import InputError
from orchestrator.jobs import validate_submission
from orchestrator.models import Worker
from orchestrator.runtime import Runtime
from orchestrator.settings import load_settings
from orchestrator.store import RedisStore, connect


@pytest.mark.parametrize(
    "name",
    ["../escape.txt", "a/../../b", "/etc/passwd", "a//b", "./a", "a\\..\\b", "", "x\x00y"],
)
def test_unsafe_paths_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(InputError) as info:
        pipeline.safe_path(tmp_path / "job", name)
    assert info.value.field == "file_path"


def test_symlink_escape_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "job"
    root.mkdir()
    (root / "link").symlink_to(tmp_path.parent)
    with pytest.raises(InputError):
        pipeline.safe_path(root, "link/outside.txt")


@pytest.mark.parametrize("name", ["report.md", "data/charts/plot.bin", "a b/ü.txt"])
def test_safe_paths_stay_inside(tmp_path: Path, name: str) -> None:
    root = tmp_path / "job"
    assert pipeline.safe_path(root, name).is_relative_to(root.resolve())


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
    info = pipeline.fetch_file(rt, job.id, "../../outside.txt")
    assert "refused" in info
    assert store.files(job.id) == {"../../outside.txt": info}
    assert not (tmp_path / "outside.txt").exists()
    assert not list((tmp_path).rglob("outside.txt"))
