"""The deployment topologies the end-to-end tests run on: one Redis for everything;
RabbitMQ as the broker with Redis as the store; Redis under Sentinel, whose primary a test
can kill (a failover during the run); a Redis Cluster store (RabbitMQ the broker) whose
primary serving the store's hash tag a test can kill; the same cluster with the store in
cells spread over its primaries (``STORE_CELLS``), whose primary holding the control keys
a test can kill."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.crc import key_slot

from orchestrator.ops.processes import settings_of
from orchestrator.ops.rabbitmq import TemporaryVhost
from orchestrator.ops.redis_cluster import RedisCluster
from orchestrator.ops.sentinel import SentinelGroup
from orchestrator.settings import Settings
from orchestrator.store.keys import Keys, hash_tag

from .processes import stack_env

TOPOLOGIES = ("redis", "rabbitmq", "sentinel", "cluster", "cells")
#: The cells of the "cells" topology: two per primary.
CELLS = 6


@dataclass
class Topology:
    name: str
    env: dict[str, str]
    #: Kills the store's primary and waits for the new one; returns the seconds it took.
    failover: Callable[[], float] | None = None

    @property
    def settings(self) -> Settings:
        return settings_of(self.env)


def need_rabbitmq() -> None:
    """Skip where no RabbitMQ is installed, except in CI (there it must run)."""
    if not TemporaryVhost.available():
        if os.environ.get("CI"):
            pytest.fail("rabbitmqctl is not on PATH: RabbitMQ must run for CI")
        pytest.skip("no RabbitMQ on this machine (rabbitmqctl not found)")


@contextmanager
def topology(
    name: str, redis_url: str, prefix: str, api_url: str, api_key: str, tmp_path: Path
) -> Iterator[Topology]:
    """A deployment's environment on topology ``name`` (its servers live as long as the
    context): short leases and visibility timeout, so recoveries finish quickly."""
    extra = {
        "FILES_DIR": str(tmp_path / "files"),
        "FOLLOW_LEASE_SECONDS": "3",
        "VISIBILITY_TIMEOUT": "10",
    }
    if name == "redis":
        yield Topology(name, stack_env(redis_url, prefix, api_url, api_key, **extra))
    elif name == "rabbitmq":
        need_rabbitmq()
        with TemporaryVhost() as vhost:
            extra.update(BROKER_URL=vhost.url, BROKER_PASSWORD=vhost.password)
            yield Topology(name, stack_env(redis_url, prefix, api_url, api_key, **extra))
    elif name == "sentinel":
        with SentinelGroup() as group:

            def failover() -> float:
                started = time.monotonic()
                group.wait_failover(group.kill_primary())
                return time.monotonic() - started

            env = stack_env(group.url, prefix, api_url, api_key, **extra)
            yield Topology(name, env, failover)
    elif name in ("cluster", "cells"):
        need_rabbitmq()
        with RedisCluster(primaries=3, replicas=1) as cluster, TemporaryVhost() as vhost:
            # The primary of the store's tag; with cells, of the control keys (and of
            # two cells).
            slot = key_slot(Keys(hash_tag(prefix)).jobs.encode())

            def kill_the_tags_primary() -> float:
                started = time.monotonic()
                cluster.wait_failover(cluster.kill_primary(slot), slot)
                return time.monotonic() - started

            extra.update(BROKER_URL=vhost.url, BROKER_PASSWORD=vhost.password)
            if name == "cells":
                extra["STORE_CELLS"] = str(CELLS)
            env = stack_env(cluster.url, prefix, api_url, api_key, **extra)
            yield Topology(name, env, kill_the_tags_primary)
    else:
        raise ValueError(name)
