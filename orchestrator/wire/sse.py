"""Server-sent events read with a bound on each event's size.

A generic SSE reader gathers a whole line, then a whole event, before anyone can look
at its size: one 50 MB event cost the follower hundreds of MiB. :class:`EventParser`
keeps at most ``max_bytes`` (plus a field name) of any line and of any event's data,
counts the rest, and hands an oversize event on as a :class:`Event` marked
``truncated`` with its full size and the head of its data, never dropping it (the n-th
event of a stream is the worker's update n, so a dropped one would shift every later
update).

Its rules are those of the WHATWG event-stream format, as ``httpx_sse`` applies them
(lines end at ``\\r\\n``, ``\\r`` or ``\\n``; a blank line dispatches an event when any of
data, event, id or retry was given; the last event id is kept across events; an
unterminated last event is not dispatched), so the count of events is unchanged.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["HEAD_BYTES", "Event", "EventParser", "aiter_events", "iter_events", "truncated"]

#: How much of an oversize event's data its stored record keeps.
HEAD_BYTES = 1024

_EOL = re.compile(rb"\r\n|\r|\n")
_FIELD_ROOM = 16  # room for "data: " and its like before a line's kept value


@dataclass(frozen=True, slots=True)
class Event:
    """One dispatched event: its data (the head only, when ``truncated``) and the size
    of the whole data in bytes."""

    data: str
    size: int
    truncated: bool = False


def truncated(event: Event) -> dict[str, Any]:
    """The record stored in place of an oversize event."""
    return {"truncated": True, "bytes": event.size, "head": event.data}


class EventParser:
    """Incremental, bounded SSE parser: :meth:`feed` it bytes as they come."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._line = bytearray()  # the current line's first max_bytes + a field name
        self._line_size = 0  # the current line's full length
        self._cr = False  # the last chunk ended with \r (a \n may follow in the next)
        self._data = bytearray()  # the event's data so far, at most max_bytes
        self._data_size = 0  # its full length
        self._data_lines = 0
        self._event = False
        self._retry = False
        self._has_id = False  # kept across events, as the format says

    def feed(self, chunk: bytes) -> list[Event]:
        """The events that ``chunk`` completes."""
        out: list[Event] = []
        if self._cr or b"\r" in chunk:
            self._feed_any(chunk, out)
            return out
        # Lines that end in \n alone (what servers send): split once, no search a line.
        *whole, rest = chunk.split(b"\n")
        keep = self.max_bytes + _FIELD_ROOM
        for i, line in enumerate(whole):
            if i == 0 and self._line_size:  # the end of a line begun in an earlier chunk
                self._take(line, 0, len(line))
                self._line_done(out)
            else:
                self._field(line[:keep], len(line), out)
        self._take(rest, 0, len(rest))
        return out

    def _feed_any(self, chunk: bytes, out: list[Event]) -> None:
        pos, end = 0, len(chunk)
        if self._cr:
            self._cr = False
            if chunk[:1] == b"\n":
                pos = 1  # the \n of a \r\n split across chunks
        while pos < end:
            match = _EOL.search(chunk, pos)
            if match is None:
                self._take(chunk, pos, end)
                break
            self._take(chunk, pos, match.start())
            if match.end() == end and match.group() == b"\r":
                self._cr = True
            self._line_done(out)
            pos = match.end()

    def _take(self, chunk: bytes, start: int, stop: int) -> None:
        room = self.max_bytes + _FIELD_ROOM - len(self._line)
        if room > 0:
            self._line += chunk[start : min(stop, start + room)]
        self._line_size += stop - start

    def _line_done(self, out: list[Event]) -> None:
        line, size = bytes(self._line), self._line_size
        self._line.clear()
        self._line_size = 0
        self._field(line, size, out)

    def _field(self, line: bytes, size: int, out: list[Event]) -> None:
        """One line: ``line`` its first max_bytes + a field name, ``size`` its length."""
        if size == 0:
            event = self._dispatch()
            if event is not None:
                out.append(event)
            return
        if line.startswith(b":"):
            return  # a comment
        name, colon, value = line.partition(b":")
        if not colon and size > len(line):
            return  # a huge field name: no field we know
        skip = len(name) + len(colon)
        if value.startswith(b" "):
            value = value[1:]
            skip += 1
        value_size = size - skip
        if name == b"data":
            self._add_data(value, value_size)
        elif name == b"event":
            self._event = value_size > 0
        elif name == b"id":
            if b"\0" not in value:
                self._has_id = value_size > 0
        elif name == b"retry" and value_size == len(value):
            try:
                int(value.decode("utf-8", "replace"))
            except ValueError:
                pass
            else:
                self._retry = True

    def _add_data(self, value: bytes, size: int) -> None:
        piece = value if not self._data_lines else b"\n" + value
        size += 1 if self._data_lines else 0
        self._data_lines += 1
        self._data_size += size
        room = self.max_bytes - len(self._data)
        if room > 0:
            self._data += piece[:room]

    def _dispatch(self) -> Event | None:
        if not (self._event or self._data_lines or self._has_id or self._retry):
            return None
        if self._data_size > self.max_bytes:
            head = bytes(self._data[:HEAD_BYTES]).decode("utf-8", "replace")
            event = Event(head, self._data_size, truncated=True)
        else:
            event = Event(self._data.decode("utf-8", "replace"), self._data_size)
        self._data = bytearray()
        self._data_size = self._data_lines = 0
        self._event = self._retry = False
        return event


def iter_events(chunks: Iterable[bytes], max_bytes: int) -> Iterator[Event]:
    parser = EventParser(max_bytes)
    for chunk in chunks:
        yield from parser.feed(chunk)


async def aiter_events(chunks: AsyncIterable[bytes], max_bytes: int) -> AsyncIterator[Event]:
    parser = EventParser(max_bytes)
    async for chunk in chunks:
        for event in parser.feed(chunk):
            yield event
