"""Cost maths: the one place where USD amounts become integers.

Amounts arrive as JSON numbers and are parsed as :class:`~decimal.Decimal` from their
text (never through ``float``). They are stored as integer micro-dollars (1 USD =
1,000,000 micro). The single rounding rule: round half to even at the sixth decimal.
The upstream reports at most six decimals, so in practice nothing is rounded; the rule
only fixes what happens if it ever sends more.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

MICRO_PER_USD = 1_000_000
_MICRO = Decimal("0.000001")


def to_micro(amount: Decimal | int | str) -> int:
    """Convert a USD amount to integer micro-dollars (half-even at 6 decimals)."""
    value = Decimal(amount) if not isinstance(amount, Decimal) else amount
    return int(value.quantize(_MICRO, rounding=ROUND_HALF_EVEN) * MICRO_PER_USD)


def from_micro(micro: int) -> Decimal:
    """Convert integer micro-dollars back to an exact USD Decimal."""
    return (Decimal(micro) / MICRO_PER_USD).quantize(_MICRO)


def format_usd(micro: int) -> str:
    """Human form, e.g. ``$1.234567``."""
    return f"${from_micro(micro)}"
