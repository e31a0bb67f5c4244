"""Several Redis writes, Lua scripts among them, in one round trip.

redis-py sends ``SCRIPT EXISTS`` before every pipeline that holds a registered script,
a second round trip each time. A :class:`Batch` sends a script as a bare ``EVALSHA``
instead, and only a call that Redis answers ``NOSCRIPT`` (it restarted and forgot its
scripts) is made again through its Script, which loads it. Commands run in order but
not atomically, exactly as the same calls made one by one would; every script queued
here is idempotent, so the rare late re-run after a ``NOSCRIPT`` is harmless.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.commands.core import Script
from redis.exceptions import NoScriptError


class Batch:
    """Queue commands on ``batch.pipe`` and scripts with :meth:`script`; then
    :meth:`execute` returns every reply in order (raising the first error)."""

    def __init__(self, r: Any) -> None:
        self.pipe: Any = r.pipeline(transaction=False)
        self._scripts: dict[int, tuple[Script, Sequence[Any], Sequence[Any]]] = {}

    def script(self, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> int:
        """Queue a script call; returns the index of its reply."""
        index = len(self.pipe)
        self._scripts[index] = (script, keys, args)
        self.pipe.evalsha(script.sha, len(keys), *keys, *args)
        return index

    def execute(self) -> list[Any]:
        if not len(self.pipe):
            return []
        with self.pipe:
            replies = list(self.pipe.execute(raise_on_error=False))
        for i, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):
                script, keys, args = self._scripts[i]
                replies[i] = script(keys=keys, args=args)
            elif isinstance(reply, Exception):
                raise reply
        return replies
