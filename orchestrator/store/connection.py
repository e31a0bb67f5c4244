"""Redis connections, and the error callers outside the store catch."""

from __future__ import annotations

from redis.exceptions import RedisError as StoreError

__all__ = ["StoreError"]
