"""The archive of finished jobs: ``ARCHIVE_DIR/<YYYY-MM-DD>.jsonl.gz``, one file per UTC
day (the day each job ended), append-only (see docs/retention.md).

A file is a series of gzip members, each one batch of JSON lines (one finished job a
line: ``{"job", "history", "updates", "ledger", "files", "worker"}``), written, flushed
and fsynced before the batch's jobs may expire. A crash can leave only the last member
cut short: opening the day again (:meth:`ArchiveDir.open_day`) reads the file member by
member, truncates it to the end of the last whole one, and returns the job ids it
holds, so a job whose expiry was not yet set when the crash came is not written twice.
``gzip``/``zcat`` read the files as they are.

:func:`archive_pass` is what the workers' housekeeping runs every
``ARCHIVE_INTERVAL_SECONDS`` (one archiver of the fleet at a time).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import socket
import uuid
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orchestrator.errors import InputError
from orchestrator.store.archive import ArchiveStore
from orchestrator.store.jobs import RedisStore

log = logging.getLogger(__name__)

_DAY = re.compile(r"\A\d{4}-\d{2}-\d{2}\Z")
SUFFIX = ".jsonl.gz"
_CHUNK = 1 << 20


def utc_day(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).strftime("%Y-%m-%d")


def check_day(value: str, field: str = "day") -> str:
    """A UTC day ``YYYY-MM-DD``; InputError naming ``field`` otherwise."""
    if not isinstance(value, str) or not _DAY.fullmatch(value):
        raise InputError(field, "must be a UTC day like 2026-11-29")
    try:
        datetime.strptime(value, "%Y-%m-%d")
    except ValueError:
        raise InputError(field, f"{value} is not a day of the calendar") from None
    return value


def members(path: Path) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """Each whole gzip member of ``path`` as (offset just past it, its records); stops
    at the first member that is cut short or unreadable."""
    offset = 0
    with open(path, "rb") as f:
        inflate = zlib.decompressobj(wbits=31)
        text = b""
        pending = b""
        while True:
            data = pending or f.read(_CHUNK)
            pending = b""
            if not data:
                return
            try:
                text += inflate.decompress(data)
            except zlib.error:
                return
            if not inflate.eof:
                offset += len(data)
                continue
            offset += len(data) - len(inflate.unused_data)
            try:
                records = [json.loads(line) for line in text.splitlines() if line.strip()]
            except ValueError:
                return
            yield offset, records
            pending, text = inflate.unused_data, b""
            inflate = zlib.decompressobj(wbits=31)


class ArchiveDir:
    """The archive directory: its day files, read and appended to."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        # day -> (file size when read, job ids in it): the dedupe set of each open day.
        self._days: dict[str, tuple[int, set[str]]] = {}

    def path(self, day: str) -> Path:
        return self.root / f"{check_day(day)}{SUFFIX}"

    def days(self) -> list[str]:
        if not self.root.is_dir():
            return []
        names = (p.name[: -len(SUFFIX)] for p in self.root.glob(f"*{SUFFIX}"))
        return sorted(n for n in names if _DAY.fullmatch(n))

    def read(self, day: str) -> Iterator[dict[str, Any]]:
        """The day's records, in the order written (whole members only)."""
        path = self.path(day)
        if not path.exists():
            raise InputError("day", f"no archive for {day}")
        for _, records in members(path):
            yield from records

    def open_day(self, day: str) -> set[str]:
        """The job ids the day's file holds, after truncating a member cut short by a
        crash; read again only when the file changed since (another writer)."""
        path = self.path(day)
        size = path.stat().st_size if path.exists() else 0
        known = self._days.get(day)
        if known is not None and known[0] == size:
            return known[1]
        ids: set[str] = set()
        good = 0
        if size:
            for end, records in members(path):
                ids.update(str(r["job"]["id"]) for r in records)
                good = end
            if good < size:
                log.warning("archive %s: cutting %d bytes of a partial write", path, size - good)
                with open(path, "r+b") as f:
                    f.truncate(good)
                    f.flush()
                    os.fsync(f.fileno())
        self._days[day] = (good, ids)
        return ids

    def append(self, day: str, records: list[dict[str, Any]]) -> int:
        """Write the records not yet in the day's file as one gzip member, flushed and
        fsynced; returns how many were written."""
        ids = self.open_day(day)
        fresh = [r for r in records if str(r["job"]["id"]) not in ids]
        if not fresh:
            return 0
        self.root.mkdir(parents=True, exist_ok=True)
        lines = b"".join(
            json.dumps(r, separators=(",", ":"), sort_keys=True).encode() + b"\n" for r in fresh
        )
        path = self.path(day)
        created = not path.exists()
        with open(path, "ab") as f:
            f.write(gzip.compress(lines, compresslevel=6, mtime=0))
            f.flush()
            os.fsync(f.fileno())
        if created:  # the new name must survive a crash too
            dir_fd = os.open(self.root, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        ids.update(str(r["job"]["id"]) for r in fresh)
        self._days[day] = (path.stat().st_size, ids)
        return len(fresh)


def archive_pass(store: RedisStore, archive: ArchiveDir, *, limit: int = 500) -> int:
    """Archive the finished jobs waiting for it, then let their records expire.
    Returns how many were archived (written now, or found written by an earlier pass
    that died before their expiry was set)."""
    queue = ArchiveStore(store)
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    if not queue.take_turn(owner, 120_000):
        return 0
    try:
        due = queue.due(limit)
        by_day: dict[str, list[tuple[str, int, dict[str, Any]]]] = {}
        for job_id, ended in due:
            record = queue.record(job_id)
            if record is None:  # gone without its expiry (deleted by hand): nothing to keep
                log.warning("archive: job %s is gone; dropped from the queue", job_id)
                store.retain_archived(job_id, ended)
                continue
            by_day.setdefault(utc_day(ended), []).append((job_id, ended, record))
        done = 0
        for day, batch in sorted(by_day.items()):
            archive.append(day, [record for _, _, record in batch])
            for job_id, ended, _ in batch:
                store.retain_archived(job_id, ended)
                done += 1
        return done
    finally:
        queue.give_turn(owner)


def release_unarchived(store: RedisStore, *, limit: int = 500) -> int:
    """With no archive configured (any more), jobs still waiting for one get their
    expiry unarchived, or they would stay for good; returns how many."""
    due = ArchiveStore(store).due(limit)
    if due:
        log.warning("archive: ARCHIVE_DIR is not set; %d jobs expire unarchived", len(due))
    for job_id, ended in due:
        store.retain_archived(job_id, ended)
    return len(due)
