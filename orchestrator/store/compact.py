"""Compact forms of a worker's records (docs/redis-layout.md "Bytes per job").

Two things a finished job leaves are mostly text that compresses well: its worker's
snapshot (the upstream Worker JSON: ~1.5 KB for a short turn, the input and the output
written twice over) and its turn's updates. Both are kept as zlib-compressed bytes in
the worker hash:

- ``snapshot``: the compressed Worker JSON (an older record's plain JSON, which starts
  with ``{`` where zlib's header never does, is still read);
- ``turn:<first index of the turn>``: once a job's turn has completed, its updates, moved
  out of the updates stream (``FOLD_TURN``), which keeps only turns still running. The
  blob is the compressed JSON array ``[first index, data, data, ...]`` (its first index
  may be past the turn's start where ``UPDATES_MAXLEN`` had trimmed the stream).

Both are compressed with a preset dictionary (zlib's ``zdict``) of the wire's own names
(the Worker's keys as stored, the UI-message chunks of reference/wire.md), which halves
what a short record compresses to. A dictionary is named by its Adler-32 in the zlib
header: the ones here are never edited, only added to (:data:`DICTIONARIES`), so every
blob ever written stays readable.

Nothing reads the worker hash whole (HGETALL): its binary fields are read by name
with :func:`raw_hget`, never decoded as text.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from typing import Any

from redis.client import NEVER_DECODE

from orchestrator.jobs.model import Job
from orchestrator.store.batch import Queue
from orchestrator.store.cells import Cells
from orchestrator.store.keys import Keys
from orchestrator.wire.models import Worker

#: A completed turn of at most this many updates is folded into one blob; a longer one
#: stays a stream (reading and compressing it would hold the finalize step too long).
FOLD_MAX_ENTRIES = 2000
#: zlib's level: 6 (its default) compresses these records within 1% of 9, at half the time.
LEVEL = 6

# Preset dictionaries: strings a record is likely to hold, the likeliest last. Never
# edit one (blobs written with it would no longer read): add a new one instead.
SNAPSHOT_DICTIONARY = (
    b'"error":null,"incomplete_details":null,"metadata":{},"object":"worker",'
    b'"running":true,"status":"running","status":"pending",'
    b'{"filename":"","media_type":"application/octet-stream","url":"https://'
    b'"media_type":"text/markdown","url":"http://'
    b'"messages":[{"id":"usr_","role":"user","parts":[{"type":"text","text":"'
    b'{"id":"msg_","role":"assistant","parts":[{"type":"text","text":"'
    b'"output":[{"id":"msg_","content":[{"text":"'
    b'","type":"output_text"}],"role":"assistant","status":"completed","type":"message"}],'
    b'"output_text":"","running":false,"sources":[{"id":"src_","title":"Source ",'
    b'"type":"url","url":"https://"}],"status":"completed",'
    b'"costs":{"internal_cost_usd":0.0,"model_cost_usd":0.0,"sandbox_cost_usd":0.0,'
    b'"tool_cost_usd":0.0},"usage":{"cache_read_tokens":0,"cache_write_tokens":0,'
    b'"cost_usd":0.0,"input_tokens":0,"output_tokens":0,"reasoning_tokens":0,"steps":0,'
    b'"total_tokens":0,"credits":0,"duration_ms":0}}'
    b'{"id":"wrk_","created_at":17,"error":null,"files":[{"filename":"'
)
TURN_DICTIONARY = (
    b'{\\"type\\": \\"error\\", \\"errorText\\": \\"'
    b'{\\"type\\": \\"tool-output-available\\", \\"toolCallId\\": \\"call_'
    b'{\\"type\\": \\"text-start\\", \\"id\\": \\"t1\\"}'
    b'{\\"type\\": \\"text-end\\", \\"id\\": \\"t1\\"}'
    b'{\\"type\\": \\"tool-input-available\\", \\"toolCallId\\": \\"call_'
    b'\\", \\"toolName\\": \\"web_search\\", \\"input\\": {\\"query\\": \\"'
    b'[0,"{\\"type\\": \\"start\\", \\"turn\\": 1, \\"at\\": 17'
    b'"{\\"type\\": \\"finish\\", \\"at\\": 17'
    b'"{\\"type\\": \\"text-delta\\", \\"id\\": \\"t1\\", \\"delta\\": \\" '
    b'\\", \\"at\\": 17'
)
#: Every dictionary a blob may name, by its Adler-32 (the zlib header's DICTID).
DICTIONARIES = {zlib.adler32(d): d for d in (SNAPSHOT_DICTIONARY, TURN_DICTIONARY)}


def turn_field(first: int) -> str:
    """The worker hash's field of the folded turn that began at update ``first``."""
    return f"turn:{first}"


def compress(data: bytes, dictionary: bytes) -> bytes:
    # A window and hash table sized to what is compressed (zlib's own are 32 KiB and
    # 256 KiB, allocated and zeroed for every call: most of a small snapshot's cost in a
    # threaded worker). Blobs of the same size; decompress reads any window.
    wbits = min(zlib.MAX_WBITS, max(9, (len(data) + len(dictionary)).bit_length()))
    co = zlib.compressobj(LEVEL, zlib.DEFLATED, wbits, max(2, min(9, wbits - 7)),
                          zlib.Z_DEFAULT_STRATEGY, dictionary)  # fmt: skip
    out: bytes = co.compress(data) + co.flush()
    return out


