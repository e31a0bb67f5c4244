"""What Celery's broker keeps in Redis, read directly: how many messages wait on a
queue, and which messages workers hold unacknowledged; used by the metrics and by the
sweeps that re-send tasks the broker lost (one worker of the fleet at a time).

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
from typing import TYPE_CHECKING, Any, TypeVar

from orchestrator.store.keys import Keys

if TYPE_CHECKING:
    from orchestrator.store.jobs import RedisStore

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


def waiting(r: Any, keys: Keys, queue: str) -> int:
    """Messages waiting on ``queue``, every priority step together (one round trip)."""
    with r.pipeline(transaction=False) as pipe:
        for key in queue_keys(queue):
            pipe.llen(keys.broker_prefix + key)
        return sum(int(n) for n in pipe.execute())


def held_tasks(r: Any, keys: Keys) -> list[tuple[str, list[Any]]]:
    """(task name, args) of every message workers took and have not acknowledged (at
    most a prefetch per worker slot); entries that cannot be read are left out."""
    held = []
    for raw in r.hvals(keys.broker_prefix + UNACKED_KEY):
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


def take_pass(r: Any, lock: str, period_seconds: float) -> bool:
    """True for one caller per half ``period_seconds`` across the fleet: a lost-task
    sweep re-sends under it, so two workers never send a second copy of one task."""
    return bool(r.set(lock, "1", nx=True, px=max(1, int(period_seconds * 500))))


def lost(
    r: Any,
    keys: Keys,
    due: Sequence[T],
    sweep: str,
    period_seconds: float,
    held_of: Callable[[str, list[Any]], Iterable[T]],
) -> list[T]:
    """Of ``due`` (tasks sent ``period_seconds`` ago or more that no worker has begun),
    those the broker lost: kombu pops a message before it records it unacked, so a
    worker killed in between leaves no copy, and no visibility timeout brings it back.

    Empty while the ``api`` queue has messages (``due`` may be waiting in a backlog) or
    another worker runs the sweep named ``sweep``; a task a worker holds unacked (which
    kombu restores if that worker dies) is not lost. ``held_of(task name, args)`` says
    which items of ``due`` a held message carries.
    """
    from orchestrator.celery import (
        API_QUEUE,  # here: the facade imports broker users without the app
    )

    if not due or waiting(r, keys, API_QUEUE):
        return []
    if not take_pass(r, keys.pass_lock(sweep), period_seconds):
        return []  # another worker runs this sweep now
    held = {item for task, args in held_tasks(r, keys) for item in held_of(task, args)}
    return [item for item in due if item not in held]


def queue_figures(
    store: RedisStore, queues: Sequence[str]
) -> tuple[dict[str, int], dict[str, int]]:
    """Per queue: the messages waiting (every priority step) and those held unacked, in
    one round trip (LLEN of each list, HVALS of the unacked hash, which holds at most a
    prefetch per worker slot)."""
    prefix = store.keys.broker_prefix
    with store.r.pipeline(transaction=False) as pipe:
        for queue in queues:
            for key in queue_keys(queue):
                pipe.llen(prefix + key)
        pipe.hvals(prefix + UNACKED_KEY)
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
