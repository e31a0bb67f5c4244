"""The one place that opens Redis connections, and the error type callers catch.

Every client of the orchestrator comes from here: :func:`connect` for the synchronous
store (tasks, the CLI, backends) and :func:`connect_async` for the stream follower. A
later Redis topology (Sentinel, Cluster) changes these two functions, not their callers.

Code outside :mod:`orchestrator.store` catches :data:`StoreError` (every error a store
call raises when Redis misbehaves or is away) instead of importing ``redis`` itself.
"""

from __future__ import annotations

import redis
import redis.asyncio as aioredis
from redis.exceptions import RedisError as StoreError

__all__ = ["StoreError", "connect", "connect_async"]


def connect(url: str) -> redis.Redis:
    """A pooled client that decodes replies to str.

    The socket timeout stays above the longest blocking read we issue (5 s).
    """
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        health_check_interval=30,
        socket_keepalive=True,
        socket_timeout=30,
        socket_connect_timeout=5,
    )


def connect_async(url: str, *, max_connections: int = 100) -> aioredis.Redis:
    """The stream follower's client. A blocking pool: with thousands of streams, a burst
    of Redis calls waits for a connection instead of failing ("Too many connections")."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, decode_responses=True, max_connections=max_connections, timeout=30
    )
    return aioredis.Redis(connection_pool=pool)
