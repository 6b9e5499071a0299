"""Money: costs are exact Decimals, stored as integer picodollars (1e-12 USD), shown as USD."""

from __future__ import annotations

from decimal import Decimal

PICO = Decimal("1e-12")


def to_picousd(cost: Decimal) -> int:
    """USD as an integer count of 1e-12 USD (half-even rounding below that)."""
    return int((cost / PICO).to_integral_value())


def usd(picousd: int | Decimal) -> Decimal:
    """Picodollars as exact USD."""
    return Decimal(picousd) * PICO


def usd_float(picousd: int | Decimal) -> float:
    """Picodollars as USD in a float (JSON output)."""
    return float(usd(picousd))


def exact_usd(picousd: int) -> str:
    """Picodollars as an exact decimal string of dollars (CSV output)."""
    return format(usd(picousd).normalize(), "f")
