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
from typing import Any, Protocol

from redis.commands.core import AsyncScript, Script
from redis.exceptions import NoScriptError

from orchestrator.store.scripts.chain import PART_NUMBER, REFUSED, SET_FIELD_SHA

__all__ = ["REFUSED", "AsyncBatch", "Batch", "Chain", "Queue"]


class Queue(Protocol):
    """Where the ``*_into`` methods queue their writes: a :class:`Batch`, or a
    :class:`Chain` (scripts and field writes only)."""

    @property
    def pipe(self) -> Any: ...

    def script(
        self, script: Script | AsyncScript, keys: Sequence[Any], args: Sequence[Any]
    ) -> int: ...


class _Queue:
    """What both batches share: the pipeline, and scripts queued as bare EVALSHA."""

    def __init__(self, r: Any) -> None:
        self.pipe: Any = r.pipeline(transaction=False)
        self._scripts: dict[int, tuple[Any, Sequence[Any], Sequence[Any]]] = {}

    def script(self, script: Script | AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> int:
        """Queue a script call; returns the index of its reply."""
        index = len(self.pipe)
        self._scripts[index] = (script, keys, args)
        # As a raw command: redis-py's cluster pipelines refuse their evalsha method, yet
        # route a raw EVALSHA by its keys (all in the one slot of the store's hash tag).
        self.pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        return index


class Batch(_Queue):
    """Queue commands on ``batch.pipe`` and scripts with :meth:`script`; then
    :meth:`execute` returns every reply in order (raising the first error)."""

    def execute(self, *, raise_on_error: bool = True) -> list[Any]:
        """Every reply in order; with ``raise_on_error=False`` errors stand in their
        place instead of the first being raised."""
        if not len(self.pipe):
            return []
        with self.pipe:
            replies = list(self.pipe.execute(raise_on_error=False))
        for i, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):
                script, keys, args = self._scripts[i]
                try:
                    replies[i] = script(keys=keys, args=args)
                except Exception as exc:
                    replies[i] = exc
        return _checked(replies, raise_on_error)


class AsyncBatch(_Queue):
    """:class:`Batch` for ``redis.asyncio`` clients (the stream follower's)."""

    async def execute(self, *, raise_on_error: bool = True) -> list[Any]:
        if not len(self.pipe):
            return []
        # Not ``async with``: entering an async cluster pipeline empties its queue.
        # execute() resets the pipeline after, as leaving the block would.
        replies = list(await self.pipe.execute(raise_on_error=False))
        for i, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):
                script, keys, args = self._scripts[i]
                try:
                    replies[i] = await script(keys=keys, args=args)
                except Exception as exc:
                    replies[i] = exc
        return _checked(replies, raise_on_error)


def _checked(replies: list[Any], raise_on_error: bool) -> list[Any]:
    if raise_on_error:
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
    return replies


class Chain:
    """Script calls gathered to run as one script (CHAIN, see
    :mod:`orchestrator.store.scripts.chain`): in order, none after the first that
    answers an error. The indexes :meth:`script` returns are into the reply of
    :meth:`into`'s call (a list, or the error that stopped it)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, Sequence[Any], Sequence[Any]]] = []
        self.guards: dict[int, int] = {}

    @property
    def pipe(self) -> Chain:
        return self  # for the ``*_into`` methods that write a field: see :meth:`hset`

    def script(self, script: Script | AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> int:
        self.calls.append((PART_NUMBER[script.sha], keys, args))
        return len(self.calls) - 1

    def guard(self, index: int, least: int) -> None:
        """Stop the chain after call ``index`` if it answers a number below ``least``
        (CHAIN's reply is then the error ``REFUSED <index + 1> <number>``)."""
        self.guards[index] = least

    def hset(self, name: str, key: str, value: Any) -> int:
        self.calls.append((PART_NUMBER[SET_FIELD_SHA], [name], [key, value]))
        return len(self.calls) - 1

    def into(self, batch: Batch, chain: Script) -> int:
        """Queue the calls on ``batch`` as one call of ``chain`` (CHAIN registered);
        the index of its reply."""
        keys: list[Any] = []
        head: list[Any] = [len(self.calls)]
        args: list[Any] = []
        for i, (number, call_keys, call_args) in enumerate(self.calls):
            head += [number, len(call_keys), len(call_args), self.guards.get(i, "")]
            keys += call_keys
            args += call_args
        return batch.script(chain, keys, head + args)