def decompress(raw: bytes) -> bytes:
    """What :func:`compress` wrote, with the dictionary its header names (or none)."""
    if len(raw) > 6 and raw[1] & 0x20:  # FDICT: the dictionary's Adler-32 follows
        dobj = zlib.decompressobj(zdict=DICTIONARIES[int.from_bytes(raw[2:6], "big")])
        return dobj.decompress(raw) + dobj.flush()
    return zlib.decompress(raw)


def pack_snapshot(worker: Worker) -> bytes:
    return compress(worker.model_dump_json().encode(), SNAPSHOT_DICTIONARY)


def snapshot_text(raw: bytes | str) -> str:
    """The Worker JSON of a stored snapshot, compressed or (an older record) plain."""
    if isinstance(raw, str):
        return raw
    if raw[:1] == b"{":
        return raw.decode()
    return decompress(raw).decode()


def unpack_snapshot(raw: bytes | str) -> Worker:
    return Worker.model_validate_json(snapshot_text(raw))


def pack_turn(first: int, datas: Sequence[str]) -> bytes:
    """One completed turn's updates (their JSON texts as stored, from index ``first``)."""
    body = json.dumps([first, *datas], separators=(",", ":"))
    return compress(body.encode(), TURN_DICTIONARY)


def unpack_turn(raw: bytes) -> list[tuple[int, str]]:
    """``(index, JSON text)`` of every update of a folded turn, oldest first."""
    first, *datas = json.loads(decompress(raw))
    return [(int(first) + i, str(data)) for i, data in enumerate(datas)]


def raw_hget(client: Any, key: str, field: str) -> Any:
    """HGET of a binary field (bytes, or None), on a client or a pipeline that decodes
    every other reply as text."""
    return client.execute_command("HGET", key, field, **{NEVER_DECODE: []})


class TurnStore:
    """A completed turn's updates folded out of the stream, and reads of either form
    (mixed into ``RedisStore``)."""

    r: Any
    keys: Keys
    updates_maxlen: int
    _fold: Any
    cells: Cells
    worker_keys: Any

    def fold_turn_into(
        self, batch: Queue, job: Job, update_to: int, updates: Sequence[str] | None = None
    ) -> None:
        """Queue the fold of the job's completed turn (updates ``update_from`` to
        ``update_to``) into one compressed field of its worker's hash. Reads the turn
        first (one round trip) unless ``updates`` holds it whole (the JSON texts as
        stored, from ``update_from``: the caller relayed them itself); FOLD_TURN checks
        either against the stream. A turn with no updates, or longer than
        :data:`FOLD_MAX_ENTRIES`, stays as it is."""
        start = job.update_from or 0
        if job.worker_id is None or update_to <= start:
            return
        k = self.cells.of_job(job.id)
        stream = k.updates(job.worker_id)
        span = update_to - start
        if updates is not None and len(updates) == span and span <= self.updates_maxlen:
            first, datas = start, list(updates)
        else:
            entries = self.r.xrange(stream, f"0-{start + 1}", f"0-{update_to}",
                                    count=FOLD_MAX_ENTRIES + 1)  # fmt: skip
            first = _index(entries[0][0]) if entries else start
            datas = [str(fields["data"]) for _, fields in entries]
        if not datas or len(datas) > FOLD_MAX_ENTRIES:
            return
        blob = pack_turn(first, datas)
        oldest = max(update_to - self.updates_maxlen, 0)
        batch.script(self._fold, [k.worker(job.worker_id), stream],
                     [start, first, update_to, blob, oldest])  # fmt: skip

    def read_updates(
        self,
        worker_id: str,
        after: int = -1,
        *,
        count: int = 500,
        block_ms: int | None = None,
        turn: int | None = None,
        job_id: str = "",
    ) -> list[tuple[int, Any]]:
        """Updates with index > ``after``, oldest first, from the stream and the folded
        turns: the one that began at update ``turn`` when given (a job's
        ``update_from``), else every one. Blocks up to ``block_ms`` if there are none.
        ``job_id``: a job of the worker's, which names its cell."""
        k = self.worker_keys(worker_id, job_id)
        stream = k.updates(worker_id)
        if turn is None:
            names = [n for n in self.r.hkeys(k.worker(worker_id)) if n.startswith("turn:")]
        else:
            names = [turn_field(turn)]
        with self.r.pipeline(transaction=False) as pipe:
            pipe.xrange(stream, f"(0-{after + 1}", "+", count=count)
            for name in names:
                raw_hget(pipe, k.worker(worker_id), name)
            entries, *blobs = pipe.execute()
        found = {i: d for blob in blobs if blob for i, d in unpack_turn(blob) if i > after}
        found.update((_index(eid), str(f["data"])) for eid, f in entries)
        if not found and block_ms is not None:
            reply = self.r.xread({stream: f"0-{after + 1}"}, count=count, block=block_ms)
            found = {_index(eid): str(f["data"]) for eid, f in (reply[0][1] if reply else [])}
        return [(i, json.loads(found[i])) for i in sorted(found)[:count]]


def _index(entry_id: str) -> int:
    """The update index of a stream entry id (``0-(n+1)`` is update n)."""
    return int(str(entry_id).split("-")[1]) - 1
