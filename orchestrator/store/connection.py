"""The one place that opens Redis connections, and the error type callers catch.

Every client of the orchestrator comes from here: :func:`connect` for the synchronous
store (tasks, the CLI, backends, a Redis broker's reads) and :func:`connect_async` for the
stream follower. Three forms of address are understood:

- ``redis://``, ``rediss://``, ``unix://``: one server;
- ``redis+sentinel://host:port,host:port/<master name>/<db>``: the primary that Redis
  Sentinel names, asked of the sentinels listed, and asked again after a failover (the
  pool reconnects to whichever server the sentinels promoted);
- ``redis+cluster://host:port,host:port/``: a Redis Cluster, found from the nodes listed
  (redis-py's cluster clients, which follow the slots as they move). The store's keys
  all carry one hash tag there (:meth:`orchestrator.store.keys.Keys.for_client`), so
  every script, transaction and multi-key command runs on the one primary of that slot.

Passwords come as arguments (from settings), never inside a URL that might be logged:
``password`` for the data servers, ``sentinel_password`` for the sentinels themselves.

Code outside :mod:`orchestrator.store` catches :data:`StoreError` (every error a store
call raises when Redis misbehaves or is away) instead of importing ``redis`` itself, and
tells an error reply (:data:`ReplyError`: a script's refusal) from a failure to reach
Redis by it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as acluster
import redis.asyncio.sentinel as asentinel
import redis.cluster
import redis.sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError as StoreError
from redis.exceptions import ResponseError as ReplyError
from redis.retry import Retry

from orchestrator.errors import ConfigError

__all__ = [
    "CLUSTER_SCHEME",
    "SENTINEL_SCHEME",
    "ReplyError",
    "SentinelAddress",
    "StoreError",
    "connect",
    "connect_async",
    "home_client",
    "is_cluster",
    "parse_cluster_url",
    "parse_sentinel_url",
    "pubsub",
    "pubsub_async",
]

SENTINEL_SCHEME = "redis+sentinel://"
CLUSTER_SCHEME = "redis+cluster://"

#: The socket timeout stays above the longest blocking read we issue (5 s).
_SYNC_OPTIONS: dict[str, Any] = {
    "decode_responses": True,
    "health_check_interval": 30,
    "socket_keepalive": True,
    "socket_timeout": 30,
    "socket_connect_timeout": 5,
}
#: A sentinel answers at once or is down: ask the next one soon.
_SENTINEL_TIMEOUT = 1.0
#: Under Sentinel a call that meets a dead primary (or sentinels still agreeing on the
#: next one) is tried again: redis-py nests the retry (a command's tries, each one's
#: connect tries to the address the sentinels named), so 5 tries with a backoff of 0.1 s
#: doubling to 0.5 s ask the sentinels again every ~1.7 s and ride through ~10 s of
#: failover. Like redis-py's default retry, a command whose reply was lost may run
#: twice; our writes are scripts keyed by natural ids, so a second run is a no-op.
SENTINEL_RETRIES = 5
#: Under Cluster redis-py tries a call that met a dead primary again on a refreshed map
#: of the slots: 8 tries, backoff 0.1 s doubling to 1 s. A failover (~2.5 s here with
#: node timeout 1 s) can outlast them; callers then retry by their own means (task
#: retries, the follower's backoff), as the cluster's end-to-end test shows. A lost
#: reply may run a command twice, as under Sentinel: our writes are keyed by natural ids.
CLUSTER_RETRIES = 8


def _failover_retry() -> Retry:
    return Retry(ExponentialBackoff(cap=0.5, base=0.05), SENTINEL_RETRIES)


@dataclass(frozen=True)
class SentinelAddress:
    """Where Sentinel names the primary: the sentinels, the master name, the db."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int


def parse_sentinel_url(url: str, variable: str = "REDIS_URL") -> SentinelAddress:
    """``redis+sentinel://h:p,h:p/master/db`` → :class:`SentinelAddress`; ConfigError
    naming ``variable`` when malformed. A password in the URL is refused: it goes in
    the settings (``REDIS_PASSWORD``, ``REDIS_SENTINEL_PASSWORD``) so it is never
    printed with the address."""
    if not url.startswith(SENTINEL_SCHEME):
        raise ConfigError(variable, f"must start with {SENTINEL_SCHEME}")
    rest = url[len(SENTINEL_SCHEME) :]
    hosts, _, path = rest.partition("/")
    if "@" in hosts:
        raise ConfigError(variable, "carries a password: set it in REDIS_PASSWORD instead")
    sentinels = _host_ports(hosts, variable, "sentinel")
    master, _, db = path.strip("/").partition("/")
    if not master:
        raise ConfigError(variable, "names no master: redis+sentinel://h:p,h:p/<master>/<db>")
    if db and not db.isdigit():
        raise ConfigError(variable, "has a db that is not a number")
    return SentinelAddress(sentinels, unquote(master), int(db or 0))


def parse_cluster_url(url: str, variable: str = "REDIS_URL") -> tuple[tuple[str, int], ...]:
    """``redis+cluster://h:p,h:p/`` → the startup nodes; ConfigError naming ``variable``
    when malformed. No db (a cluster has only db 0) and no password (``REDIS_PASSWORD``)."""
    if not url.startswith(CLUSTER_SCHEME):
        raise ConfigError(variable, f"must start with {CLUSTER_SCHEME}")
    hosts, _, path = url[len(CLUSTER_SCHEME) :].partition("/")
    if "@" in hosts:
        raise ConfigError(variable, "carries a password: set it in REDIS_PASSWORD instead")
    if path.strip("/") not in ("", "0"):
        raise ConfigError(variable, "names a db: a Redis Cluster has only db 0")
    return _host_ports(hosts, variable, "cluster node")


