"""A hostile Workers API for tests: every route of the wire, each answering with the
fault a *class* names, over real HTTP on 127.0.0.1 (uvicorn in a thread, as
:class:`tests.hostile.HostileServer`, whose running machinery it reuses).

The class comes from the job's input: ``"<class>#<anything>"`` (the suffix only keeps
inputs apart; for ``id:reused`` it names the existing worker a create answers with).
Create and continue read it from the body; the worker id they answer remembers it, so
the stream, retrieve and file routes of that worker play the same class. Any input
that names no class (``"ok#..."``) is a well-behaved turn: a few events, then a
completed worker with exact costs.

The server keeps its own ground truth: ``billed[worker id]`` is the cumulative figure
(ledger field -> integer micro-dollars or tokens) of the last well-formed completed
snapshot it served, i.e. what the upstream billed for a well-formed turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import json
import threading
from collections import Counter
from decimal import Decimal
from typing import Any
from urllib.parse import unquote

from starlette.types import Scope, Send

from .hostile import HostileServer, _answer, _more, _start

JSON = [(b"content-type", b"application/json")]
SSE = [(b"content-type", b"text/event-stream")]
HTML = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"

#: Worker ids a create answers for the ``id:`` classes.
HOSTILE_IDS = {
    "id:traversal": "../../etc",
    "id:slash": "a/b",
    "id:empty": "",
    "id:too-long": "w" * 129,
    "id:colliding": "victim:schedules",
    "id:newline": "wrk_1\n",
}

#: The files a completed worker of a ``files:`` class publishes.
FILES = {
    "files:endless": ["endless"],
    "files:huge-length": ["huge"],
    "files:long-name": ["n" * 250],
    "files:deep-path": ["/".join(["d"] * 2000)],
    "files:a-then-a-b": ["a", "a/b"],
    "files:traversal": ["../../etc/passwd", "/etc/passwd", "a/../../b"],
    "files:redirect": ["redirect"],
    "files:gzip-bomb": ["bomb"],
    "files:404": ["missing"],
    "files:500": ["flaky"],
    # 60 names, each listed twice: more than the tests' FILES_MAX_PER_TURN of 25
    "files:many": [f"many/{i:02d}.txt" for i in range(60)] * 2,
}

#: Retrieve answers whose figures are absurd (the JSON text of ``costs``/``usage``).
ABSURD = {
    "cost:nan": ("NaN", "1"),
    "cost:negative": ("-0.5", "1"),
    "cost:1e308": ("1e308", "1"),
    "cost:9.3e12": ("9.3e12", "1"),
    "cost:string": ('"12 USD"', "1"),
    "tokens:2^63": ("0.5", str(2**63)),
    "tokens:2^53+1": ("0.5", str(2**53 + 1)),
    "tokens:float": ("0.5", "1.5"),
}

EVENTS = 4
BOMB_WORKER = "wrk_hbomb"


@functools.cache
def bombs() -> tuple[bytes, bytes, bytes]:
    """Gzipped to about 64 KB each (built once, on first use: a test measuring memory
    calls this first): 64 MB of zeros; 64 MB of spaces before a Worker JSON; an event
    stream of one 64 MB event between two small ones."""
    worker = json.dumps({"id": BOMB_WORKER, "object": "worker", "status": "running",
                         "running": True}).encode()  # fmt: skip
    padded = b" " * (64 * 2**20) + worker
    events = b'data: {"n": 0}\n\ndata: "' + b"y" * (64 * 2**20) + b'"\n\ndata: {"n": 2}\n\n'
    return (gzip.compress(b"\0" * (64 * 2**20), 9), gzip.compress(padded, 9),
            gzip.compress(events, 9))  # fmt: skip

#: Classes whose turn never ends by itself upstream (retrieve says running for ever).
RUNNING_FOREVER = ("retrieve:running-forever", "stream:closes-forever", "stream:500",
                   "stream:429")  # fmt: skip


def class_of(text: str) -> str:
    return text.split("#", 1)[0]


class HostileAPI(HostileServer):
    """The Workers API, hostile per class; see the module doc."""

    def __init__(self, *, event_gap: float = 0.02) -> None:
        super().__init__()
        self.event_gap = event_gap
        self.stall_seconds = 60.0  # longer than any test waits: only a read timeout ends it
        self.workers: dict[str, str] = {}  # worker id -> class
        self.turns: Counter[str] = Counter()  # worker id -> turns begun
        self.done: Counter[str] = Counter()  # worker id -> turns whose stream was served whole
        self.calls: Counter[str] = Counter()  # "<route> <class or worker>" -> calls
        self.billed: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()
        self._next = 0
        bombs()  # built now: building them in the server's loop would stall it
        self.oversize_bytes = 2 * 2**20
        self._oversize = b'data: "' + b"y" * self.oversize_bytes + b'"\n\n'

    # --- routing ---------------------------------------------------------------------

    async def _route(self, scope: Scope, send: Send, gone: asyncio.Event) -> None:
        path: str = unquote(scope["path"])
        method: str = scope["method"]
        if not path.startswith("/api/workers"):
            await _answer(send, 404, b'{"error": {"message": "no such route"}}')
            return
        rest = path.removeprefix("/api/workers").lstrip("/")
        if method == "POST":
            body = self.bodies.pop(id(scope), b"{}")
            await self._post(rest or None, body, send, gone)
            return
        worker_id, _, tail = rest.partition("/")
        cls = self.workers.get(worker_id)
        if cls is None:
            await _answer(send, 404, b'{"error": {"message": "no such worker"}}')
        elif tail == "stream":
            await self._stream(worker_id, cls, send, gone)
        elif tail.startswith("files/"):
            await self._file(tail.removeprefix("files/"), send, gone)
        elif tail == "":
            await self._retrieve(worker_id, cls, send)
        else:
            await _answer(send, 404, b'{"error": {"message": "no such route"}}')

    async def __call__(self, scope: Scope, receive: Any, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            # Read the body first: the base class's watcher takes every later message.
            body, more = b"", True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
            self.bodies[id(scope)] = body
        await super().__call__(scope, receive, send)

    @property
    def bodies(self) -> dict[int, bytes]:
        if not hasattr(self, "_bodies"):
            self._bodies: dict[int, bytes] = {}
        return self._bodies

    # --- create and continue ----------------------------------------------------------

    async def _post(
        self, worker_id: str | None, raw: bytes, send: Send, gone: asyncio.Event
    ) -> None:
        try:
            text = str(json.loads(raw).get("input", ""))
        except ValueError:
            text = ""
        cls = class_of(text)
        with self._lock:
            self.calls[f"post {text}"] += 1
            call = self.calls[f"post {text}"]
        if cls == "create:429":
            headers = [*JSON, (b"retry-after", b"86400")]
            await _answer(send, 429, b'{"error": {"message": "slow down"}}', headers)
        elif cls in ("create:500", "create:503") or (cls == "create:500-then-ok" and call == 1):
            await _answer(send, int(cls[7:10]), b'{"error": {"message": "upstream broke"}}')
        elif cls in ("create:400", "create:401", "create:404"):
            await _answer(send, int(cls[7:10]), b'{"error": {"message": "refused"}}')
        elif cls == "create:503-bomb":  # an error page that inflates to 64 MB
            headers = [*JSON, (b"content-encoding", b"gzip")]
            await _answer(send, 503, bombs()[0], headers)
        elif cls == "create:502-html":
            await _answer(send, 502, HTML, [(b"content-type", b"text/html")])
        elif cls == "create:html":
            await _answer(send, 200, HTML, [(b"content-type", b"text/html")])
        elif cls == "create:truncated":
            await _answer(send, 200, b'{"id": "wrk_trunc", "status": "runn')
        elif cls == "create:short-body":
            await _start(send, 200, [*JSON, (b"content-length", b"500")])
            await send({"type": "http.response.body", "body": b'{"id": "wrk_short"'})
        elif cls == "create:drip":
            await self._drip(send, gone, self._worker_json("wrk_drip", "running"))
        elif cls in HOSTILE_IDS:
            body = json.dumps({"id": HOSTILE_IDS[cls], "object": "worker", "status": "running",
                               "running": True, "created_at": 1}).encode()  # fmt: skip
            await _answer(send, 200, body)
        else:
            if cls == "id:reused":  # a create answered with another job's worker
                worker_id = text.split("#", 1)[1]
            if worker_id is None:
                with self._lock:
                    self._next += 1
                    worker_id = f"wrk_h{self._next}"
            elif worker_id not in self.workers:
                await _answer(send, 404, b'{"error": {"message": "no such worker"}}')
                return
            with self._lock:
                self.workers[worker_id] = cls
                self.turns[worker_id] += 1
            if cls == "create:gzip-bomb":
                # About 64 KB on the wire, 64 MB of JSON whitespace once decoded.
                with self._lock:
                    self.workers[BOMB_WORKER] = cls
                headers = [*JSON, (b"content-encoding", b"gzip")]
                await _answer(send, 200, bombs()[1], headers)
            else:
                await _answer(send, 200, self._worker_json(worker_id, "running"))

    # --- the stream -------------------------------------------------------------------

    async def _stream(self, worker_id: str, cls: str, send: Send, gone: asyncio.Event) -> None:
        with self._lock:
            self.calls[f"stream {worker_id}"] += 1
            call = self.calls[f"stream {worker_id}"]
        if cls == "stream:404":
            await _answer(send, 404, b'{"error": {"message": "no stream"}}')
            return
        if cls == "stream:500" or (cls == "stream:500-then-ok" and call == 1):
            await _answer(send, 500, b'{"error": {"message": "broke"}}')
            return
        if cls == "stream:429":
            await _answer(send, 429, b"{}", [*JSON, (b"retry-after", b"999999")])
            return
        if cls == "stream:gzip-bomb":  # one event inflating to 64 MB, then a small one
            headers = [*SSE, (b"content-encoding", b"gzip")]
            await _answer(send, 200, bombs()[2], headers)
            with self._lock:
                self.done[worker_id] = self.turns[worker_id]
            return
        if cls == "stream:wrong-type":
            await _answer(send, 200, b'{"type": "start"}')
            return
        await _start(send, 200, SSE)
        if cls == "stream:stall-then-ok" and call == 1:
            with contextlib.suppress(TimeoutError):  # headers, then silence
                await asyncio.wait_for(gone.wait(), self.stall_seconds)
            return
        turns = self.turns[worker_id]
        events = [json.dumps({"type": "text-delta", "turn": t, "n": i}).encode()
                  for t in range(1, turns + 1) for i in range(EVENTS)]  # fmt: skip
        if cls == "stream:closes-forever":
            events = []
        frames = [b"data: " + e + b"\n\n" for e in events]
        if cls == "stream:nonjson":
            frames = [b"data: {not json\n\n"] * 3
        elif cls == "stream:oversize":
            frames.insert(1, self._oversize)
        elif cls == "stream:ids-scrambled":
            ids = [b"7", b"3", b"3", b"99", b"-1", b"x"]
            frames = [b"id: " + ids[i % len(ids)] + b"\n" + f for i, f in enumerate(frames)]
        cut = cls == "stream:cut-then-ok" and call == 1
        if cut:
            frames = frames[: len(frames) // 2]
        for frame in frames:
            if gone.is_set():
                return
            if cls == "stream:drip":
                for i in range(len(frame)):
                    await _more(send, frame[i : i + 1])
                    await asyncio.sleep(0.002)
            else:
                for i in range(0, len(frame), 256 * 1024):
                    await _more(send, frame[i : i + 256 * 1024])
            await asyncio.sleep(self.event_gap)
        if cls not in ("stream:nonjson", "stream:closes-forever") and not cut:
            with self._lock:
                self.done[worker_id] = turns
        await send({"type": "http.response.body", "body": b""})

    # --- retrieve ---------------------------------------------------------------------

    def _finished(self, worker_id: str, cls: str) -> bool:
        if cls in RUNNING_FOREVER:
            return False
        if cls in ("stream:404", "stream:nonjson", "stream:wrong-type"):
            return True  # the turn ran upstream; only our reading of it failed
        return self.done[worker_id] >= self.turns[worker_id]

    async def _retrieve(self, worker_id: str, cls: str, send: Send) -> None:
        with self._lock:
            self.calls[f"retrieve {worker_id}"] += 1
            call = self.calls[f"retrieve {worker_id}"]
        finished = self._finished(worker_id, cls)
        if not finished:
            await _answer(send, 200, self._worker_json(worker_id, "running"))
        elif cls == "retrieve:500" or (cls == "retrieve:500-then-ok" and call == 1):
            await _answer(send, 500, b'{"error": {"message": "broke"}}')
        elif cls == "retrieve:404":
            await _answer(send, 404, b'{"error": {"message": "gone"}}')
        elif cls == "retrieve:truncated":
            await _answer(send, 200, self._worker_json(worker_id, "completed")[:40])
        elif cls == "retrieve:drip":
            await self._drip(send, asyncio.Event(), self._worker_json(worker_id, "completed"))
        elif cls in ABSURD:
            usd, tokens = ABSURD[cls]
            await _answer(send, 200, self._absurd_json(worker_id, usd, tokens))
        elif cls == "status:unknown":
            await _answer(send, 200, self._worker_json(worker_id, "paused"))
        elif cls == "costs:null":
            await _answer(send, 200, self._worker_json(worker_id, "completed", costs=False))
        else:
            body = self._worker_json(worker_id, "completed")
            with self._lock:
                self.billed[worker_id] = self.figures(worker_id)
            await _answer(send, 200, body)

    def money(self, worker_id: str) -> dict[str, Decimal]:
        """The worker's cumulative USD figures: 6 decimals at most, so exact in micro."""
        n = int(worker_id.removeprefix("wrk_h")) + 1000 * (self.turns[worker_id] - 1)
        return {
            "internalCostUsd": Decimal("0.001001") + Decimal(n) / 10**6,
            "modelCostUsd": Decimal("0.012345") * self.turns[worker_id] + Decimal(n) / 10**5,
            "sandboxCostUsd": Decimal("0.0005"),
            "toolCostUsd": Decimal("0.000250") * self.turns[worker_id],
        }

    def tokens(self, worker_id: str) -> dict[str, int]:
        t = self.turns[worker_id]
        return {"cacheReadTokens": 3 * t, "cacheWriteTokens": 2 * t, "inputTokens": 100 * t,
                "outputTokens": 40 * t, "reasoningTokens": 7 * t, "steps": t,
                "totalTokens": 152 * t, "credits": 11 * t}  # fmt: skip

    def figures(self, worker_id: str) -> dict[str, int]:
        """The ledger fields of the worker's cumulative figures (the ground truth)."""
        money, tokens = self.money(worker_id), self.tokens(worker_id)
        micro = {k: int(v * 10**6) for k, v in money.items()}
        return {
            "internal_cost_micro": micro["internalCostUsd"],
            "model_cost_micro": micro["modelCostUsd"],
            "sandbox_cost_micro": micro["sandboxCostUsd"],
            "tool_cost_micro": micro["toolCostUsd"],
            "usage_cost_micro": sum(micro.values()),
            "input_tokens": tokens["inputTokens"],
            "output_tokens": tokens["outputTokens"],
            "reasoning_tokens": tokens["reasoningTokens"],
            "cache_read_tokens": tokens["cacheReadTokens"],
            "cache_write_tokens": tokens["cacheWriteTokens"],
            "total_tokens": tokens["totalTokens"],
            "steps": tokens["steps"],
            "credits": tokens["credits"],
        }

    def _worker_json(self, worker_id: str, status: str, *, costs: bool = True) -> bytes:
        cls = self.workers.get(worker_id, "")
        worker: dict[str, Any] = {
            "id": worker_id, "object": "worker", "status": status,
            "running": status == "running", "created_at": 1, "output_text": "done",
        }  # fmt: skip
        if status != "running" and costs and worker_id.startswith("wrk_h"):
            money = self.money(worker_id)
            worker["costs"] = {k: float(v) for k, v in money.items()}
            worker["usage"] = {**self.tokens(worker_id), "costUsd": float(sum(money.values()))}
        if status != "running" and cls in FILES:
            worker["files"] = [{"filename": name, "mediaType": "text/plain",
                                "url": f"/files/{name}"} for name in FILES[cls]]  # fmt: skip
        # JSON floats: a 6-decimal Decimal prints back exactly (the client parses the text).
        return json.dumps(worker).encode()

    def _absurd_json(self, worker_id: str, usd: str, tokens: str) -> bytes:
        money = ("internalCostUsd", "modelCostUsd", "sandboxCostUsd", "toolCostUsd")
        counts = ("cacheReadTokens", "cacheWriteTokens", "inputTokens", "outputTokens",
                  "reasoningTokens", "steps", "totalTokens")  # fmt: skip
        costs = ", ".join(f'"{k}": {usd}' for k in money)
        usage = ", ".join(f'"{k}": {tokens}' for k in counts)
        return (
            f'{{"id": "{worker_id}", "object": "worker", "status": "completed", "running": false,'
            f' "costs": {{{costs}}}, "usage": {{{usage}, "costUsd": 0.5}}}}'
        ).encode()

    # --- files ------------------------------------------------------------------------

    async def _file(self, name: str, send: Send, gone: asyncio.Event) -> None:
        kind = name.rsplit("/", 1)[-1]
        with self._lock:
            self.calls[f"file {name}"] += 1
        if kind == "redirect":
            headers = [(b"location", b"http://169.254.169.254/latest/meta-data/")]
            await _answer(send, 302, b"", headers)
        elif kind == "bomb":
            headers = [(b"content-type", b"application/octet-stream"),
                       (b"content-encoding", b"gzip")]  # fmt: skip
            await _answer(send, 200, bombs()[0], headers)
        elif kind == "missing":
            await _answer(send, 404, b'{"error": {"message": "no such file"}}')
        elif kind == "flaky":
            await _answer(send, 500, b'{"error": {"message": "broke"}}')
        else:
            await super()._file(name, send, gone)
