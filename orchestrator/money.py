"""Cost maths: the one place where USD amounts become integers.

Amounts arrive as JSON numbers and are parsed as :class:`~decimal.Decimal` from their
text (never through ``float``). They are stored as integer micro-dollars (1 USD =
1,000,000 micro). The single rounding rule: round half to even at the sixth decimal.
The upstream reports at most six decimals, so in practice nothing is rounded; the rule
only fixes what happens if it ever sends more.

:func:`to_micro` is exact for any finite amount below 10**21 USD and raises
:class:`ValueError` (never :class:`decimal.InvalidOperation`) for anything else; how
large an upstream figure may be is :mod:`orchestrator.ledger`'s ceiling, far below.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Context, Decimal

MICRO_PER_USD = 1_000_000
_MICRO = Decimal("0.000001")
#: The largest power of ten :func:`to_micro` converts (amounts are below 10**21 USD).
_MAX_DIGITS = 20


#: Enough digits for any amount :func:`to_micro` takes, in micro-dollars, exactly.
_EXACT = Context(prec=_MAX_DIGITS + 10)


def to_micro(amount: Decimal | int | str) -> int:
    """Convert a USD amount to integer micro-dollars (half-even at 6 decimals)."""
    value = Decimal(amount) if not isinstance(amount, Decimal) else amount
    if not value.is_finite():
        raise ValueError(f"amount {value} is not a finite number")
    if value and value.adjusted() > _MAX_DIGITS:
        raise ValueError(f"amount {value} is too large")
    # Exact: at most 21 digits before the point, 6 after (one context for every call).
    micro = value.quantize(_MICRO, rounding=ROUND_HALF_EVEN, context=_EXACT)
    return int(_EXACT.multiply(micro, MICRO_PER_USD))


def from_micro(micro: int) -> Decimal:
    """Convert integer micro-dollars back to an exact USD Decimal."""
    return (Decimal(micro) / MICRO_PER_USD).quantize(_MICRO)


def format_usd(micro: int) -> str:
    """Human form, e.g. ``$1.234567``."""
    return f"${from_micro(micro)}"
