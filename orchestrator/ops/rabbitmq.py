"""RabbitMQ as the broker: its queue layout, and what the orchestrator reads of it.

Queues are quorum queues (durable, replicated by Raft across the RabbitMQ cluster). They
have no message priorities, so a batch job's ``api`` task goes to a queue of its own,
``api.batch`` (:data:`BATCH_QUEUES`; the Celery app routes to it).

What RabbitMQ guarantees replaces the Redis transport's lost-task sweeps: a publish
returns once RabbitMQ has confirmed the message (``confirm_publish``), and a message a
consumer took but did not acknowledge goes back to its queue the moment that consumer's
channel closes (a worker SIGKILLed, its host gone). There is no window in which a task
is held by nobody, as between kombu's pop and its unacked record on Redis, and no
visibility timeout. So :meth:`RabbitQueues.lost` is always empty, and the sweeps skip.

Queue depth is read with a passive ``queue.declare`` (its ``message_count``) over AMQP:
no management plugin needed. AMQP does not say how many messages are taken but not
acknowledged; RabbitMQ's own Prometheus endpoint does
(``rabbitmq_queue_messages_unacked``), so no ``orchestrator_queue_unacked`` series is
reported on RabbitMQ.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar

from amqp.exceptions import AMQPError, NotFound
from kombu.connection import Connection
from kombu.exceptions import KombuError

__all__ = ["BATCH_QUEUES", "QUORUM", "RabbitQueues", "TemporaryVhost"]

#: A queue's batch companion on RabbitMQ.
BATCH_QUEUES = {"api": "api.batch"}
#: The arguments that declare a quorum queue.
QUORUM = {"x-queue-type": "quorum"}

T = TypeVar("T")


class RabbitQueues:
    """``store.broker`` when the broker is RabbitMQ: queue depths through AMQP, and the
    lost-task sweeps' answer ("nothing lost"). One connection, opened on first use and
    again after an error; thread-safe (a scrape and a sweep may overlap)."""

    def __init__(self, url: str, password: str | None = None, *, timeout: float = 5.0) -> None:
        # Any: kombu is untyped.
        self._connection: Any = Connection(  # type: ignore[no-untyped-call]
            url, password=password, connect_timeout=timeout
        )
        self._lock = threading.Lock()

    def _depths(self, names: Iterable[str]) -> dict[str, int]:
        """Messages ready on each named queue (0 for one not declared yet)."""
        depths: dict[str, int] = {}
        with self._lock:
            try:
                self._connection.ensure_connection(max_retries=1)
                channel = self._connection.channel()
                for name in names:
                    try:
                        depths[name] = int(channel.queue_declare(name, passive=True)[1])
                    except NotFound:
                        depths[name] = 0  # not declared yet: no worker has started
                        channel = self._connection.channel()  # a 404 closes the channel
                channel.close()
            except (OSError, AMQPError, KombuError) as exc:
                self._connection.close()
                # No address in the message: it may carry a user name.
                raise ConnectionError(f"RabbitMQ did not answer: {type(exc).__name__}") from None
        return depths

    @staticmethod
    def _family(queue: str) -> list[str]:
        return [queue, *([BATCH_QUEUES[queue]] if queue in BATCH_QUEUES else [])]

    def waiting(self, queue: str) -> int:
        """Messages waiting on ``queue`` (its batch companion included)."""
        return sum(self._depths(self._family(queue)).values())

    def queue_figures(self, queues: Sequence[str]) -> tuple[dict[str, int], dict[str, int]]:
        """Per queue, the messages waiting; the unacked figure is not known over AMQP
        (empty: see the module)."""
        depths = self._depths([name for queue in queues for name in self._family(queue)])
        return {q: sum(depths[name] for name in self._family(q)) for q in queues}, {}

    def held_tasks(self) -> list[tuple[str, list[Any]]]:
        """Nothing to read: RabbitMQ returns a dead consumer's messages itself."""
        return []

    def lost(
        self,
        due: Sequence[T],
        sweep: str,
        period_seconds: float,
        held_of: Callable[[str, list[Any]], Iterable[T]],
        *,
        backlog_queue: str,
    ) -> list[T]:
        """Always empty: a confirmed message is in a queue or with a live consumer."""
        return []

    def close(self) -> None:
        with self._lock:
            self._connection.close()


class TemporaryVhost:
    """A RabbitMQ virtual host and user of their own for a test or a benchmark, made with
    ``rabbitmqctl`` (run as root, or as the RabbitMQ user) and deleted with everything in
    them on exit; a context manager. The user's password is random and reaches
    ``rabbitmqctl`` on its standard input, never a command line; ``url`` carries none
    (pass ``password`` as ``BROKER_PASSWORD``)."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 5672) -> None:
        self.name = "orch-" + uuid.uuid4().hex[:12]
        self.user = self.name
        self.password = secrets.token_urlsafe(18)
        self.host, self.port = host, port

    @property
    def url(self) -> str:
        return f"amqp://{self.user}@{self.host}:{self.port}/{self.name}"

    @staticmethod
    def available() -> bool:
        """Whether ``rabbitmqctl`` is on PATH (the machine runs RabbitMQ)."""
        return shutil.which("rabbitmqctl") is not None

    @staticmethod
    def _ctl(*args: str, stdin: str | None = None) -> None:
        subprocess.run(
            ["rabbitmqctl", "--quiet", *args],
            input=stdin, text=True, check=True, capture_output=True, timeout=60,
        )  # fmt: skip

    def __enter__(self) -> TemporaryVhost:
        self._ctl("add_vhost", self.name)
        try:
            self._ctl("add_user", self.user, stdin=self.password)
            self._ctl("set_permissions", "-p", self.name, self.user, ".*", ".*", ".*")
        except BaseException:
            self._remove()
            raise
        return self

    def _remove(self) -> None:
        self._ctl("delete_vhost", self.name)
        with contextlib.suppress(subprocess.CalledProcessError):
            self._ctl("delete_user", self.user)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._remove()
