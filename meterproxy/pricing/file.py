"""Reading ``pricing.toml`` files: the schema, and errors that name the file, line and field.

The format (USD per million tokens; every field but ``provider``, ``input`` and ``output`` is
optional)::

    [models."claude-sonnet-4-5"]
    provider = "anthropic"
    input = 3.00
    output = 15.00
    cache_read = 0.30        # default: input
    cache_write = 3.75       # 5-minute writes; default: input
    cache_write_1h = 6.00    # 1-hour (OpenAI: 12-hour) writes; default: cache_write
    reasoning = 15.00        # default: output
    since = 2025-09-29       # when this price took effect; default: always
    aliases = ["claude-sonnet-4-5-latest"]

    [[models."claude-sonnet-4-5".tiers]]   # long context: a prompt of more than `above`
    above = 200_000                        # input tokens (cache included) pays these rates
    input = 6.00                           # for every token of the call
    output = 22.50

    [[models."claude-sonnet-4-5".periods]] # other prices of the model, past or scheduled, each
    since = 2025-01-01                     # with its own rates and tiers; at most one period
    input = 3.50                           # (the table above included) may leave out `since`
    output = 16.00

    [models."deepseek-flash".peak]         # a time-of-day surcharge: all rates x multiplier
    utc_offset = "+08:00"
    days = ["mon", "tue", "wed", "thu", "fri"]
    hours = ["09:00-12:00", "14:00-18:00"]
    multiplier = 2

    [models."gpt-5".fees]                  # per-use server tools: USD per 1,000 uses
    web_search = 10.00

    [models."gpt-5".multipliers.service_tier]   # billing context the response reports:
    priority = 2                                # every token rate x factor
    flex = 0.5

    [fees.anthropic]                       # a provider's defaults for all its models (a model's
    web_search = 10.00                     # own fees and multipliers win, key by key)

    [multipliers.anthropic.inference_geo]
    us = 1.1

Floats are read as exact decimals (``parse_float=Decimal``), never through binary floats.
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import FrozenInstanceError, dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Annotated, Any, Literal

from meterproxy.errors import MeterproxyError
from meterproxy.schema import Bounds, SchemaError, Section, rule

Rate = Annotated[Decimal, Bounds(finite=True, ge=0)]
LOCAL_PROVIDERS = frozenset({"ollama", "lmstudio", "llamacpp", "vllm", "local"})
"""Providers whose calls cost nothing."""
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class _Frozen(Section):
    """A section whose fields are never reassigned (a price entry once read)."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in self.__dict__:  # set once, by __init__
            raise FrozenInstanceError(f"cannot assign to field {name!r}")
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")


@dataclass(kw_only=True, repr=False, eq=False)
class RatesSpec(_Frozen):
    input: Rate
    output: Rate
    cache_read: Rate | None = None
    cache_write: Rate | None = None
    cache_write_1h: Rate | None = None
    reasoning: Rate | None = None


@dataclass(kw_only=True, repr=False, eq=False)
class TierSpec(RatesSpec):
    above: int = rule(gt=0)


@dataclass(kw_only=True, repr=False, eq=False)
class PeakSpec(_Frozen):
    utc_offset: str = rule(pattern=r"^[+-]\d{2}:\d{2}$")
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = rule(min_length=1)
    hours: list[Annotated[str, Bounds(pattern=r"^\d{2}:\d{2}-\d{2}:\d{2}$")]] = rule(min_length=1)
    multiplier: Annotated[Decimal, Bounds(finite=True, gt=0)]


@dataclass(kw_only=True, repr=False, eq=False)
class PeriodSpec(RatesSpec):
    since: date | datetime | None = None
    tiers: list[TierSpec] = field(default_factory=list)
    peak: PeakSpec | None = None
    """A period's own time-of-day window (an off-peak discount is a multiplier below 1); the
    model's ``peak`` applies to every period without one."""


Factor = Annotated[Decimal, Bounds(finite=True, gt=0)]
Fees = dict[str, Rate]
"""Tool name -> USD per 1,000 uses."""
Multipliers = dict[str, dict[str, Factor]]
"""Context key (``service_tier``, ``inference_geo``, ``endpoint``) -> its value -> factor."""


@dataclass(kw_only=True, repr=False, eq=False)
class ModelSpec(PeriodSpec):
    provider: str = rule(min_length=1)
    aliases: list[str] = field(default_factory=list)
    periods: list[PeriodSpec] = field(default_factory=list)
    fees: Fees = field(default_factory=dict)
    multipliers: Multipliers = field(default_factory=dict)


