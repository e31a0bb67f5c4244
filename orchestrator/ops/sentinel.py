"""A Redis Sentinel group on one machine: a primary, its replicas and three sentinels, all
real ``redis-server`` processes on free ports. For the tests and the benchmarks that run
the orchestrator on Sentinel and fail its primary over; production runs Sentinel from
its own configuration (``deploy/k8s/sentinel.yaml``, the compose ``sentinel`` profile).

Failover is quick here on purpose (``down-after-milliseconds`` 1000): a primary that
stops answering for a second is declared down once two of the three sentinels agree,
and they promote a replica.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

from orchestrator.ops.redis_server import (
    LOG_NAME,
    RedisServer,
    ServerGroup,
    find_redis_server,
    free_port,
)
from orchestrator.store.connection import SENTINEL_SCHEME, connect

__all__ = ["MASTER_NAME", "SentinelGroup"]

MASTER_NAME = "orchestrator"
DOWN_AFTER_MS = 1000
QUORUM = 2


def _sentinel_config(port: int, data_dir: Path, primary_port: int) -> str:
    return "\n".join(
        [
            f"port {port}",
            "bind 127.0.0.1",
            f"dir {data_dir}",
            # RedisServer reads this log for 'Address already in use' to pick again.
            f"logfile {data_dir / LOG_NAME}",
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} {QUORUM}",
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {MASTER_NAME} 10000",
            f"sentinel parallel-syncs {MASTER_NAME} 1",
            "",
        ]
    )


class SentinelGroup(ServerGroup):
    """A primary, ``replicas`` replicas and ``sentinels`` sentinels; a context manager.

    ``url`` is the ``redis+sentinel://`` address of the group. :meth:`kill_primary`
    SIGKILLs whichever server is the primary now; :meth:`wait_failover` waits until the
    sentinels name another one that answers as a primary.
    """

    def __init__(
        self, *, replicas: int = 1, sentinels: int = 3, pick_port: Callable[[], int] = free_port
    ) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="orch-sentinel-"))
        self.binary = find_redis_server()
        # No 5 s wait for more replicas before a full sync (Redis 7's default): the group
        # is ready sooner, and so is a replica that rejoins.
        quick_sync = ["--repl-diskless-sync-delay", "0"]
        primary = RedisServer(data_dir=self.root / "primary", binary=self.binary, args=quick_sync)
        # Replicas are told the primary's port once it listens (start() picks another
        # if a process took the first before the bind).
        self.servers = [primary] + [
            RedisServer(data_dir=self.root / f"replica{i}", binary=self.binary, args=quick_sync)
            for i in range(replicas)
        ]
        self._sentinel_count = sentinels
        self._pick_port = pick_port
        self._sentinels: list[RedisServer] = []

    @property
    def sentinel_ports(self) -> list[int]:
        """The ports the sentinels listen on (known once started: a sentinel whose
        picked port another process took first picks another)."""
        return [sentinel.port for sentinel in self._sentinels]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"{SENTINEL_SCHEME}{hosts}/{MASTER_NAME}/0"

    def start(self, timeout: float = 30.0) -> Self:
        primary, *replicas = self.servers
        primary.start()
        primary_port = primary.port
        for replica in replicas:
            replica.extra_args += ["--replicaof", "127.0.0.1", str(primary_port)]
            replica.start()
        for i in range(self._sentinel_count):
            sentinel = _SentinelProcess(
                self.root / f"sentinel{i}", primary_port, self.binary, self._pick_port
            )
            self._sentinels.append(sentinel)  # stopped with the group if its start fails
            sentinel.start()
        self._wait_replicated(timeout)
        return self

    def _wait_replicated(self, timeout: float) -> None:
        """Until every replica is in sync, and every sentinel knows the primary, every
        replica and the other sentinels: a sentinel learns of replicas from the primary's
        INFO (every 10 s) and of its peers from their hellos (every 2 s), and cannot fail
        over to what it does not know."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._replicas_online() and all(
                self._sentinel_ready(port) for port in self.sentinel_ports
            ):
                return
            time.sleep(0.1)
        raise TimeoutError(f"sentinels did not learn the group within {timeout}s")

    def _replicas_online(self) -> bool:
        return self.replicas_online(self.servers[0].port) >= len(self.servers) - 1

    def _sentinel_ready(self, port: int) -> bool:
        client = connect(f"redis://127.0.0.1:{port}/0")
        try:
            state = client.sentinel_master(MASTER_NAME)
        except Exception:  # still starting
            return False
        finally:
            client.close()
        return isinstance(state, dict) and (
            int(state.get("num-slaves", 0)) >= len(self.servers) - 1
            and int(state.get("num-other-sentinels", 0)) >= self._sentinel_count - 1
        )

    def primary_port(self) -> int | None:
        """The port the sentinels name as the primary now (None if none answers)."""
        for port in self.sentinel_ports:
            client = connect(f"redis://127.0.0.1:{port}/0")
            try:
                reply = client.sentinel_get_master_addr_by_name(MASTER_NAME)
                if isinstance(reply, tuple | list) and reply:
                    return int(reply[1])
            except Exception:  # this sentinel is down or still starting: ask the next
                continue
            finally:
                client.close()
        return None

    def primary(self) -> RedisServer:
        port = self.primary_port()
        for server in self.servers:
            if server.port == port:
                return server
        raise RuntimeError("no primary known to the sentinels")

    def kill_primary(self) -> int:
        """SIGKILL the primary now; returns its port."""
        server = self.primary()
        server.stop(kill=True)
        return server.port

    def named(self) -> set[int | None]:
        """The primary each sentinel names now (None for one that does not answer)."""
        named: set[int | None] = set()
        for port in self.sentinel_ports:
            client = connect(f"redis://127.0.0.1:{port}/0")
            try:
                reply = client.sentinel_get_master_addr_by_name(MASTER_NAME)
                named.add(int(reply[1]) if isinstance(reply, tuple | list) and reply else None)
            except Exception:  # this sentinel is down or still starting
                named.add(None)
            finally:
                client.close()
        return named

    def wait_failover(self, old_port: int, timeout: float = 30.0) -> int:
        """Wait until every sentinel names one new primary and it answers as one;
        returns its port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            named = self.named()
            port = next(iter(named)) if len(named) == 1 else None
            if port is not None and port != old_port:
                client = connect(f"redis://127.0.0.1:{port}/0")
                try:
                    if client.info("replication").get("role") == "master":
                        return port
                except OSError:
                    pass
                finally:
                    client.close()
            time.sleep(0.05)
        raise TimeoutError(f"no failover within {timeout}s")

    def stop(self) -> None:
        for proc in [*self._sentinels, *self.servers]:
            proc.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class _SentinelProcess(RedisServer):
    """``redis-server <config> --sentinel``: a RedisServer started from a config file,
    written for each port it tries; a restart on the same port keeps the file, which
    the sentinel rewrites with what it learned (the primary after a failover)."""

    def __init__(
        self, data_dir: Path, primary_port: int, binary: str, pick_port: Callable[[], int]
    ) -> None:
        super().__init__(data_dir=data_dir, binary=binary, pick_port=pick_port)
        self.config = data_dir / "sentinel.conf"
        self.primary_port = primary_port
        self._config_port: int | None = None

    def command(self) -> list[str]:
        if self._config_port != self.port:
            self.config.write_text(_sentinel_config(self.port, self.data_dir, self.primary_port))
            self._config_port = self.port
        return [self.binary, str(self.config), "--sentinel"]
