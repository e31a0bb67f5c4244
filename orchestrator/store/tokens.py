"""API tokens of the HTTP gateway and their request buckets.

A token is kept only as the SHA-256 of its text (it is a high-entropy random string, so
a plain hash is enough; it is shown once, when created, and never stored). A record
names its role, its tenant (or none) and a label; a request's check goes hash -> id ->
record, and takes from the token's bucket, in one script.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import secrets
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from orchestrator.store.jobs import RedisStore
from orchestrator.store.keys import Keys
from orchestrator.store.scripts.gateway import AUTHENTICATE

TOKEN_PREFIX = "orch_"


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class TokenStore:
    """Create, look up, list and revoke tokens (requests are checked by
    :class:`AsyncTokenCheck`)."""

    def __init__(self, store: RedisStore) -> None:
        self.r: Any = store.r
        self.keys = store.keys

    def create(self, role: str, tenant: str | None, name: str) -> tuple[str, dict[str, Any]]:
        """A new token: (its text, to show once; its record, as stored)."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token_id = "tok_" + secrets.token_hex(8)
        record = {
            "id": token_id,
            "role": role,
            "tenant": tenant,
            "name": name,
            "created_at": int(time.time() * 1000),
            "sha256": token_digest(token),
        }
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.tokens, token_id, json.dumps(record, sort_keys=True))
            pipe.hset(self.keys.token_hashes, record["sha256"], token_id)
            pipe.execute()
        return token, record

    def list(self) -> list[dict[str, Any]]:
        records = [json.loads(raw) for raw in self.r.hvals(self.keys.tokens)]
        return sorted(records, key=lambda r: (r["created_at"], r["id"]))

    def revoke(self, token_id: str) -> bool:
        """Forget the token; False if there was no such token."""
        raw = self.r.hget(self.keys.tokens, token_id)
        if raw is None:
            return False
        digest = json.loads(raw)["sha256"]
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hdel(self.keys.tokens, token_id)
            pipe.hdel(self.keys.token_hashes, digest)
            pipe.delete(self.keys.token_bucket(digest))
            pipe.execute()
        return True


#: A process takes from a token's shared bucket this many seconds' worth of requests at
#: once (at least one, at most a quarter of the burst) and serves them without asking
#: Redis again.
LEASE_SECONDS = 0.1
#: Tokens whose records a process keeps (all are forgotten past this).
MAX_CACHED_TOKENS = 10_000


@dataclass
class _Held:
    record: dict[str, Any]
    until: float  # monotonic: past this, Redis is asked again (revocation shows)
    left: int  # requests taken from the shared bucket and not yet served
    dry_until: float  # monotonic: before this the bucket has no request to give


class AsyncTokenCheck:
    """Each request's token check on the gateway's event loop (an asyncio client, so it
    needs no thread): the ``AUTHENTICATE`` script, one round trip, which also takes a
    lease of requests from the token's bucket; the record and the lease are then kept
    for up to ``cache_seconds``, so most requests of a busy token ask Redis nothing.

    What that costs: a revoked token still passes on a process that holds it for up to
    ``cache_seconds``; and the limit is never looser than the shared bucket (every request
    served was taken from it), only stricter by a lease left unused when it lapses."""

    def __init__(self, client: aioredis.Redis, prefix: str, cache_seconds: float = 0.0) -> None:
        self.keys = Keys.for_client(client, prefix)
        self.cache_seconds = cache_seconds
        self._auth = client.register_script(AUTHENTICATE)
        self._held: dict[str, _Held] = {}
        self._asking: dict[str, asyncio.Future[None]] = {}  # digest -> its Redis call

    async def authenticate(
        self, token: str, per_second: float, burst: int
    ) -> tuple[dict[str, Any], int] | None:
        """The record of a live token and the ms to wait before it may make a request
        (0: one was taken from its bucket); None for an unknown or revoked token."""
        digest = token_digest(token)
        want = 1
        if self.cache_seconds:
            want = max(1, min(burst // 4, int(per_second * LEASE_SECONDS)))
        while True:
            served = self._serve(digest)
            if served is not None:
                return served
            asking = self._asking.get(digest)
            if want == 1 or asking is None:
                break
            # Another request of this token is asking Redis: share its lease rather than
            # each take one (a thousand streams opened at once would empty the bucket).
            await asyncio.wait((asking,))
        if want == 1:
            return await self._ask(digest, per_second, burst, want)
        self._asking[digest] = asyncio.get_running_loop().create_future()
        try:
            return await self._ask(digest, per_second, burst, want)
        finally:
            self._asking.pop(digest).set_result(None)

    def _serve(self, digest: str) -> tuple[dict[str, Any], int] | None:
        """The answer from what this process holds of the token, if it still holds it:
        one request of its lease, or a refusal while its bucket is known to be dry."""
        held = self._held.get(digest)
        now = time.monotonic()
        if held is None or now >= held.until:
            return None
        if held.left > 0:
            held.left -= 1
            return held.record, 0
        if now < held.dry_until:
            return held.record, math.ceil((held.dry_until - now) * 1000)
        return None

    async def _ask(
        self, digest: str, per_second: float, burst: int, want: int
    ) -> tuple[dict[str, Any], int] | None:
        keys = [self.keys.token_hashes, self.keys.tokens, self.keys.token_bucket(digest)]
        now = time.monotonic()
        reply = await self._auth(
            keys=keys, args=[digest, int(time.time() * 1000), per_second, burst, want]
        )
        if not reply:
            self._held.pop(digest, None)
            return None
        record, wait, taken = dict(json.loads(reply[0])), int(reply[1]), int(reply[2])
        if self.cache_seconds:
            held = self._held.get(digest)
            left = max(0, taken - 1) + (held.left if held is not None and now < held.until else 0)
            if held is None and len(self._held) >= MAX_CACHED_TOKENS:
                self._held.clear()
            self._held[digest] = _Held(record, now + self.cache_seconds, left, now + wait / 1000)
        return record, wait
