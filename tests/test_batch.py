"""Batches of Redis writes with scripts, on a private real Redis: one round trip, and a
script Redis has forgotten (a restart, SCRIPT FLUSH) is loaded and run again."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

from orchestrator.ops.redis_server import RedisServer
from orchestrator.store.batch import AsyncBatch, Batch

SCRIPT = "redis.call('INCR', KEYS[1]); return ARGV[1] .. redis.call('GET', KEYS[1])"


@pytest.fixture
def private_url() -> Iterator[str]:
    with RedisServer(appendonly=False) as server:
        yield server.url


def test_scripts_go_in_one_round_trip_and_survive_a_script_flush(
    private_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = redis.Redis.from_url(private_url, decode_responses=True)
    script = r.register_script(SCRIPT)
    r.script_flush()
    batch = Batch(r)
    batch.pipe.set("n", 0)
    first = batch.script(script, ["n"], ["a"])
    batch.pipe.get("n")
    # NOSCRIPT: the script is loaded and run once, after the rest of the batch.
    assert batch.execute() == [True, "a1", "0"] and first == 1
    sent: list[object] = []
    conn_class = r.connection_pool.connection_class
    real = conn_class.send_packed_command

    def counting(self: object, command: object, check_health: bool = True) -> None:
        sent.append(command)
        real(self, command, check_health)  # type: ignore[arg-type]

    monkeypatch.setattr(conn_class, "send_packed_command", counting)
    again = Batch(r)
    assert again.script(script, ["n"], ["b"]) == 0
    again.pipe.get("n")
    assert again.execute() == ["b2", "2"]
    assert len(sent) == 1  # one round trip: no SCRIPT EXISTS before the pipeline
    monkeypatch.undo()
    bad = Batch(r)
    bad.pipe.set("s", "x")
    bad.pipe.incr("s")
    with pytest.raises(redis.ResponseError):
        bad.execute()
    r.close()


def test_async_batch_reports_errors_in_place(private_url: str) -> None:
    async def main() -> list[object]:
        r = aioredis.Redis.from_url(private_url, decode_responses=True)
        script = r.register_script(SCRIPT)
        await r.script_flush()
        batch = AsyncBatch(r)
        batch.script(script, ["m"], ["x"])
        batch.pipe.set("t", "text")
        batch.pipe.incr("t")
        batch.script(script, ["m"], ["y"])
        try:
            return await batch.execute(raise_on_error=False)
        finally:
            await r.aclose()

    replies = asyncio.run(main())
    assert replies[:2] == ["x1", True] and replies[3] == "y2"
    assert isinstance(replies[2], redis.ResponseError)
