"""The API client's connections are kept per thread (``PerThreadTransport``): each pool
thread of a worker reuses its own keep-alive connection instead of queueing on one
shared pool, and closing the client closes every thread's connections."""

from __future__ import annotations

import gc
import threading
from typing import Any

import httpx

from orchestrator.wire.client import WorkersClient
from orchestrator.wire.deadline import PerThreadTransport

from .conftest import Emulator


def test_each_thread_keeps_its_own_connection_and_close_ends_them_all(
    emulator: Emulator,
) -> None:
    transport = PerThreadTransport(httpx.Limits(max_connections=4))
    client = WorkersClient(emulator.url, emulator.api_key, transport=transport)
    made = client.create("first")
    pools: dict[str, Any] = {}
    open_then: dict[str, int] = {}
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            for _ in range(3):
                assert client.retrieve(made.id).id == made.id
            pool = transport._local.pool.transport._pool
            pools[name], open_then[name] = pool, len(pool.connections)
        except BaseException as exc:  # reported below, with the thread's name
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"t{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors and len(pools) == 3
    mine = transport._local.pool.transport._pool
    assert len({id(p) for p in [*pools.values(), mine]}) == 4  # a pool each
    # Three calls a thread went over one connection of that thread's pool ...
    assert open_then == dict.fromkeys(pools, 1)
    # ... which ended with its thread: nothing of a finished thread is left open.
    gc.collect()
    assert all(pool.connections == [] for pool in pools.values())
    assert [p.transport._pool for p in transport._made] == [mine]
    assert len(mine.connections) == 1
    client.close()
    assert list(transport._made) == [] and mine.connections == []
