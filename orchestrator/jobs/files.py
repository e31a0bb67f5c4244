"""A finished turn's published files: sending their fetches, fetching each one under
``FILES_DIR/<job id>/`` (refusing a name that would leave it), recording how every
fetch ended in the job's files, and sending again the fetches the broker lost."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from celery import Celery

from orchestrator.celery import API_QUEUE
from orchestrator.errors import APIError, APIStatusError, InputError, ResponseTooLargeError
from orchestrator.jobs.model import Job
from orchestrator.runtime import Runtime
from orchestrator.wire.models import Worker

log = logging.getLogger(__name__)

#: The task name of a file fetch.
FETCH_TASK = "workers.fetch_file"


def send_fetches(app: Celery, rt: Runtime, job: Job, worker: Worker) -> list[str]:
    """Send a fetch for each file the finished turn published, once per name and at
    most ``FILES_MAX_PER_TURN`` of them (a listing past that is noted in the job's
    history, not fetched: a hostile upstream could list a hundred thousand). Returns
    the names sent."""
    names = list(dict.fromkeys(f.filename or f.url.rsplit("/", 1)[-1] for f in worker.files))
    cap = rt.settings.files_max_per_turn
    if len(names) > cap:
        note = f"published {len(names)} files; fetching the first {cap} (FILES_MAX_PER_TURN)"
        log.warning("job %s %s", job.id, note)
        rt.store.note(job.id, note)
        names = names[:cap]
    # Watched until a worker begins each (see resend_lost_files); marked before they are
    # sent, as in dispatch(), so a fetch begun at once leaves no mark behind.
    sent = rt.store.batch()
    rt.store.fetches_sent_into(sent, job.id, names)
    sent.execute()
    for name in names:
        send_fetch(app, job.id, name)
    return names


def send_fetch(app: Celery, job_id: str, name: str) -> None:
    shown = name if len(name) <= 120 else f"{name[:117]}..."  # Flower shows it
    app.send_task(FETCH_TASK, args=[job_id, name], argsrepr=f"{job_id} file={shown!r}")


def _fetch_of(task: str, args: list[Any]) -> list[tuple[str, str]]:
    if task != FETCH_TASK or len(args) != 2:
        return []
    return [(str(args[0]), str(args[1]))]


def resend_lost_files(app: Celery, rt: Runtime, older_than_seconds: float = 30.0) -> int:
    """Send again the file fetches the broker lost (see :func:`resend_lost`); a fetch
    whose file is recorded already is only forgotten."""
    store = rt.store
    due = store.unbegun_fetches(int(older_than_seconds * 1000))
    lost = store.broker.lost(
        due, "resend-files", older_than_seconds, _fetch_of, backlog_queue=API_QUEUE
    )
    resent = 0
    for job_id, name in lost:
        if store.file_recorded(job_id, name):
            store.forget_fetch(job_id, name)
        else:
            log.warning("re-sending the fetch of %r for job %s: the broker lost it", name, job_id)
            store.fetch_resent(job_id, name)  # before the send: see finalize
            send_fetch(app, job_id, name)
            resent += 1
    return resent


#: Bounds on a published file's name, well inside what filesystems take (255 bytes a
#: part, 4,096 a path) once ``FILES_DIR/<job id>/`` is in front.
FILE_PART_MAX_BYTES = 255
FILE_NAME_MAX_BYTES = 1024
FILE_NAME_MAX_DEPTH = 32


def _shown(name: str) -> str:
    return repr(name if len(name) <= 80 else f"{name[:77]}...")


def safe_path(root: Path, name: str) -> Path:
    """``root/name`` if it stays inside ``root``; InputError naming the file otherwise."""
    if not name or "\x00" in name or name.startswith(("/", "\\")) or "\\" in name:
        raise InputError("file_path", f"{_shown(name)} is not a safe relative path")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise InputError("file_path", f"{_shown(name)} is not a safe relative path")
    encoded = name.encode("utf-8", "surrogatepass")
    if len(encoded) > FILE_NAME_MAX_BYTES or len(parts) > FILE_NAME_MAX_DEPTH:
        raise InputError(
            "file_path",
            f"{_shown(name)} is longer than {FILE_NAME_MAX_BYTES} bytes"
            f" or deeper than {FILE_NAME_MAX_DEPTH} levels",
        )
    if any(len(p.encode("utf-8", "surrogatepass")) > FILE_PART_MAX_BYTES for p in parts):
        raise InputError(
            "file_path", f"{_shown(name)} has a part longer than {FILE_PART_MAX_BYTES} bytes"
        )
    base = root.resolve()
    target = base.joinpath(*parts).resolve()
    if not target.is_relative_to(base):
        raise InputError("file_path", f"{_shown(name)} escapes the files directory")
    return target


def fetch_file(
    rt: Runtime, job_id: str, name: str, *, last_attempt: bool = False
) -> dict[str, Any]:
    """Stream one published file to ``FILES_DIR/<job id>/<name>``; record size and hash.

    Every way a fetch ends is recorded in the job's files: ``{path, size, sha256}``,
    ``{refused}`` (an unsafe name), or ``{error}`` (a file over ``FILE_MAX_BYTES``, an
    answer that is final, a name the disk will not take). A transient failure (no
    answer, timeout, 5xx) is raised for the task to retry, and recorded as an error
    too on its ``last_attempt``.
    """
    rt.store.forget_fetch(job_id, name)
    job = rt.store.require_job(job_id)
    assert job.worker_id is not None
    root = Path(rt.settings.files_dir) / job.id
    try:
        dest = safe_path(root, name)
    except InputError as exc:
        info: dict[str, Any] = {"refused": exc.message}
        rt.store.record_file(job.id, name, info)
        log.warning("job %s: refused file %s: %s", job.id, _shown(name), exc.message)
        return info
    try:
        got = rt.client.download_file(job.worker_id, name, dest)
    except (ResponseTooLargeError, OSError) as exc:
        return _fetch_failed(rt, job.id, name, exc)
    except APIError as exc:
        if last_attempt or (isinstance(exc, APIStatusError) and not exc.retryable):
            return _fetch_failed(rt, job.id, name, exc)
        raise
    info = {"path": str(got.path), "size": got.size, "sha256": got.sha256}
    rt.store.record_file(job.id, name, info)
    return info


def _fetch_failed(rt: Runtime, job_id: str, name: str, exc: Exception) -> dict[str, Any]:
    """Record a fetch that failed for good as ``{error}``."""
    if isinstance(exc, OSError):  # e.g. "a" is a file and "a/b" wants it as a directory
        message = f"cannot write the file: {exc.strerror or type(exc).__name__}"
    else:
        message = str(exc)
    info: dict[str, Any] = {"error": message}
    rt.store.record_file(job_id, name, info)
    log.warning("job %s: file %s not fetched: %s", job_id, _shown(name), message)
    return info


def fetch_gave_up(rt: Runtime, job_id: str, name: str, exc: Exception) -> dict[str, Any]:
    """The last try of a fetch failed with an error of our own (not the API's, which
    :func:`fetch_file` records itself): record it as ``{error}`` all the same."""
    log.error("job %s: fetch of %s failed on its last try: %r", job_id, _shown(name), exc)
    return _fetch_failed(rt, job_id, name, exc)
