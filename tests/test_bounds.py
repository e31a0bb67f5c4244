"""Bounds on what the upstream sends: whole-call deadlines, file size caps, bounded
SSE events, a limit on unreadable streams, and an error entry for every failed fetch.

Driven against :class:`tests.hostile.HostileServer` (real HTTP on 127.0.0.1) and a
real Redis server.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from httpx_sse._decoders import SSEDecoder, SSELineDecoder

from orchestrator.errors import APITimeoutError, ResponseTooLargeError
from orchestrator.jobs import files as fetching
from orchestrator.jobs.follower import Follower
from orchestrator.jobs.model import validate_submission
from orchestrator.runtime import Runtime
from orchestrator.settings import load_settings
from orchestrator.store.follows import FollowStore
from orchestrator.store.jobs import RedisStore
from orchestrator.wire.aclient import AsyncWorkersClient
from orchestrator.wire.client import WorkersClient
from orchestrator.wire.models import Worker
from orchestrator.wire.retry import RetryPolicy
from orchestrator.wire.sse import HEAD_BYTES, EventParser

from .hostile import HostileServer

ONCE = RetryPolicy(max_retries=0)
MiB = 2**20


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileServer]:
    with HostileServer() as server:
        yield server


@pytest.fixture(autouse=True)
def _calm(hostile: HostileServer) -> None:
    hostile.modes.clear()
    hostile.stream_connections = 0
    hostile.cookies_sent.clear()


def client(hostile: HostileServer, **options: object) -> WorkersClient:
    return WorkersClient(hostile.url, "k", retry=ONCE, **options)  # type: ignore[arg-type]


# --- the SSE reader ---------------------------------------------------------------

STREAMS = [
    b'id: 0\ndata: {"a": 1}\n\nid: 1\ndata: [2]\n\n',
    b"data: one\r\ndata: two\r\n\r\n: a comment\r\n\r\ndata:three\r\rdata: 4\n\n",
    b"event: ping\n\nretry: 10\n\nretry: x\n\ndata\n\nfoo: bar\n\nid\n\n",
    b"id: 7\n\n\n\ndata: after an id, blank lines are events\n\ndata: unterminated",
    "data: caf\u00e9 \u2603\n\n".encode() + b"data: \xff bad utf-8\n\n",
    # \n alone (the usual case, read a line at a time without a search): several events
    # to a chunk, a comment, data on two lines, a field with no space, \r only at the end.
    b'id: 0\nevent: update\ndata: {"t": 1}\n\n: keep-alive\n\nid: 1\ndata: a\ndata:b\n\n'
    b"event: end\ndata: {}\n\ndata: last\r\n\r\n",
]


def reference_events(raw: bytes) -> list[str]:
    """What httpx_sse (the reader before) makes of ``raw``: each event's data."""
    lines, decoder, out = SSELineDecoder(), SSEDecoder(), []
    for line in [*lines.decode(raw.decode("utf-8", "replace")), *lines.flush()]:
        event = decoder.decode(line.rstrip("\n"))
        if event is not None:
            out.append(event.data)
    return out


@pytest.mark.parametrize("raw", STREAMS)
@pytest.mark.parametrize("piece", [1, 2, 3, 7, 10_000])
def test_the_bounded_reader_sees_the_events_httpx_sse_sees(raw: bytes, piece: int) -> None:
    """The n-th event is update n: the new reader must count events exactly as before,
    however the bytes are split into chunks."""
    parser = EventParser(1024)
    got = [e.data for i in range(0, len(raw), piece) for e in parser.feed(raw[i : i + piece])]
    assert got == reference_events(raw)


@pytest.mark.parametrize("piece", [1, 5, 40, 10_000])
def test_oversize_lines_are_cut_alike_however_the_bytes_come(piece: int) -> None:
    """A line over the bound, whole in one chunk or spread over many, gives the same
    events: the same head kept, the same full size counted."""
    raw = (b"data: " + b"x" * 100 + b"\n\n" + b"event: " + b"e" * 90 + b"\ndata: ok\n\n"
           + b"y" * 70 + b": z\n\ndata: " + b"w" * 30 + b"\ndata: v\n\n")  # fmt: skip
    parser = EventParser(16)
    got = [e for i in range(0, len(raw), piece) for e in parser.feed(raw[i : i + piece])]
    assert [(e.data, e.size, e.truncated) for e in got] == [
        ("x" * 16, 100, True), ("ok", 2, False), ("w" * 16, 32, True)
    ]  # fmt: skip
    assert len(parser._line) == 0 and len(parser._data) == 0


