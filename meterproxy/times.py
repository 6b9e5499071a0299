"""Time in the ledger: ISO-8601 UTC text with milliseconds, parsed and printed in one place.

Ledger timestamps look like ``2026-11-22T09:15:02.123Z``: they sort as text and index well.
:func:`now` is the clock of every command that asks "what is today": ``METERPROXY_NOW`` (an ISO
time) sets it, so reports and budgets can be reproduced and tested for any date.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

NOW_ENV = "METERPROXY_NOW"


def iso_utc(timestamp: float) -> str:
    """Epoch seconds as ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_iso(text: str) -> datetime:
    """An ISO time (``Z`` allowed) as a datetime; naive when the text gives no offset."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def at_utc(timestamp: float | str) -> datetime:
    """An epoch timestamp or a ledger ``started_at`` as an aware UTC datetime."""
    if isinstance(timestamp, str):
        return parse_iso(timestamp).astimezone(UTC)
    return datetime.fromtimestamp(timestamp, UTC)


def local_time(iso: str) -> str:
    """A ledger timestamp in the local zone, to the second (for tables)."""
    return parse_iso(iso).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def now() -> datetime:
    """The current time (aware, UTC), or ``METERPROXY_NOW`` when set."""
    fixed = os.environ.get(NOW_ENV)
    if not fixed:
        return datetime.now(UTC)
    try:
        moment = parse_iso(fixed)
    except ValueError:
        raise ValueError(f"{NOW_ENV}={fixed!r} is not an ISO time") from None
    return (moment if moment.tzinfo else moment.astimezone()).astimezone(UTC)


def local_zone() -> tzinfo:
    """The local zone with its DST rules: ``$TZ``, else ``/etc/localtime``, else today's offset."""
    key = os.environ.get("TZ", "").lstrip(":")
    if not key:
        key = str(Path("/etc/localtime").resolve()).partition("/zoneinfo/")[2]
    try:
        if key:
            return ZoneInfo(key)
        with Path("/etc/localtime").open("rb") as f:
            return ZoneInfo.from_file(f, key="localtime")
    except (OSError, ValueError, ZoneInfoNotFoundError):
        # A POSIX TZ string or no zone database: the C library's current offset, without DST rules.
        return datetime.now().astimezone().tzinfo or UTC
