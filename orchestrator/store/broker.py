"""What Celery's broker keeps in Redis, read directly: how many messages wait on a
queue, and which messages workers hold unacknowledged; used by the metrics and by the
sweeps that re-send tasks the broker lost (one worker of the fleet at a time). Callers
reach it as ``store.broker`` (:class:`BrokerLayout`).

kombu's Redis transport keeps a queue as a list named after it, plus one list per
non-zero priority step (``<queue>\\x06\\x16<step>``), and every message taken but not
yet acknowledged in the hash ``unacked`` as JSON ``[message, exchange, routing_key]``;
all of them under the broker prefix (:attr:`Keys.broker_prefix`).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

from orchestrator.store.keys import Keys

PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (3, 6, 9)
UNACKED_KEY = "unacked"

T = TypeVar("T")


def queue_keys(queue: str) -> list[str]:
    """The broker lists (unprefixed) that together hold a queue's waiting messages."""
    return [queue, *(f"{queue}{PRIORITY_SEP}{step}" for step in PRIORITY_STEPS)]


def routing_key(raw: str | bytes) -> str | None:
    """The queue an unacked entry was taken from (None if the entry is unreadable)."""
    try:
        entry = json.loads(raw)
        return str(entry[2])
    except (ValueError, TypeError, IndexError, KeyError):
        return None


def broker_prefix(prefix: str) -> str:
    """The broker prefix of a deployment's key prefix (kombu's ``global_keyprefix``)."""
    return Keys(prefix).broker_prefix


class BrokerView(Protocol):
    """What the orchestrator reads of its broker (``store.broker``): this module's
    :class:`BrokerLayout` on a Redis broker, :class:`orchestrator.ops.rabbitmq.RabbitQueues`
    on RabbitMQ."""

    def waiting(self, queue: str) -> int: ...

    def queue_figures(self, queues: Sequence[str]) -> tuple[dict[str, int], dict[str, int]]: ...

    def held_tasks(self) -> list[tuple[str, list[Any]]]: ...

    def lost(
        self,
        due: Sequence[T],
        sweep: str,
        period_seconds: float,
        held_of: Callable[[str, list[Any]], Iterable[T]],
        *,
        backlog_queue: str,
    ) -> list[T]: ...

    def close(self) -> None: ...


class BrokerLayout:
    """Reads of the broker's keys under one prefix (``store.broker``), and the fleet-wide
    pass of the lost-task sweeps. Queue names are passed in: the store knows the
    broker's layout, not the Celery app's routing.

    ``r`` is the broker's Redis: the store's own client (the one-box default), or a
    client of its own when ``BROKER_URL`` names another Redis (``owned``: closed with
    the store)."""

    def __init__(self, r: Any, keys: Keys, *, owned: bool = False) -> None:
        self.r = r
        self.keys = keys
        self.owned = owned

    def close(self) -> None:
        if self.owned:
            self.r.close()

    def waiting(self, queue: str) -> int:
        """Messages waiting on ``queue``, every priority step together (one round trip)."""
        with self.r.pipeline(transaction=False) as pipe:
            for key in queue_keys(queue):
                pipe.llen(self.keys.broker_prefix + key)
            return sum(int(n) for n in pipe.execute())

    def queue_figures(self, queues: Sequence[str]) -> tuple[dict[str, int], dict[str, int]]:
        """Per queue, the messages waiting (every priority step) and those taken but
        not yet acknowledged; one round trip (the unacked hash holds at most a prefetch
        per worker slot)."""
        with self.r.pipeline(transaction=False) as pipe:
            for queue in queues:
                for key in queue_keys(queue):
                    pipe.llen(self.keys.broker_prefix + key)
            pipe.hvals(self.keys.broker_prefix + UNACKED_KEY)
            replies = pipe.execute()
        per_queue = len(PRIORITY_STEPS) + 1
        depth = {
            queue: sum(int(n) for n in replies[i * per_queue : (i + 1) * per_queue])
            for i, queue in enumerate(queues)
        }
        unacked = dict.fromkeys(queues, 0)
        for raw in replies[-1]:
            taken_from = routing_key(raw)
            if taken_from in unacked:
                unacked[taken_from] += 1
        return depth, unacked

    def held_tasks(self) -> list[tuple[str, list[Any]]]:
        """(task name, args) of every message workers took and have not acknowledged
        (at most a prefetch per worker slot); entries that cannot be read are left out."""
        held = []
        for raw in self.r.hvals(self.keys.broker_prefix + UNACKED_KEY):
            try:
                message = json.loads(raw)[0]
                body = message["body"]
                if message.get("properties", {}).get("body_encoding") == "base64":
                    body = base64.b64decode(body)
                args = json.loads(body)[0]
                held.append((str(message["headers"]["task"]), list(args)))
            except (ValueError, TypeError, IndexError, KeyError, binascii.Error):
                continue
        return held

    def take_pass(self, sweep: str, period_seconds: float) -> bool:
        """True for one caller per half ``period_seconds`` across the fleet: a lost-task
        sweep re-sends under it, so two workers never send a second copy of one task."""
        lock = self.keys.pass_lock(sweep)
        return bool(self.r.set(lock, "1", nx=True, px=max(1, int(period_seconds * 500))))

    def lost(
        self,
        due: Sequence[T],
        sweep: str,
        period_seconds: float,
        held_of: Callable[[str, list[Any]], Iterable[T]],
        *,
        backlog_queue: str,
    ) -> list[T]:
        """Of ``due`` (tasks sent ``period_seconds`` ago or more that no worker has
        begun), those the broker lost: kombu pops a message before it records it
        unacked, so a worker killed in between leaves no copy, and no visibility timeout
        brings it back.

        Empty while ``backlog_queue`` (where ``due`` were sent) has messages (``due`` may
        be waiting in a backlog) or another worker runs the sweep named ``sweep``; a task
        a worker holds unacked (which kombu restores if that worker dies) is not lost.
        ``held_of(task name, args)`` says which items of ``due`` a held message carries.
        """
        if not due or self.waiting(backlog_queue):
            return []
        if not self.take_pass(sweep, period_seconds):
            return []  # another worker runs this sweep now
        held = {item for task, args in self.held_tasks() for item in held_of(task, args)}
        return [item for item in due if item not in held]
