"""The API client's connections are kept per thread (``PerThreadTransport``): each pool
thread of a worker reuses its own keep-alive connection instead of queueing on one
shared pool, and closing the client closes every thread's connections."""

from __future__ import annotations

import threading

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
    seen: dict[str, object] = {}
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            for _ in range(3):
                assert client.retrieve(made.id).id == made.id
            seen[name] = transport._local.transport
        except BaseException as exc:  # reported below, with the thread's name
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"t{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors and len(seen) == 3
    assert len({id(t) for t in seen.values()}) == 3  # a pool each
    pools = [t._pool for t in transport._made]
    assert len(pools) == 4  # the main thread's and the three workers'
    # Three calls a thread went over one connection of that thread's pool.
    assert all(len(pool.connections) == 1 for pool in pools)
    client.close()
    assert transport._made == []
    assert all(pool.connections == [] for pool in pools)
