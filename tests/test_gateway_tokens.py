"""The gateway's token check over a real Redis: a process keeps a token's record and a
lease of its requests for a short time; revocation shows within that time, and the
per-token limit, shared through Redis, is never looser than the bucket."""

from __future__ import annotations

import asyncio
import time

from orchestrator.store.jobs import RedisStore
from orchestrator.store.live import LiveStore
from orchestrator.store.tokens import TokenStore


def test_a_revoked_token_is_refused_within_the_cache_time(
    store: RedisStore, redis_url: str
) -> None:
    token, record = TokenStore(store).create("read", None, "cached")

    async def run() -> tuple[int, float]:
        live = LiveStore.from_url(redis_url, store.keys.prefix)
        check = live.token_check(cache_seconds=0.5)
        try:
            assert await check.authenticate(token, 1000, 1000) == (record, 0)
            TokenStore(store).revoke(record["id"])
            revoked_at = time.monotonic()
            passed = 0
            while await check.authenticate(token, 1000, 1000) is not None:
                passed += 1
                assert time.monotonic() - revoked_at < 0.5 + 0.2, "still passes"
                await asyncio.sleep(0.01)
            return passed, time.monotonic() - revoked_at
        finally:
            await live.close()

    passed, after = asyncio.run(run())
    assert after < 0.7
    # It passed meanwhile on the lease it held (a tenth of a second at 1000/s).
    assert 0 <= passed <= 100


def test_without_a_cache_revocation_is_at_once(store: RedisStore, redis_url: str) -> None:
    token, record = TokenStore(store).create("read", None, "uncached")

    async def run() -> tuple[object, object]:
        live = LiveStore.from_url(redis_url, store.keys.prefix)
        check = live.token_check(cache_seconds=0)
        try:
            first = await check.authenticate(token, 1000, 1000)
            TokenStore(store).revoke(record["id"])
            return first, await check.authenticate(token, 1000, 1000)
        finally:
            await live.close()

    first, second = asyncio.run(run())
    assert first == (record, 0) and second is None


def test_leases_never_pass_more_than_the_shared_bucket(store: RedisStore, redis_url: str) -> None:
    """Three checkers (three gateway processes) on one token, asking as fast as they can:
    what they let through in all is at most the burst plus the refill since the start."""
    token, _ = TokenStore(store).create("read", None, "limited")
    rate, burst = 200.0, 40

    async def one(check: object, until: float) -> tuple[int, int]:
        ok = limited = 0
        while time.monotonic() < until:
            found = await check.authenticate(token, rate, burst)  # type: ignore[attr-defined]
            assert found is not None
            if found[1] == 0:
                ok += 1
            else:
                limited += 1
        return ok, limited

    async def run() -> tuple[int, int, float]:
        lives = [LiveStore.from_url(redis_url, store.keys.prefix) for _ in range(3)]
        try:
            checks = [live.token_check(cache_seconds=1.0) for live in lives]
            start = time.monotonic()
            results = await asyncio.gather(*(one(c, start + 0.5) for c in checks))
            spent = time.monotonic() - start
            return sum(r[0] for r in results), sum(r[1] for r in results), spent
        finally:
            for live in lives:
                await live.close()

    ok, limited, spent = asyncio.run(run())
    assert limited > 0  # the bucket ran dry
    assert ok <= burst + rate * spent + 1
    # ... and not much stricter: leases left unused are at most one per checker.
    assert ok >= burst + rate * 0.5 - 3 * (rate * 0.1) - 20


def test_requests_arriving_together_share_one_lease(store: RedisStore, redis_url: str) -> None:
    """A thousand streams opened at once with one token: they wait for the one request
    asking Redis and share its lease, rather than each take a lease and empty the bucket."""
    token, _ = TokenStore(store).create("read", None, "together")

    async def run() -> list[int]:
        live = LiveStore.from_url(redis_url, store.keys.prefix)
        check = live.token_check(cache_seconds=1.0)
        try:
            found = await asyncio.gather(
                *(check.authenticate(token, 1000, 1000) for _ in range(300))
            )
            return [f[1] for f in found if f is not None]
        finally:
            await live.close()

    waits = asyncio.run(run())
    assert len(waits) == 300 and set(waits) == {0}
