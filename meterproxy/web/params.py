"""Query parameters of the API, read into the reports' types; anything wrong is a :class:`BadRequest`."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, tzinfo

from starlette.datastructures import QueryParams

from meterproxy.reports.periods import Period, PeriodChoiceError, choose_period, zone_named
from meterproxy.reports.query import FILTERS, Filters

PERIOD = ("today", "yesterday", "last", "from", "to", "month", "tz", "utc")
ALWAYS = ("token",)
"""Accepted by every endpoint (the token gate reads it)."""

_TRUE, _FALSE = ("", "1", "true", "yes", "on"), ("0", "false", "no", "off")


class BadRequest(Exception):
    """A bad parameter: answered with 400 and ``{"error": message}``."""


def check_known(params: QueryParams, allowed: Iterable[str]) -> None:
    allowed = set(allowed) | set(ALWAYS)
    for name in params:
        if name not in allowed:
            raise BadRequest(f"unknown parameter {name!r} (expected one of: {', '.join(sorted(allowed - {'token'}))})")


def one(params: QueryParams, name: str) -> str | None:
    """The value of a parameter given at most once (None when absent)."""
    values = params.getlist(name)
    if len(values) > 1:
        raise BadRequest(f"give {name!r} once")
    return values[0] if values else None


def flag(params: QueryParams, name: str) -> bool:
    value = one(params, name)
    if value is None or value.lower() in _FALSE:
        return False
    if value.lower() in _TRUE:
        return True
    raise BadRequest(f"{name!r} must be true or false, got {value!r}")


def integer(params: QueryParams, name: str, default: int | None, low: int, high: int) -> int | None:
    value = one(params, name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise BadRequest(f"{name!r} must be a whole number, got {value!r}") from None
    if not low <= number <= high:
        raise BadRequest(f"{name!r} must be between {low} and {high}, got {number}")
    return number


def choice(params: QueryParams, name: str, choices: Iterable[str], default: str | None) -> str | None:
    value = one(params, name) or default
    if value is not None and value not in choices:
        raise BadRequest(f"{name!r} must be one of {', '.join(choices)}, got {value!r}")
    return value


def filters(params: QueryParams, aliases: dict[str, str] | None = None) -> Filters:
    """The ``calls``/``report`` filters (repeatable; globs allowed); empty values are ignored.
    ``aliases`` maps other parameter names to filters (``agentId`` -> ``agent``)."""
    values: dict[str, list[str]] = {name: [] for name in FILTERS}
    for name, filter_name in {**{f: f for f in FILTERS}, **(aliases or {})}.items():
        values[filter_name] += [v for v in params.getlist(name) if v]
    return Filters(**{name: tuple(dict.fromkeys(v)) for name, v in values.items()})


def zone(params: QueryParams) -> tzinfo:
    """``tz`` or ``utc``; else the server's local zone."""
    name, utc = one(params, "tz"), flag(params, "utc")
    if name and utc:
        raise BadRequest("tz and utc cannot be used together")
    try:
        return zone_named(name or None, utc)
    except ValueError as e:
        raise BadRequest(str(e)) from None


def period(params: QueryParams, now: datetime, today_by_default: bool) -> Period | None:
    """``report``'s period: ``today``, ``yesterday``, ``last=7d``, ``from``/``to``, ``month[=YYYY-MM]``."""
    try:
        return choose_period(
            today=flag(params, "today"), yesterday=flag(params, "yesterday"), last=one(params, "last"),
            from_=one(params, "from"), to=one(params, "to"), month=one(params, "month"),
            tz=one(params, "tz") or None, utc=flag(params, "utc"), now=now, today_by_default=today_by_default,
            dash="",
        )
    except PeriodChoiceError as e:
        raise BadRequest(f"{e.option}: {e}" if e.option else str(e)) from None
