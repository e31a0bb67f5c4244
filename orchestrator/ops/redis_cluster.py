"""A Redis Cluster on one machine: primaries and their replicas, all real ``redis-server``
processes on free ports, joined by ``redis-cli --cluster create``. For the tests and the
benchmarks that run on a cluster and kill one of its primaries; production runs a cluster
from its own configuration.

Failover is quick here on purpose (``cluster-node-timeout`` 1000 ms): a primary that stops
answering for a second is marked failed by the others and its replica promoted.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Self

from orchestrator.ops.redis_server import (
    RedisServer,
    ServerGroup,
    find_redis_server,
    free_port,
    port_taken,
)
from orchestrator.store.connection import CLUSTER_SCHEME, StoreError, connect

__all__ = ["NODE_TIMEOUT_MS", "RedisCluster", "cluster_port"]

NODE_TIMEOUT_MS = 1000
#: Each node also listens on its port + 10000 (the cluster bus).
BUS_OFFSET = 10000


def cluster_port() -> int:
    """A free port whose bus port (port + 10000) is free and valid too."""
    for _ in range(200):
        port = free_port()
        if port + BUS_OFFSET < 65536 and not port_taken(port + BUS_OFFSET):
            return port
    raise RuntimeError("no free port with a free cluster bus port")


def _command(client: Any, *args: str) -> Any:
    """A raw command (redis-py's ``execute_command`` is untyped; CLUSTER INFO and SLOTS
    replies are read here as the server sends them)."""
    return client.execute_command(*args)


def _find_redis_cli(server_binary: str) -> str:
    beside = Path(server_binary).with_name("redis-cli")
    found = str(beside) if beside.exists() else shutil.which("redis-cli")
    if not found:
        raise RuntimeError("redis-cli not found (it comes with redis-server)")
    return found


class RedisCluster(ServerGroup):
    """``primaries`` primaries with ``replicas`` replicas each; a context manager.

    ``startup_nodes`` are the addresses a cluster client starts from. :meth:`kill_primary`
    SIGKILLs the primary serving a slot; :meth:`wait_failover` waits until a replica has
    taken its slots over and the cluster answers again.
    """

    def __init__(self, *, primaries: int = 3, replicas: int = 1) -> None:
        if primaries < 3:
            raise ValueError("a Redis Cluster needs at least 3 primaries")
        self.root = Path(tempfile.mkdtemp(prefix="orch-cluster-"))
        self.binary = find_redis_server()
        self.replicas = replicas
        args = [
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip
        self.nodes = [
            RedisServer(
                pick_port=cluster_port,
                data_dir=self.root / f"node{i}",
                binary=self.binary,
                appendonly=False,
                args=args,
            )
            for i in range(primaries * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        """The store's ``REDIS_URL`` for this cluster (every node a startup node)."""
        return CLUSTER_SCHEME + ",".join(f"{h}:{p}" for h, p in self.startup_nodes) + "/"

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", node.port) for node in self.nodes if node.process is not None]

    #: A fresh cluster settles in about a second; one CI run on a loaded 2-core machine
    #: saw it not settle within 60 s (cause not caught: wait_ok now says what is pending).
    START_SECONDS = 120.0

    def start(self, timeout: float = START_SECONDS) -> Self:
        for node in self.nodes:
            node.start()
        create = [
            _find_redis_cli(self.binary), "--cluster", "create",
            *[f"127.0.0.1:{node.port}" for node in self.nodes],
            "--cluster-replicas", str(self.replicas), "--cluster-yes",
        ]  # fmt: skip
        done = subprocess.run(create, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            said = (done.stdout + done.stderr).strip().splitlines()[-3:]
            raise RuntimeError("redis-cli --cluster create failed: " + " | ".join(said))
        self.wait_ok(timeout)
        return self

    def _info(self, node: RedisServer) -> dict[str, str]:
        client = connect(node.url)
        try:
            text = str(_command(client, "CLUSTER", "INFO"))
        finally:
            client.close()
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    def _shards(self, node: RedisServer) -> list[tuple[int, int, int]]:
        """(first slot, last slot, primary's port) as ``node`` sees them."""
        client = connect(node.url)
        try:
            reply = _command(client, "CLUSTER", "SLOTS")
        finally:
            client.close()
        return [(int(r[0]), int(r[1]), int(r[2][1])) for r in reply]

    def live(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.process is not None]

    def wait_ok(self, timeout: float = 60.0) -> None:
        """Until every live node says the cluster is ok, agrees on who serves every slot,
        and every slot's primary has its replicas in sync. TimeoutError names what was
        still not so, and what each node last logged."""
        deadline = time.monotonic() + timeout
        pending = "no node answered yet"
        while time.monotonic() < deadline:
            try:
                pending = self._unsettled() or ""
                if not pending:
                    return
            except (OSError, StoreError) as exc:
                pending = f"a node did not answer ({exc})"  # still starting, or just killed
            time.sleep(0.1)
        said = "; ".join(f"{node.port}: {node.said()}" for node in self.nodes)
        raise TimeoutError(f"the cluster did not settle within {timeout}s: {pending} ({said})")

    def _unsettled(self) -> str | None:
        """What keeps the cluster from being settled, or None."""
        live = self.live()
        states = {node.port: self._info(node).get("cluster_state") for node in live}
        if any(state != "ok" for state in states.values()):
            return f"cluster_state by node {states}"
        views = {tuple(sorted(self._shards(node))) for node in live}
        if len(views) != 1:
            return f"{len(views)} views of the slots"
        (view,) = views
        if sum(last - first + 1 for first, last, _ in view) != 16384:
            return "slots not all served"
        primaries = sorted({port for _, _, port in view})
        lagging = [port for port in primaries if not self.replicas_in_sync(port)]
        return f"primaries without their replicas in sync: {lagging}" if lagging else None

    def replicas_in_sync(self, primary_port: int) -> bool:
        wanted = min(self.replicas, len(self.live()) - len(self.primaries()))
        return self.replicas_online(primary_port) >= wanted

    def primaries(self) -> list[RedisServer]:
        """The live nodes that serve slots now."""
        ports = {port for _, _, port in self._shards(self.live()[0])}
        return [node for node in self.live() if node.port in ports]

    def primary_for_slot(self, slot: int) -> RedisServer:
        for first, last, port in self._shards(self.live()[0]):
            if first <= slot <= last:
                return next(node for node in self.nodes if node.port == port)
        raise RuntimeError(f"no node serves slot {slot}")

    def kill_primary(self, slot: int = 0) -> int:
        """SIGKILL the primary serving ``slot`` now; returns its port."""
        node = self.primary_for_slot(slot)
        node.stop(kill=True)
        return node.port

    def wait_failover(self, old_port: int, slot: int = 0, timeout: float = 30.0) -> int:
        """Wait until another node serves ``slot`` as a primary and the cluster is ok;
        returns the new primary's port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                port = self.primary_for_slot(slot).port
                if port != old_port and all(
                    self._info(node).get("cluster_state") == "ok" for node in self.live()
                ):
                    return port
            except (OSError, RuntimeError, StopIteration):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"no replica took slot {slot} over within {timeout}s")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.root, ignore_errors=True)
