"""Bounds on what a hostile upstream sends: a JSON answer or a stream event that
inflates to 64 MB is read a piece at a time and never held whole, only the encodings we
inflate are asked for, a turn's file listing is fetched a bounded few at a time, and a
turn that never ends upstream is read again with growing pauses."""

from __future__ import annotations

import asyncio
import tracemalloc
from typing import Any

import pytest

from orchestrator.celery import make_app
from orchestrator.errors import APIError, ResponseTooLargeError
from orchestrator.jobs import steps
from orchestrator.wire.aclient import AsyncWorkersClient
from orchestrator.wire.client import WorkersClient
from orchestrator.wire.retry import RetryPolicy

from .held import assert_nothing_held, not_ended
from .hostile_api import HostileAPI, bombs
from .injection import (
    MiB,
    follow,
    started,
    streamed,
)
from .injection import api as api  # the fixtures: the hostile upstream, a runtime
from .injection import make_rt as make_rt

# --- bounds on JSON answers -------------------------------------------------------------


@pytest.mark.parametrize("text", ["create:gzip-bomb", "create:503-bomb"])
def test_a_json_answer_is_read_with_a_bound(api: HostileAPI, text: str) -> None:
    """A 64 KB answer that inflates to 64 MB: refused at the cap (a success) or read
    only for its head (an error), never held whole. Before: 64 MB in memory, and the
    padded Worker was accepted."""
    client = WorkersClient(api.url, "k", retry=RetryPolicy(max_retries=0),
                           answer_max_bytes=MiB)  # fmt: skip
    bombs()  # built before measuring (the server runs in this process)
    tracemalloc.start()
    try:
        with client, pytest.raises(APIError) as caught:
            client.create(f"{text}#bound")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * MiB, f"peak {peak / MiB:.1f} MiB"
    if text == "create:gzip-bomb":
        assert isinstance(caught.value, ResponseTooLargeError)
        assert "passed the 1048576-byte limit" in str(caught.value)
    else:
        assert "HTTP 503" in str(caught.value)


def test_the_async_client_reads_a_json_answer_with_a_bound(api: HostileAPI) -> None:
    async def create() -> None:
        async with AsyncWorkersClient(api.url, "k", retry=RetryPolicy(max_retries=0),
                                      answer_max_bytes=MiB) as client:  # fmt: skip
            await client.create("create:gzip-bomb#async")

    with pytest.raises(ResponseTooLargeError, match="1048576-byte limit"):
        asyncio.run(create())


def test_only_the_encodings_we_inflate_are_asked_for(api: HostileAPI) -> None:
    """httpx asks for br and zstd too when their packages are installed; an answer in
    one of them would then reach the JSON parser undecoded and fail every job."""
    with WorkersClient(api.url, "k") as client:
        assert client._http.headers["accept-encoding"] == "gzip, deflate"
    client_async = AsyncWorkersClient(api.url, "k")
    assert client_async._http.headers["accept-encoding"] == "gzip, deflate"
    asyncio.run(client_async.aclose())


def test_a_gzip_bombed_stream_is_inflated_a_piece_at_a_time(make_rt: Any) -> None:
    """One event that inflates to 64 MB: a truncated record in its place (as an
    oversize event), and the client never holds the 64 MB. Before: httpx inflated each
    64 KB network chunk whole, 64 MB at once, ahead of the event bound."""
    rt = make_rt()
    job = started(rt, "stream:gzip-bomb#s")
    assert job.worker_id is not None
    bombs()

    async def read() -> list[Any]:
        async with AsyncWorkersClient(rt.settings.workers_api_url or "", "k",
                                      event_max_bytes=64 * 1024) as client:  # fmt: skip
            return [u.data async for u in client.stream_updates(str(job.worker_id))]

    tracemalloc.start()
    try:
        updates = asyncio.run(read())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert updates[0] == {"n": 0} and updates[2] == {"n": 2}
    assert updates[1]["truncated"] is True and updates[1]["bytes"] == 64 * 2**20 + 2
    assert peak < 8 * MiB, f"peak {peak / MiB:.1f} MiB"
    assert follow(rt, job.id) == ["completed"]
    assert_nothing_held(rt.store, [job.id])


def test_a_turn_publishing_too_many_files_fetches_a_bounded_few(make_rt: Any) -> None:
    """120 listed names, 60 of them distinct: 25 fetches sent (FILES_MAX_PER_TURN), each
    name once, and a note in the job's history. Before: one fetch task per listed name,
    however many (a hostile listing could send a hundred thousand)."""
    rt = make_rt()
    job = streamed(rt, "files:many#cap", fetch_files=True)
    # Finalized here, with an app on the test's broker: the fetches wait in its queue.
    assert steps.finalize(rt, make_app(rt.settings), job.id) == "completed"
    assert rt.store.broker.waiting("api") == 25
    notes = [e["detail"] for e in rt.store.history(job.id) if e["detail"]]
    assert any("published 60 files; fetching the first 25" in n for n in notes), notes


def test_a_turn_that_never_ends_upstream_is_read_again_with_growing_pauses(
    make_rt: Any, api: HostileAPI
) -> None:
    """The stream closes at once and retrieve says running, for ever: the job stays
    followed (it ends by its deadline), but is read again with pauses doubling to 5 s,
    not in a tight loop (before: about 12 reads a second here)."""
    rt = make_rt()
    job = started(rt, "stream:closes-forever#quiet")
    outcomes = follow(rt, job.id, seconds=4)
    reads = api.calls[f"stream {rt.store.require_job(job.id).worker_id}"]
    assert set(outcomes) == {"refollow"} and 3 <= reads <= 7, (outcomes, reads)
    assert not_ended(rt.store, [job.id]) == {job.id: "submitted"}