def _host_ports(hosts: str, variable: str, what: str) -> tuple[tuple[str, int], ...]:
    """``h:p,h:p`` → ((host, port), ...); ConfigError naming ``variable`` for a part
    that is not host:port (``what``: the kind of server, for the message)."""
    found = []
    for part in hosts.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(variable, f"lists a {what} that is not host:port")
        found.append((host.strip("[]"), int(port)))
    return tuple(found)


def is_cluster(client: object) -> bool:
    """True for a Redis Cluster client (sync or async) of :func:`connect`."""
    return isinstance(client, redis.cluster.RedisCluster | acluster.RedisCluster)


def home_client(client: Any, key: str) -> Any:
    """The one-server client that holds ``key``: on a Redis Cluster the primary serving
    its slot now (asked again at each call: a failover moves it), else ``client``. For
    the per-server commands (SCAN, INFO, CONFIG, DBSIZE) about the store's own keys,
    which on a cluster all live on that primary (one hash tag)."""
    if isinstance(client, redis.cluster.RedisCluster):
        node = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
        return client.get_redis_connection(node)
    return client


def pubsub(client: Any, key: str) -> Any:
    """A pub/sub object (replies as str, subscribe confirmations skipped). On a Redis
    Cluster it listens on the primary holding ``key`` (any node would do: PUBLISH
    reaches every node), after a command that brings the client's map of the slots up
    to date, so that it never picks a primary a failover has replaced."""
    if isinstance(client, redis.cluster.RedisCluster):
        client.exists(key)
        node = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
        return client.pubsub(node=node, ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    return client.pubsub(ignore_subscribe_messages=True)


async def pubsub_async(client: Any, key: str) -> Any:
    """:func:`pubsub` for the asyncio clients."""
    if isinstance(client, acluster.RedisCluster):
        await client.exists(key)
        node = client.get_node_from_key(key)
        return client.pubsub(node=node, ignore_subscribe_messages=True)
    return client.pubsub(ignore_subscribe_messages=True)


def _sentinel_kwargs(sentinel_password: str | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"socket_timeout": _SENTINEL_TIMEOUT}
    if sentinel_password:
        kwargs["password"] = sentinel_password
    return kwargs


def connect(
    url: str, *, password: str | None = None, sentinel_password: str | None = None
) -> redis.Redis:
    """A pooled client that decodes replies to str (see the module for the URL forms).

    A cluster client is typed as the one-server client it stands in for: it answers the
    same commands, pipelines, scripts and pub/sub the store uses."""
    if url.startswith(CLUSTER_SCHEME):
        # redis-py's sync ClusterNode is untyped.
        nodes = [
            redis.cluster.ClusterNode(h, p)  # type: ignore[no-untyped-call]
            for h, p in parse_cluster_url(url)
        ]
        cluster = redis.cluster.RedisCluster(
            startup_nodes=nodes,
            password=password,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), CLUSTER_RETRIES),
            **_SYNC_OPTIONS,
        )
        return cast(redis.Redis, cluster)
    if url.startswith(SENTINEL_SCHEME):
        where = parse_sentinel_url(url)
        # Any: redis-py's Sentinel classes are untyped.
        sentinel: Any = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            list(where.sentinels), sentinel_kwargs=_sentinel_kwargs(sentinel_password)
        )
        client: redis.Redis = sentinel.master_for(
            where.master, db=where.db, password=password, retry=_failover_retry(), **_SYNC_OPTIONS
        )
        return client
    extra = {"password": password} if password and not urlsplit(url).password else {}
    return redis.Redis.from_url(url, **_SYNC_OPTIONS, **extra)


#: A pool size that never refuses a connection (redis-py's own default for a cluster).
UNBOUNDED = 2**31


def connect_async(
    url: str,
    *,
    max_connections: int = 100,
    password: str | None = None,
    sentinel_password: str | None = None,
) -> aioredis.Redis:
    """The stream follower's client. A blocking pool: with thousands of streams, a burst
    of Redis calls waits for a connection instead of failing ("Too many connections").

    Under Sentinel and Cluster redis-py's pools do not block (a call past a full pool
    fails at once): they are left unbounded (Redis' own ``maxclients`` bounds them)
    rather than fail a burst; ``max_connections`` bounds the one-server pool only."""
    if url.startswith(CLUSTER_SCHEME):
        nodes = [acluster.ClusterNode(h, p) for h, p in parse_cluster_url(url)]
        cluster = acluster.RedisCluster(
            startup_nodes=nodes,
            password=password,
            max_connections=UNBOUNDED,
            decode_responses=True,
            socket_keepalive=True,
            socket_connect_timeout=5,
            retry=AsyncRetry(ExponentialBackoff(cap=1.0, base=0.05), CLUSTER_RETRIES),
        )
        return cast(aioredis.Redis, cluster)
    if url.startswith(SENTINEL_SCHEME):
        where = parse_sentinel_url(url)
        sentinel: Any = asentinel.Sentinel(  # type: ignore[no-untyped-call]
            list(where.sentinels), sentinel_kwargs=_sentinel_kwargs(sentinel_password)
        )
        aclient: aioredis.Redis = sentinel.master_for(
            where.master,
            db=where.db,
            password=password,
            decode_responses=True,
            retry=AsyncRetry(ExponentialBackoff(cap=0.5, base=0.05), SENTINEL_RETRIES),
        )
        return aclient
    extra = {"password": password} if password and not urlsplit(url).password else {}
    pool = aioredis.BlockingConnectionPool.from_url(
        url, decode_responses=True, max_connections=max_connections, timeout=30, **extra
    )
    return aioredis.Redis(connection_pool=pool)