@dataclass(kw_only=True, repr=False, eq=False)
class FileSpec(_Frozen):
    models: dict[str, ModelSpec] = field(default_factory=dict)
    fees: dict[str, Fees] = field(default_factory=dict)
    """Provider -> its default per-use fees."""
    multipliers: dict[str, Multipliers] = field(default_factory=dict)
    """Provider -> its default multipliers."""


class PriceFileError(MeterproxyError):
    """A price file with problems: every one of them, each naming the file, line and field."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        if len(problems) == 1:
            super().__init__(problems[0])
        else:
            super().__init__(f"{source}: {len(problems)} problems:\n" + "\n".join(f"  {p}" for p in problems))


def parse_text(source: str, text: str) -> FileSpec:
    """Parse and validate one price file; its problems, all of them, raise :class:`PriceFileError`."""
    try:
        doc = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        line = re.search(r"\(at line (\d+), column \d+\)", message)
        where = f"{source}:{line.group(1)}" if line else source
        raise PriceFileError(source, [f"{where}: {re.sub(r' \(at line .*\)$', '', message)}"]) from e
    problems: list[tuple[int, str]] = []

    def problem(loc: Sequence[str | int], message: str) -> None:
        problems.append((locate(text, loc) or 0, str(field_error(source, text, loc, message))))

    base = FileSpec()
    try:  # everything but the models (provider fees and multipliers), validated as a whole
        base = FileSpec.load({k: v for k, v in doc.items() if k != "models"})
    except SchemaError as e:
        for loc, message in e.problems:
            problem(loc, _message(message))
    raw_models = doc.get("models", {})
    if not isinstance(raw_models, dict):
        problem(("models",), "expected tables of models ([models.\"NAME\"])")
        raw_models = {}
    models: dict[str, ModelSpec] = {}
    for name, raw in raw_models.items():  # each model on its own: one bad entry hides no other problem
        try:
            models[name] = ModelSpec.load(raw)
        except SchemaError as e:
            for loc, message in e.problems:
                problem(("models", name, *loc), _message(message))
    spec = replace(base, models=models)
    _check_consistency(spec, problem)
    if problems:
        raise PriceFileError(source, [message for _, message in sorted(problems, key=lambda p: p[0])])
    return spec


def field_error(source: str, text: str, loc: Sequence[str | int], message: str) -> MeterproxyError:
    line = locate(text, loc)
    where = f"{source}:{line}" if line else source
    return MeterproxyError(f"{where}: {'.'.join(str(p) for p in loc)}: {message}")


def _message(message: str) -> str:
    if message == "Field required":
        return "required field is missing"
    if message == "Extra inputs are not permitted":
        return "unknown field (typo?)"
    return message


def known_providers() -> frozenset[str]:
    """The names a price entry's ``provider`` may take: every route's provider, and the local ones."""
    from meterproxy.providers.names import PROVIDER_NAMES  # the names only: importing the parsers costs a start-up

    return PROVIDER_NAMES | LOCAL_PROVIDERS


def _check_consistency(spec: FileSpec, problem: Callable[[Sequence[str | int], str], None]) -> None:
    """What the schema cannot say: known providers; unique dates, tiers and names."""
    providers = known_providers()
    names: dict[str, str] = {}
    for name, model in spec.models.items():
        key = name.lower()
        if key in names:
            problem(("models", name), f"defined twice (also as {names[key]!r})")
        names[key] = name
        if model.provider not in providers:
            import difflib  # only for a bad provider

            close = difflib.get_close_matches(model.provider, sorted(providers), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(providers))}"
            problem(("models", name, "provider"), f"unknown provider {model.provider!r} ({hint})")
    for name, model in spec.models.items():
        seen_since: set[datetime | None] = set()
        periods: list[tuple[tuple[str | int, ...], Any]] = [(("models", name), model)]
        periods += [(("models", name, "periods", i), p) for i, p in enumerate(model.periods)]
        for loc, period in periods:
            since = utc_start(period.since)
            if since in seen_since:
                what = "another period of this model has the same date" if since else "only one period may leave out 'since'"
                problem((*loc, "since"), what)
            seen_since.add(since)
            aboves = [tier.above for tier in period.tiers]
            if len(set(aboves)) != len(aboves):
                problem((*loc, "tiers"), "two tiers have the same 'above'")
        for i, alias in enumerate(model.aliases):
            other = names.get(alias.lower())
            if other is not None:
                problem(("models", name, "aliases", i), f"{alias!r} is already a model")
            names[alias.lower()] = name
        for loc, period in periods:
            if period.peak is None:
                continue
            for i, span in enumerate(period.peak.hours):
                start, end = (_minutes(t) for t in span.split("-"))
                if not 0 <= start < end <= 24 * 60:
                    problem((*loc, "peak", "hours", i), "expected HH:MM-HH:MM within a day")
            if abs(_minutes(period.peak.utc_offset[1:])) >= 24 * 60:
                problem((*loc, "peak", "utc_offset"), "expected +HH:MM within a day")


def utc_start(when: date | datetime | None) -> datetime | None:
    """A ``since`` value as an aware UTC datetime (a date or a datetime without offset is UTC)."""
    if when is None:
        return None
    if not isinstance(when, datetime):
        when = datetime.combine(when, time())
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def _minutes(hhmm: str) -> int:
    """Minutes in HH:MM; an impossible minute (HH:75) counts as the end of time, never accepted."""
    hours, minutes = (int(part) for part in hhmm.split(":"))
    return hours * 60 + minutes if minutes < 60 else 10**6


def _offset(text: str) -> timezone:
    sign = -1 if text.startswith("-") else 1
    return timezone(sign * timedelta(minutes=_minutes(text[1:])))


def peak_window(spec: PeakSpec) -> tuple[timezone, frozenset[int], tuple[tuple[int, int], ...]]:
    """The peak window as (offset, weekday numbers, minute ranges)."""
    spans = tuple(tuple(_minutes(t) for t in span.split("-")) for span in spec.hours)
    return _offset(spec.utc_offset), frozenset(WEEKDAYS.index(d) for d in spec.days), spans  # type: ignore[return-value]


# --- where a field is -------------------------------------------------------------------------

_KEY_PART = r'(?:"(?:[^"\\]|\\.)*"|\'[^\']*\'|[A-Za-z0-9_-]+)'
_HEADER = re.compile(rf"^\s*(\[\[?)\s*({_KEY_PART}(?:\s*\.\s*{_KEY_PART})*)\s*\]\]?\s*(?:#.*)?$")
_ASSIGN = re.compile(rf"^\s*({_KEY_PART}(?:\s*\.\s*{_KEY_PART})*)\s*=")


def _split_key(key: str) -> list[str]:
    parts = re.findall(_KEY_PART, key)
    return [p[1:-1] if p[:1] in "\"'" else p for p in parts]


def locate(text: str, loc: Sequence[str | int]) -> int | None:
    """The 1-based line of the table or key at ``loc`` (a validation error's path), or the
    nearest enclosing one that can be found. Array-of-tables entries are counted in order."""
    positions = _positions(text)
    wanted = tuple(loc)
    for end in range(len(wanted), 0, -1):
        if wanted[:end] in positions:
            return positions[wanted[:end]]
        inside = [line for path, line in positions.items() if path[:end] == wanted[:end]]
        if inside:  # only sub-tables are written out ([models."x".peak]): the first of them
            return min(inside)
    return None


@functools.lru_cache(maxsize=4)
def _positions(text: str) -> dict[tuple[str | int, ...], int]:
    """Every table and key path of a file -> its first line (one pass, kept for the next lookups)."""
    positions: dict[tuple[str | int, ...], int] = {}
    counters: dict[tuple[str | int, ...], int] = {}
    current: tuple[str | int, ...] = ()
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            *parents, last = _split_key(header.group(2))
            path: tuple[str | int, ...] = ()
            for part in parents:
                path = _resolve(positions, (*path, part))
            path = (*path, last)
            if header.group(1) == "[[":
                index = counters.get(path, 0)
                counters[path] = index + 1
                path = (*path, index)
            current = path
            positions.setdefault(path, number)
            continue
        assign = _ASSIGN.match(line)
        if assign:
            positions.setdefault((*current, *_split_key(assign.group(1))), number)
    return positions


def _resolve(positions: dict[tuple[str | int, ...], int], path: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """A header path through arrays of tables points at their latest element."""
    index = -1
    while (*path, index + 1) in positions:
        index += 1
    return (*path, index) if index >= 0 else path