def test_an_oversize_event_is_marked_and_never_held_whole() -> None:
    cap, size = 64 * 1024, 50 * MiB
    parser = EventParser(cap)
    events = list(parser.feed(b'data: {"n": 0}\n\ndata: "'))
    chunk = b"z" * (64 * 1024)
    for _ in range(size // len(chunk)):
        events += parser.feed(chunk)
        assert len(parser._line) <= cap + 16 and len(parser._data) <= cap
    events += parser.feed(b'"\n\ndata: {"n": 2}\n\n')
    assert [e.truncated for e in events] == [False, True, False]
    assert events[1].size == size + 2 and events[1].data == '"' + "z" * (HEAD_BYTES - 1)


# --- deadlines --------------------------------------------------------------------


def test_a_dripping_answer_is_cut_at_the_call_deadline(hostile: HostileServer) -> None:
    """One byte every 0.1 s never trips a 5 s read timeout; the 1 s deadline cuts it."""
    hostile.modes["create"] = "drip"
    with client(hostile, timeout=5.0, deadline=1.0) as c:
        started = time.monotonic()
        with pytest.raises(APITimeoutError, match="deadline of 1s passed"):
            c.create("hello")
        assert time.monotonic() - started < 2.5


def test_the_async_client_has_the_same_deadline(hostile: HostileServer) -> None:
    hostile.modes["create"] = "drip"

    async def run() -> float:
        async with AsyncWorkersClient(hostile.url, "k", retry=ONCE, deadline=1.0) as c:
            started = time.monotonic()
            with pytest.raises(APITimeoutError, match="deadline"):
                await c.create("hello")
            return time.monotonic() - started

    assert asyncio.run(run()) < 2.5


def test_a_cookie_the_upstream_sets_is_never_sent_back(hostile: HostileServer) -> None:
    """Both clients keep no cookies: each answer to create sets one, and no request
    (creates, a stream) carries it back."""
    hostile.modes["create"] = "cookie"
    with client(hostile) as c:
        worker = c.create("one")
        c.create("two")
        assert [u.data for u in c.stream_updates(worker.id)] == [{"n": 0}]

    async def run() -> None:
        async with AsyncWorkersClient(hostile.url, "k", retry=ONCE) as c:
            await c.create("three")
            await c.create("four")

    asyncio.run(run())
    assert hostile.cookies_sent == [None] * 5


def test_a_dripping_file_is_cut_at_the_file_deadline(
    hostile: HostileServer, tmp_path: Path
) -> None:
    with client(hostile, timeout=5.0, file_deadline=1.0) as c:
        started = time.monotonic()
        with pytest.raises(APITimeoutError, match="deadline"):
            c.download_file("wrk_hostile", "drip", tmp_path / "drip")
        assert time.monotonic() - started < 2.5
    assert not list(tmp_path.iterdir())  # no partial file left


# --- file size ----------------------------------------------------------------------


def test_a_huge_content_length_is_refused_before_reading(
    hostile: HostileServer, tmp_path: Path
) -> None:
    too_large = pytest.raises(ResponseTooLargeError, match="2147483648 bytes")
    with client(hostile, file_max_bytes=MiB) as c, too_large:
        c.download_file("wrk_hostile", "huge", tmp_path / "huge")
    assert not list(tmp_path.iterdir())


def test_an_endless_file_stops_at_the_cap_and_is_deleted(
    hostile: HostileServer, tmp_path: Path
) -> None:
    too_large = pytest.raises(ResponseTooLargeError, match="passed the 1048576-byte limit")
    with client(hostile, file_max_bytes=MiB, file_deadline=30.0) as c, too_large:
        c.download_file("wrk_hostile", "endless", tmp_path / "endless")
    assert not list(tmp_path.iterdir())


# --- every fetch ends in the files index ---------------------------------------------


@pytest.fixture
def runtime(hostile: HostileServer, store: RedisStore, tmp_path: Path) -> Iterator[Runtime]:
    settings = load_settings(
        redis_url="redis://unused", key_prefix=store.keys.prefix, files_dir=tmp_path / "files",
        workers_api_url=hostile.url, workers_api_key="k", max_retries=0,
        file_max_bytes=MiB, file_deadline=1.0, http_timeout=5.0,
    )  # fmt: skip
    rt = Runtime(settings, store)
    yield rt
    rt.close()


def fetch_all(rt: Runtime, names: list[str]) -> dict[str, dict[str, object]]:
    job, _ = rt.store.create_job(validate_submission(100, input="x", fetch_files=True))
    rt.store.set_submitted(job, Worker(id="wrk_hostile"))
    for name in names:
        fetching.fetch_file(rt, job.id, name)
    return rt.store.files(job.id)


def test_every_odd_file_gets_an_entry(runtime: Runtime, tmp_path: Path) -> None:
    long_name, deep = "n" * 250, "/".join(["d"] * 2000)
    names = [long_name, deep, "a", "a/b", "c/d", "c", "big/huge", "big/endless"]
    files = fetch_all(runtime, names)
    assert sorted(files) == sorted(names)  # nothing failed silently
    assert files[long_name]["size"] == len(b"file:" + long_name.encode())
    assert "deeper than 32 levels" in str(files[deep]["refused"])
    assert "sha256" in files["a"] and "sha256" in files["c/d"]
    assert "cannot write the file" in str(files["a/b"]["error"])  # "a" is a file
    assert "cannot write the file" in str(files["c"]["error"])  # "c" is a directory
    assert "over the 1048576-byte limit" in str(files["big/huge"]["error"])
    assert "passed the 1048576-byte limit" in str(files["big/endless"]["error"])
    leftovers = [p.name for p in (tmp_path / "files").rglob("*") if p.name.endswith(".part")]
    assert leftovers == []


def test_a_transient_failure_is_recorded_on_the_last_attempt(runtime: Runtime) -> None:
    job, _ = runtime.store.create_job(validate_submission(100, input="x", fetch_files=True))
    runtime.store.set_submitted(job, Worker(id="wrk_hostile"))
    with pytest.raises(APITimeoutError):
        fetching.fetch_file(runtime, job.id, "drip")
    assert runtime.store.files(job.id) == {}
    info = fetching.fetch_file(runtime, job.id, "drip", last_attempt=True)
    assert "deadline" in str(info["error"]) and runtime.store.files(job.id) == {"drip": info}


# --- streams --------------------------------------------------------------------------


def test_an_oversize_event_costs_the_client_about_the_cap(hostile: HostileServer) -> None:
    """A 5 MiB event through a 64 KiB cap: marked, in its place, never held whole."""
    hostile.modes["stream"] = "oversize"

    async def run() -> list[object]:
        async with AsyncWorkersClient(hostile.url, "k", event_max_bytes=64 * 1024) as c:
            return [u.data async for u in c.stream_updates("wrk_hostile")]

    tracemalloc.start()
    try:
        updates = asyncio.run(run())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert updates[0] == {"n": 0} and updates[2] == {"n": 2}
    assert updates[1] == {"truncated": True, "bytes": hostile.oversize_bytes + 2,
                          "head": '"' + "y" * (HEAD_BYTES - 1)}  # fmt: skip
    assert peak < 3 * MiB, f"peak {peak / MiB:.1f} MiB"


def test_the_sync_client_marks_an_oversize_event_too(hostile: HostileServer) -> None:
    hostile.modes["stream"] = "oversize"
    with client(hostile, event_max_bytes=64 * 1024) as c:
        updates = [u.data for u in c.stream_updates("wrk_hostile")]
    assert [type(u) for u in updates] == [dict] * 3 and updates[2] == {"n": 2}
    assert updates[1]["truncated"] is True  # type: ignore[index]


def follow(
    redis_url: str, store: RedisStore, hostile: HostileServer, *, event_max_bytes: int = MiB
) -> str:
    """Follow one job on the hostile server's worker until its follow ends: its id."""
    job, _ = store.create_job(validate_submission(100, input="x"))
    store.set_submitted(job, Worker(id="wrk_hostile"))
    store.request_follow(job.id, now=True)

    async def run() -> None:
        follows = FollowStore.from_url(redis_url, store.keys.prefix)
        done, stop = asyncio.Event(), asyncio.Event()

        async def finished(job_id: str) -> None:
            done.set()

        async with AsyncWorkersClient(
            hostile.url, "k", retry=ONCE, event_max_bytes=event_max_bytes
        ) as c:
            follower = Follower(follows, c, finished, poll_seconds=0.05, max_parse_failures=3)
            task = asyncio.create_task(follower.run(stop))
            try:
                await asyncio.wait_for(done.wait(), 20)
            finally:
                stop.set()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, 10)
                await follows.close()

    asyncio.run(run())
    return job.id


def test_a_stream_that_never_parses_fails_the_job(
    redis_url: str, store: RedisStore, hostile: HostileServer
) -> None:
    hostile.modes["stream"] = "nonjson"
    job_id = follow(redis_url, store, hostile)
    assert store.require_job(job_id).status == "failed"
    assert hostile.stream_connections == 3  # tried STREAM_MAX_PARSE_FAILURES times, then done
    detail = str(store.history(job_id)[-1]["detail"])
    assert "unreadable after 3 tries" in detail and "event 0 is not JSON" in detail


def test_an_oversize_event_is_stored_as_a_marked_record_at_its_index(
    redis_url: str, store: RedisStore, hostile: HostileServer
) -> None:
    hostile.modes["stream"] = "oversize"
    follow(redis_url, store, hostile, event_max_bytes=64 * 1024)
    updates = store.read_updates("wrk_hostile")
    assert [i for i, _ in updates] == [0, 1, 2]
    assert updates[1][1]["truncated"] is True
    assert updates[1][1]["bytes"] == hostile.oversize_bytes + 2
    assert updates[2][1] == {"n": 2}
