"""Reading an answer's body with a bound on its *decoded* size, for both clients.

httpx inflates a gzip or deflate body a whole network chunk at a time: one 64 KB chunk
of a gzip bomb becomes 64 MB in memory before any cap could look at it. So the body is
read raw and inflated here, a bounded piece at a time (``zlib``'s ``max_length``):

- a successful JSON answer over ``ANSWER_MAX_BYTES`` once decoded is refused
  (:class:`ResponseTooLargeError`), never held whole;
- of an error answer only the head is read (its message is all we keep);
- a file download gets its decoded bytes in pieces and applies its own cap.

An encoding we do not inflate (several stacked, or one httpx would not either) is passed
through as it came, as httpx does: it then fails to parse, as any malformed answer.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Iterator

import httpx

from orchestrator.errors import ResponseTooLargeError, StreamError
from orchestrator.wire.routes import Call

#: How much of an error answer is read for its message; the rest is dropped unread.
ERROR_BODY_MAX_BYTES = 64 * 1024
#: The most a piece of inflated body may hold (one raw chunk may inflate to far more).
PIECE_BYTES = 64 * 1024
#: Only what :class:`Inflater` decodes is asked for (httpx would add ``br``/``zstd``
#: whenever their packages happen to be installed).
ACCEPT_ENCODING = {"Accept-Encoding": "gzip, deflate"}


class Inflater:
    """Decodes a body's raw bytes in pieces of at most ``piece`` bytes."""

    def __init__(self, call: Call, response: httpx.Response, piece: int = PIECE_BYTES) -> None:
        self.call, self.piece = call, piece
        encoding = response.headers.get("content-encoding", "").strip().lower()
        # httpx's rule: a "deflate" body may come without its zlib header (raw).
        self._may_be_raw = encoding == "deflate"
        self._zlib: zlib._Decompress | None
        if encoding in ("gzip", "x-gzip"):
            self._zlib = zlib.decompressobj(zlib.MAX_WBITS | 16)
        elif encoding == "deflate":
            self._zlib = zlib.decompressobj()
        else:
            self._zlib = None

    def feed(self, raw: bytes) -> Iterator[bytes]:
        if self._zlib is None:
            for i in range(0, len(raw), self.piece):
                yield raw[i : i + self.piece]
            return
        data = raw
        while data:
            try:
                out = self._zlib.decompress(data, self.piece)
            except zlib.error as exc:
                if not self._may_be_raw:
                    raise StreamError(f"malformed answer: {exc}", call=self.call.name) from None
                self._may_be_raw = False
                self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
                continue
            self._may_be_raw = False
            if out:
                yield out
            data = self._zlib.unconsumed_tail


def iter_decoded(call: Call, response: httpx.Response, piece: int = PIECE_BYTES) -> Iterator[bytes]:
    """A streamed response's body, decoded, in pieces of at most ``piece`` bytes."""
    inflater = Inflater(call, response, piece)
    for raw in response.iter_raw():
        yield from inflater.feed(raw)


async def aiter_decoded(call: Call, response: httpx.Response) -> AsyncIterator[bytes]:
    """:func:`iter_decoded` for the async client."""
    inflater = Inflater(call, response)
    async for raw in response.aiter_raw():
        for piece in inflater.feed(raw):
            yield piece


class BoundedBody:
    """A body gathered up to ``cap`` decoded bytes. Over the cap, a successful answer
    (``strict``) raises :class:`ResponseTooLargeError`; an error answer keeps its head."""

    def __init__(self, call: Call, cap: int, *, strict: bool) -> None:
        self.call, self.cap, self.strict = call, cap, strict
        self.chunks: list[bytes] = []
        self.size = 0

    def add(self, chunk: bytes) -> bool:
        """Take a piece; False once the cap is reached (stop reading)."""
        room = self.cap - self.size
        self.size += len(chunk)
        if len(chunk) <= room:
            self.chunks.append(chunk)
            return True
        if self.strict:
            message = f"malformed answer: passed the {self.cap}-byte limit"
            raise ResponseTooLargeError(message, call=self.call.name)
        self.chunks.append(chunk[:room])
        return False

    def into(self, response: httpx.Response) -> None:
        # What Response.read() sets, from the bounded read (already decoded).
        response._content = b"".join(self.chunks)


def read_bounded(call: Call, response: httpx.Response, cap: int, *, strict: bool = True) -> None:
    """Read a streamed response's body, bounded (see :class:`BoundedBody`), and close it."""
    body = BoundedBody(call, cap, strict=strict)
    try:
        for piece in iter_decoded(call, response):
            if not body.add(piece):
                break
    except StreamError:
        if strict:
            raise  # an error answer that does not inflate still reports its status
    finally:
        response.close()
    body.into(response)


async def aread_bounded(
    call: Call, response: httpx.Response, cap: int, *, strict: bool = True
) -> None:
    """:func:`read_bounded` for the async client."""
    body = BoundedBody(call, cap, strict=strict)
    try:
        async for piece in aiter_decoded(call, response):
            if not body.add(piece):
                break
    except StreamError:
        if strict:
            raise
    finally:
        await response.aclose()
    body.into(response)
