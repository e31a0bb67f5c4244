"""API tokens of the HTTP gateway and their request buckets.

A token is kept only as the SHA-256 of its text (it is a high-entropy random string, so
a plain hash is enough; it is shown once, when created, and never stored). A record
names its role, its tenant (or none) and a label; a request's check goes hash -> id ->
record, and takes from the token's bucket, in one script.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
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


class AsyncTokenCheck:
    """Each request's token check on the gateway's event loop (an asyncio client, so it
    needs no thread): the ``AUTHENTICATE`` script, one round trip."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.keys = Keys(prefix)
        self._auth = client.register_script(AUTHENTICATE)

    async def authenticate(
        self, token: str, per_second: float, burst: int
    ) -> tuple[dict[str, Any], int] | None:
        """The record of a live token and the ms to wait before it may make a request
        (0: one was taken from its bucket now); None for an unknown or revoked token."""
        digest = token_digest(token)
        keys = [self.keys.token_hashes, self.keys.tokens, self.keys.token_bucket(digest)]
        now = int(time.time() * 1000)
        reply = await self._auth(keys=keys, args=[digest, now, per_second, burst])
        if not reply:
            return None
        return dict(json.loads(reply[0])), int(reply[1])
