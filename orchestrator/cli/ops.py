"""Operations commands (placeholder until written)."""

from typing import Any


def register(sub: Any) -> None:
    return None
