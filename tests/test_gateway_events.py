# ruff: noqa: F811  (the gateway fixtures are imported by name)
"""Live updates over SSE from a real gateway process: a real Celery worker runs the job
against the emulator, clients read with httpx and curl, resume with Last-Event-ID after
the server drops them, follow signed links; the fan-out drops a slow client alone."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.gateway.fanout import DROPPED, Hub
from orchestrator.gateway.links import sign
from orchestrator.jobs.model import Submission
from orchestrator.store.jobs import RedisStore
from orchestrator.store.live import LiveStore

from .conftest import Emulator
from .gateway_support import (  # noqa: F401
    SIGNING_KEY,
    Gateway,
    gateway,
    gateway_extra,
    start_gateway,
    worker,
)


def sse_events(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    """Events of an SSE body, comments included as ``{"comment": ...}``."""
    event: dict[str, str] = {}
    for line in lines:
        if line == "":
            if event:
                yield event
            event = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            event[name] = event[name] + "\n" + value if name in event else value
    if event:
        yield event


def read_stream(
    url: str, headers: dict[str, str], deadline: float
) -> tuple[list[tuple[int, Any]], dict[str, Any] | None]:
    """One connection: the updates (index, data) it brought and its end event (or None
    when the server closed before the end)."""
    got: list[tuple[int, Any]] = []
    with httpx.stream("GET", url, headers=headers, timeout=30) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for event in sse_events(response.iter_lines()):
            assert time.monotonic() < deadline, "the stream did not end in time"
            if event.get("event") == "end":
                return got, json.loads(event["data"])
            if "id" in event:
                got.append((int(event["id"]), json.loads(event["data"])))
    return got, None


def follow(
    url: str, token: str | None, after: int | None = None, timeout: float = 60
) -> tuple[list[int], dict[str, Any], int]:
    """Read to the end, reconnecting after each drop with Last-Event-ID as a browser does:
    (every index received, the end event, how many connections it took)."""
    deadline = time.monotonic() + timeout
    indexes: list[int] = []
    connections = 0
    while time.monotonic() < deadline:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        last = indexes[-1] if indexes else after
        if last is not None:
            headers["Last-Event-ID"] = str(last)
        got, end = read_stream(url, headers, deadline)
        connections += 1
        indexes += [i for i, _ in got]
        if end is not None:
            return indexes, end, connections
    raise AssertionError(f"no end event within {timeout}s")


def stored_turn(store: RedisStore, job_id: str) -> list[int]:
    job = store.get_job(job_id)
    assert job is not None and job.worker_id and job.update_to is not None
    stored = store.read_updates(job.worker_id, (job.update_from or 0) - 1, count=10_000)
    return [i for i, _ in stored if i < job.update_to]


def test_sse_streams_a_turn_resuming_after_server_drops(
    env: dict[str, str], tmp_path: Path, store: RedisStore, emulator: Emulator, worker: Any
) -> None:
    emulator.configure(turn_seconds=1.5, events_per_turn=12)
    gw = start_gateway(env, tmp_path, store, GATEWAY_SSE_MAX_EVENTS="4")
    try:
        token = gw.token("read")
        job = gw.client("submit").post("/v1/jobs", json={"input": "stream me"}).json()
        url = f"{gw.url}/v1/jobs/{job['id']}/events"
        indexes, end, connections = follow(url, token)
        assert connections >= 3  # the server dropped it (every 4 events) mid-turn
        assert indexes == stored_turn(store, job["id"])  # each update once, in order
        assert len(indexes) >= 12 and len(set(indexes)) == len(indexes)
        assert end["status"] == "completed" and end["cost_micro"] > 0
        # Once ended, a new connection replays the turn and ends again.
        again, end2, _ = follow(url, token)
        assert again == indexes and end2 == end
        # Resuming from the middle gives exactly the rest.
        rest, _, _ = follow(url, token, after=indexes[5])
        assert rest == indexes[6:]
        bad = httpx.get(url, headers={"Authorization": f"Bearer {token}", "Last-Event-ID": "x"})
        assert bad.status_code == 400 and bad.json()["error"]["field"] == "last_event_id"

        # A second turn of the same worker: its stream holds only that turn's updates.
        submit = gw.client("submit")
        turn = submit.post("/v1/jobs/continue", json={"worker": job["id"], "input": "more"})
        assert turn.status_code == 202, turn.text
        second = turn.json()
        assert second["kind"] == "continue"
        more, end3, _ = follow(f"{gw.url}/v1/jobs/{second['id']}/events", token)
        assert more == stored_turn(store, second["id"]) and more[0] == indexes[-1] + 1
        assert end3["status"] == "completed"
        worker_id = store.get_job(job["id"]).worker_id  # type: ignore[union-attr]
        assert submit.get(f"/v1/jobs/{second['id']}").json()["worker_id"] == worker_id
        # The first job's stream still ends where its own turn did.
        assert follow(url, token)[0] == indexes
        email = submit.get(f"/v1/jobs/{job['id']}/email")
        assert email.status_code == 200 and "@" in email.json()["email"]
    finally:
        gw.proc.stop()


def test_many_clients_share_one_job_and_curl_reads_it(
    gateway: Gateway, store: RedisStore, emulator: Emulator, worker: Any, tmp_path: Path
) -> None:
    emulator.configure(turn_seconds=1.0, events_per_turn=8)
    token = gateway.token("read")
    job = gateway.client("submit").post("/v1/jobs", json={"input": "fan out"}).json()
    url = f"{gateway.url}/v1/jobs/{job['id']}/events"

    async def one() -> list[int]:
        out: list[int] = []
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(timeout=30) as client, client.stream(
            "GET", url, headers=headers
        ) as response:
            lines: list[str] = [line async for line in response.aiter_lines()]
        for event in sse_events(iter(lines)):
            if "id" in event:
                out.append(int(event["id"]))
        assert any(e.get("event") == "end" for e in sse_events(iter(lines)))
        return out

    async def many() -> list[list[int]]:
        return await asyncio.gather(*(one() for _ in range(20)))

    header = tmp_path / "auth.hdr"
    header.write_text(f"Authorization: Bearer {token}\n")
    curl = subprocess.Popen(["curl", "-sS", "-N", "--max-time", "60", "-H", f"@{header}", url],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    results = asyncio.run(many())
    out, _ = curl.communicate(timeout=90)
    assert curl.returncode == 0
    expected = stored_turn(store, job["id"])
    assert all(r == expected for r in results)
    events = list(sse_events(iter(out.splitlines())))
    assert [int(e["id"]) for e in events if "id" in e] == expected
    assert json.loads(events[-1]["data"])["status"] == "completed"


def test_signed_links(gateway: Gateway, store: RedisStore, emulator: Emulator, worker: Any) -> None:
    api = gateway.client("read")
    job = gateway.client("submit").post("/v1/jobs", json={"input": "linked"}).json()
    made = api.post(f"/v1/jobs/{job['id']}/links", json={"seconds": 60})
    assert made.status_code == 201, made.text
    link = made.json()
    assert link["expires_at"] - time.time() <= 61
    url = gateway.url + link["url"]
    indexes, end, _ = follow(url, None)  # no token needed
    assert indexes == stored_turn(store, job["id"]) and end["status"] == "completed"
    cors = httpx.get(url, timeout=30)
    assert cors.headers["access-control-allow-origin"] == "*"
    token = link["url"].split("/")[3]
    expired = sign(SIGNING_KEY.encode(), job["id"], int(time.time()) - 1)
    assert httpx.get(f"{gateway.url}/v1/links/{expired}/events").status_code == 404
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert httpx.get(f"{gateway.url}/v1/links/{forged}/events").status_code == 404
    other = sign(b"another key" * 4, job["id"], int(time.time()) + 60)
    assert httpx.get(f"{gateway.url}/v1/links/{other}/events").status_code == 404
    # A link reads events only: the token in it opens nothing else.
    assert httpx.get(f"{gateway.url}/v1/jobs/{job['id']}",
                     headers={"Authorization": f"Bearer {token}"}).status_code == 401  # fmt: skip
    assert token not in gateway.proc.text()  # the access log shows /v1/links/***
    assert "/v1/links/***/events" in gateway.proc.text()


@pytest.mark.parametrize("buffer", [3])
def test_a_slow_client_is_dropped_alone(store: RedisStore, redis_url: str, buffer: int) -> None:
    """The fan-out over a real Redis: one reader for two clients; the one that reads
    nothing overflows its buffer and is dropped, the other gets every update."""
    job, _ = store.create_job(Submission(input="slow"))
    store.r.hset(store.keys.job(job.id), mapping={"worker_id": "wrk_slow", "update_from": 0})
    # Updates are stored only for a worker with records (a submitted turn's).
    store.r.hset(store.keys.worker("wrk_slow"), "active_job", job.id)

    async def run() -> tuple[list[int], list[Any]]:
        hub = Hub(LiveStore.from_url(redis_url, store.keys.prefix), buffer)
        try:
            feed, fast = await hub.join(job.id)
            _, slow = await hub.join(job.id)
            assert len(hub.feeds) == 1 and len(feed.clients) == 2
            got: list[int] = []
            for batch in range(3):
                payloads = [json.dumps({"n": batch * 2 + k}) for k in range(2)]
                store.append_updates("wrk_slow", batch * 2, payloads)
                while len(got) < batch * 2 + 2:
                    for index, frame in await asyncio.wait_for(fast.take(), 10):
                        assert frame.startswith(f"id: {index}\ndata: ".encode())
                        got.append(index)
            return got, list(slow.items)
        finally:
            await hub.close()

    got, left = asyncio.run(run())
    assert got == [0, 1, 2, 3, 4, 5]
    assert left == [DROPPED]


def test_keep_alive_comments_while_a_job_waits(
    env: dict[str, str], tmp_path: Path, store: RedisStore
) -> None:
    gw = start_gateway(env, tmp_path, store, GATEWAY_SSE_KEEPALIVE_SECONDS="0.2")
    try:
        token = gw.token("read")
        # A continue turn not begun: its worker's stream holds an earlier turn only.
        sub = Submission(kind="continue", worker_id="wrk_earlier", input="nobody runs me")
        job = store.create_job(sub)[0].model_dump()
        store.r.hset(store.keys.worker("wrk_earlier"), "relayed", 0)  # its earlier turn's
        store.append_updates("wrk_earlier", 0, [json.dumps({"earlier": n}) for n in range(3)])
        comments = 0
        url = f"{gw.url}/v1/jobs/{job['id']}/events"
        with httpx.stream("GET", url, headers={"Authorization": f"Bearer {token}"},
                          timeout=10) as response:  # fmt: skip
            for event in sse_events(response.iter_lines()):
                assert "id" not in event  # not begun: nothing of the earlier turn
                comments += event.get("comment") == "keep-alive"
                if comments == 3:
                    break
        assert comments == 3
    finally:
        gw.proc.stop()


def test_feeds_joining_while_the_reader_runs_are_not_ended(
    store: RedisStore, redis_url: str
) -> None:
    """A feed still making its first read must not look like a job that is gone."""
    jobs = []
    for i in range(60):
        job, _ = store.create_job(Submission(input=f"running {i}"))
        store.r.hset(store.keys.job(job.id), mapping={"worker_id": f"wrk_r{i}", "update_from": 0})
        store.r.hset(store.keys.worker(f"wrk_r{i}"), "active_job", job.id)
        jobs.append(job.id)

    async def run() -> list[Any]:
        hub = Hub(LiveStore.from_url(redis_url, store.keys.prefix), 100)
        try:
            await hub.join(jobs[0])  # the reader runs from here on, kept busy below
            writes = 0

            async def busy() -> None:
                nonlocal writes
                while writes < 200:
                    store.append_updates("wrk_r0", writes, [json.dumps({"n": writes})])
                    writes += 1
                    await asyncio.sleep(0.002)

            joined, _ = await asyncio.gather(
                asyncio.gather(*(hub.join(j) for j in jobs[1:] for _ in range(3))), busy()
            )
            await asyncio.sleep(1.0)  # several reads and state polls
            return [item for _, c in joined for item in c.items]
        finally:
            await hub.close()

    assert asyncio.run(run()) == []
