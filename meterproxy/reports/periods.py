"""Report periods in a time zone: today, yesterday, the last N hours/days/weeks, a date range,
a calendar month; and the spans of constant UTC offset inside a period (for DST-exact days).

Days start at local midnight in the chosen zone, so a DST day has 23 or 25 hours. Invalid
input raises :class:`ValueError` with a message fit for the user.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from meterproxy.times import local_zone, parse_iso

_LAST = re.compile(r"(\d+)([hdw])")
_MONTH = re.compile(r"(\d{4})-(\d{2})")


@dataclass(frozen=True)
class Period:
    """``[start, end)``, two aware datetimes in ``zone``; ``label`` names it for people."""

    start: datetime
    end: datetime
    zone: tzinfo
    label: str


def zone_named(name: str | None, utc: bool = False) -> tzinfo:
    """``UTC``, a named IANA zone, or (neither given) the machine's local zone."""
    if utc:
        return UTC
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {name!r} (use an IANA name such as Europe/Paris)") from None
    return local_zone()


def zone_label(zone: tzinfo) -> str:
    return "UTC" if zone is UTC else str(getattr(zone, "key", None) or zone)


def midnight(day: date, zone: tzinfo) -> datetime:
    return datetime.combine(day, time(), tzinfo=zone)


def day_period(day: date, zone: tzinfo, label: str) -> Period:
    return Period(midnight(day, zone), midnight(day + timedelta(days=1), zone), zone, label)


def month_period(month: str | None, zone: tzinfo, now: datetime) -> Period:
    """A calendar month, ``YYYY-MM``, or the current one."""
    if month:
        match = _MONTH.fullmatch(month)
        if not match or not 1 <= int(match[2]) <= 12:
            raise ValueError(f"expected a month as YYYY-MM, got {month!r}")
        first = date(int(match[1]), int(match[2]), 1)
    else:
        first = now.astimezone(zone).date().replace(day=1)
    following = (first + timedelta(days=31)).replace(day=1)
    return Period(midnight(first, zone), midnight(following, zone), zone, first.strftime("%Y-%m"))


def last_period(spec: str, zone: tzinfo, now: datetime) -> Period:
    """``24h``: the last 24 hours; ``7d``/``2w``: since the same local time 7 days/2 weeks ago."""
    match = _LAST.fullmatch(spec.strip().lower())
    if not match or int(match[1]) == 0:
        raise ValueError(f"expected a positive number and a unit h, d or w (24h, 7d, 2w), got {spec!r}")
    count, unit = int(match[1]), match[2]
    end = now.astimezone(zone)
    try:
        if unit == "h":
            start = (end.astimezone(UTC) - timedelta(hours=count)).astimezone(zone)
        else:
            # Calendar arithmetic on the wall clock: 7 local days, whatever DST does in between.
            days = timedelta(days=count * (7 if unit == "w" else 1))
            start = (end.replace(tzinfo=None) - days).replace(tzinfo=zone)
    except OverflowError:
        raise ValueError(f"{spec!r} reaches back before the year 1") from None
    return Period(start, end, zone, f"last {count}{unit}")


def parse_moment(text: str, zone: tzinfo, *, end: bool = False) -> datetime:
    """``YYYY-MM-DD`` (local midnight; as an end, the midnight after it), or an ISO date-time,
    local unless it carries an offset or ``Z``."""
    text = text.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return midnight(day + timedelta(days=1) if end else day, zone)
        moment = parse_iso(text)
    except ValueError:
        raise ValueError(f"expected YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS][+HH:MM], got {text!r}") from None
    return moment.replace(tzinfo=zone) if moment.tzinfo is None else moment.astimezone(zone)


def range_period(start: str | None, end: str | None, zone: tzinfo, now: datetime) -> Period:
    """``--from``/``--to``: a missing start means the first call, a missing end means now."""
    first = parse_moment(start, zone) if start else datetime(2000, 1, 1, tzinfo=UTC).astimezone(zone)
    last = parse_moment(end, zone, end=True) if end else now.astimezone(zone)
    if first >= last:
        raise ValueError(f"the period would end ({last.isoformat()}) before it starts ({first.isoformat()})")
    label = f"{start or 'start'} to {end or 'now'}"
    return Period(first, last, zone, label)


def offset_spans(start: datetime, end: datetime, zone: tzinfo) -> list[tuple[datetime, datetime, timedelta]]:
    """Split ``[start, end)`` where the zone's UTC offset changes (DST): ``(from, to, offset)``."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    spans: list[tuple[datetime, datetime, timedelta]] = []
    span_start, offset = start, _offset(start, zone)
    probe = start
    while probe < end:
        step = min(probe + timedelta(hours=1), end)
        if _offset(step, zone) != offset and step < end:
            # Transitions fall on whole minutes: bisect the hour to the minute.
            low, high = probe, step
            while high - low > timedelta(minutes=1):
                middle = low + (high - low) / 2
                low, high = (middle, high) if _offset(middle, zone) == offset else (low, middle)
            change = high.replace(second=0, microsecond=0)
            spans.append((span_start, change, offset))
            span_start, offset = change, _offset(change, zone)
        probe = step
    spans.append((span_start, end, offset))
    return spans


def _offset(moment: datetime, zone: tzinfo) -> timedelta:
    return moment.astimezone(zone).utcoffset() or timedelta(0)


class PeriodChoiceError(ValueError):
    """A bad period choice; ``option`` names the option at fault (None: the options clash)."""

    def __init__(self, message: str, option: str | None = None):
        super().__init__(message)
        self.option = option


def choose_period(
    *, today: bool = False, yesterday: bool = False, last: str | None = None, from_: str | None = None,
    to: str | None = None, month: str | None = None, tz: str | None = None, utc: bool = False, now: datetime,
    today_by_default: bool, dash: str = "--",
) -> Period | None:
    """The period of ``report``'s options (``--today``, ``--last 7d``, ``--month``...), or of the
    same web parameters (``dash=""``); none chosen: today, or None. Raises :class:`PeriodChoiceError`."""
    if tz and utc:
        raise PeriodChoiceError(f"{dash}tz and {dash}utc cannot be used together")
    chosen = [name for name, given in (
        (f"{dash}today", today), (f"{dash}yesterday", yesterday), (f"{dash}last", last is not None),
        (f"{dash}from/{dash}to", from_ is not None or to is not None), (f"{dash}month", month is not None),
    ) if given]
    if len(chosen) > 1:
        raise PeriodChoiceError(f"choose one period, not {' and '.join(chosen)}")
    try:
        zone = zone_named(tz, utc)
    except ValueError as e:
        raise PeriodChoiceError(str(e), f"{dash}tz") from None
    local_day = now.astimezone(zone).date()
    period = None
    try:
        if today or (today_by_default and not chosen):
            period = day_period(local_day, zone, "today")
        elif yesterday:
            period = day_period(local_day - timedelta(days=1), zone, "yesterday")
        elif last is not None:
            period = last_period(last, zone, now)
        elif from_ is not None or to is not None:
            period = range_period(from_, to, zone, now)
        elif month is not None:
            period = month_period(month, zone, now)
        if period is not None:  # the ledger is queried in UTC: both ends must exist there too
            period.start.astimezone(UTC).timestamp(), period.end.astimezone(UTC).timestamp()
    except ValueError as e:
        raise PeriodChoiceError(str(e), chosen[0]) from None
    except OverflowError:
        raise PeriodChoiceError(OUT_OF_RANGE, chosen[0]) from None
    return period


OUT_OF_RANGE = "out of range: dates must lie between 0001-01-02 and 9999-12-30"
