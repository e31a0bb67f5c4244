"""What Celery's broker keeps in Redis, read directly: how many messages wait on a
queue, and which messages workers hold unacknowledged.

kombu's Redis transport keeps a queue as a list named after it, plus one list per
non-zero priority step (``<queue>\\x06\\x16<step>``), and every message taken but not
yet acknowledged in the hash ``unacked`` as JSON ``[message, exchange, routing_key]``;
all of them under the broker prefix (:attr:`Keys.broker_prefix`).
"""

from __future__ import annotations

import json
from typing import Any

from .keys import Keys

PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (3, 6, 9)
UNACKED_KEY = "unacked"


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


def unacked(r: Any, keys: Keys) -> list[str]:
    """The raw entries of messages that workers took and have not acknowledged (at most
    a prefetch per worker slot): a task's ``argsrepr`` header is plain text in them."""
    return [
        v.decode() if isinstance(v, bytes) else str(v)
        for v in r.hvals(keys.broker_prefix + UNACKED_KEY)
    ]
