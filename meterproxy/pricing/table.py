"""Prices from ``pricing.toml``, and the exact (Decimal) cost of a call.

Rates are USD per million tokens (the file format is in :mod:`meterproxy.pricing.file`). The cost
of one call, by the usage rules of :mod:`meterproxy.providers.usage`, at the rates in force when the call
started, in the long-context tier its input reaches:

    uncached input       * input
  + cache reads          * cache_read
  + 5-minute writes      * cache_write
  + 1-hour writes        * cache_write_1h
  + non-reasoning output * output
  + reasoning output     * reasoning        (reasoning is part of output; priced as output
                                             unless the model says otherwise)

An unknown model has no cost (None), never $0. Local providers cost 0. A cost the provider
reports itself (OpenRouter's ``usage.cost``) wins over the computed one.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timezone
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from meterproxy.errors import MeterproxyError
from meterproxy.money import to_picousd
from meterproxy.pricing.file import (
    LOCAL_PROVIDERS,
    ModelSpec,
    PeriodSpec,
    RatesSpec,
    locate,
    parse_text,
    peak_window,
    utc_start,
)
from meterproxy.providers.usage import Usage

MILLION = Decimal(1_000_000)
BUNDLED = "bundled pricing.toml"
_DATE_SUFFIX = re.compile(r"(?:-(\d{4}-\d{2}-\d{2}|\d{8})|@\d{8})$")
_BEGINNING = datetime.min.replace(tzinfo=UTC)

CostSource = Literal["computed", "provider_reported", "unpriced"]
NO_PRICE = "no price for this model"
NO_USAGE = "no usage reported"


@dataclass(frozen=True, slots=True)
class Rates:
    """USD per million tokens, one value per kind of token."""

    input: Decimal
    output: Decimal
    cache_read: Decimal
    cache_write: Decimal
    cache_write_1h: Decimal
    reasoning: Decimal

    @classmethod
    def from_spec(cls, spec: RatesSpec) -> Rates:
        cache_write = spec.cache_write if spec.cache_write is not None else spec.input
        return cls(
            input=spec.input,
            output=spec.output,
            cache_read=spec.cache_read if spec.cache_read is not None else spec.input,
            cache_write=cache_write,
            cache_write_1h=spec.cache_write_1h if spec.cache_write_1h is not None else cache_write,
            reasoning=spec.reasoning if spec.reasoning is not None else spec.output,
        )

    def cost(self, usage: Usage) -> Decimal:
        """The exact cost of ``usage`` at these rates, in USD."""
        # Clamped so that a parser's inconsistent counts can never make a negative cost.
        cache_1h = min(usage.cache_write_1h_tokens, usage.cache_write_tokens)
        uncached = max(usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens, 0)
        reasoning = min(usage.reasoning_tokens, usage.output_tokens)
        total = (
            uncached * self.input
            + usage.cache_read_tokens * self.cache_read
            + (usage.cache_write_tokens - cache_1h) * self.cache_write
            + cache_1h * self.cache_write_1h
            + (usage.output_tokens - reasoning) * self.output
            + reasoning * self.reasoning
        )
        return total / MILLION

    def times(self, factor: Decimal) -> Rates:
        return Rates(*(getattr(self, name) * factor for name in RATE_FIELDS))

    def as_dict(self) -> dict[str, str]:
        return {name: _plain(getattr(self, name)) for name in RATE_FIELDS}


RATE_FIELDS = ("input", "output", "cache_read", "cache_write", "cache_write_1h", "reasoning")
FREE = Rates(*(Decimal(0),) * len(RATE_FIELDS))


@dataclass(frozen=True, slots=True)
class Tier:
    """Rates for a call whose input (cache included) is more than ``above`` tokens."""

    above: int
    rates: Rates


@dataclass(frozen=True, slots=True)
class Period:
    """The prices of a model from ``since`` (None: from the start) until the next period."""

    since: datetime | None
    rates: Rates
    tiers: tuple[Tier, ...] = ()

    def tier_for(self, input_tokens: int) -> Tier | None:
        reached = [tier for tier in self.tiers if input_tokens > tier.above]
        return max(reached, key=lambda tier: tier.above) if reached else None


@dataclass(frozen=True, slots=True)
class Peak:
    """A time-of-day window in which every rate is multiplied (DeepSeek's peak hours)."""

    offset: timezone
    days: frozenset[int]
    spans: tuple[tuple[int, int], ...]
    multiplier: Decimal
    text: str

    def applies(self, when: datetime) -> bool:
        local = when.astimezone(self.offset)
        minute = local.hour * 60 + local.minute
        return local.weekday() in self.days and any(start <= minute < end for start, end in self.spans)


@dataclass(frozen=True, slots=True)
class Entry:
    """One model's prices, as defined in one file."""

    name: str
    provider: str
    periods: tuple[Period, ...]
    """Oldest first."""
    aliases: tuple[str, ...]
    source: str
    line: int | None
    peak: Peak | None = None

    def period_at(self, when: datetime) -> Period:
        """The period in force at ``when``; before the first ``since``, the first period."""
        current = self.periods[0]
        for period in self.periods[1:]:
            if period.since is not None and period.since <= when:
                current = period
        return current

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}" if self.line else self.source


@dataclass(frozen=True, slots=True)
class Match:
    """How a model name reached a price entry."""

    entry: Entry
    asked: str
    how: str


@dataclass(frozen=True, slots=True)
class Price:
    """The rates that price one call, and why they apply."""

    match: Match
    period: Period
    tier: Tier | None
    peak: bool
    rates: Rates
    provenance: str
    """What the ``rates`` column keeps (JSON): the rates and how they were chosen."""

    def cost(self, usage: Usage) -> Decimal:
        return self.rates.cost(usage)


@dataclass(frozen=True, slots=True)
class CallCost:
    """The cost columns of one ledger row."""

    cost: Decimal | None
    source: CostSource
    price: Price | None = None
    version: str | None = None
    reason: str | None = None
    """Why a call is unpriced."""

    def columns(self) -> dict[str, Any]:
        return {
            "cost_usd": float(self.cost) if self.cost is not None else None,
            "cost_picousd": to_picousd(self.cost) if self.cost is not None else None,
            "cost_source": self.source,
            "pricing_version": self.version,
            "rates": self.price.provenance if self.price is not None else None,
        }



class PriceTable:
    """The effective price table: the bundled file, overlaid by the user's.

    A user entry replaces the bundled entry of the same name (all its periods).
    """

    def __init__(self, entries: dict[str, Entry], version: str, files: list[tuple[str, int]]):
        self.entries = entries
        self.version = version
        self.files = files
        """(file, number of models) for each file read, bundled first."""
        self._names: dict[str, str] = {key: key for key in entries}
        for key, entry in entries.items():
            for alias in entry.aliases:
                self._names.setdefault(alias, key)
        self._matches: dict[tuple[str, str], Match | None] = {}
        self._provenance: dict[tuple[int, int, int, bool], str] = {}

    @classmethod
    def load(cls, user_file: Path | None = None) -> PriceTable:
        """The bundled prices, then ``user_file`` if it exists."""
        bundled = resources.files("meterproxy.pricing").joinpath("pricing.toml").read_text(encoding="utf-8")
        sources = [(BUNDLED, bundled)]
        if user_file is not None and user_file.exists():
            sources.append((str(user_file), read_text(user_file)))
        return cls.from_texts(sources)

    @classmethod
    def from_texts(cls, sources: list[tuple[str, str]]) -> PriceTable:
        entries: dict[str, Entry] = {}
        files = []
        for source, text in sources:
            spec = parse_text(source, text)
            files.append((source, len(spec.models)))
            for name, model in spec.models.items():
                entries[name.lower()] = _entry(name, model, source, text)
        # A user entry may take a name that a bundled entry uses as an alias: the entry wins.
        for key, entry in entries.items():
            if any(alias in entries for alias in entry.aliases):
                entries[key] = replace(entry, aliases=tuple(a for a in entry.aliases if a not in entries))
        return cls(entries, _version(entries), files)

    def lookup(self, provider: str, model: str | None) -> Match | None:
        """The entry for a model as a provider names it, and how the name matched."""
        if not model:
            return None
        cache_key = (provider, model)
        if cache_key not in self._matches:
            self._matches[cache_key] = self._match(provider.lower(), model.strip().lower())
        return self._matches[cache_key]

    def _match(self, provider: str, asked: str) -> Match | None:
        for candidate, how in _candidates(provider, asked):
            key = self._names.get(candidate)
            if key is not None:
                if key != candidate:
                    how = f"{how}; alias of {key}" if how != "exact name" else f"alias of {key}"
                return Match(self.entries[key], asked, how)
        return None

    def price(self, provider: str, model: str | None, when: datetime, input_tokens: int = 0) -> Price | None:
        """The rates for a call started at ``when`` with ``input_tokens`` of input; None when unpriced."""
        if provider in LOCAL_PROVIDERS:
            entry = Entry(f"{provider} (local)", provider, (Period(None, FREE),), (), "built in", None)
            match = Match(entry, model or "", "local provider: free")
            return Price(match, entry.periods[0], None, False, FREE, _provenance(match, entry.periods[0], None, False, FREE))
        match = self.lookup(provider, model)
        if match is None:
            return None
        period = match.entry.period_at(when)
        tier = period.tier_for(input_tokens)
        rates = tier.rates if tier else period.rates
        peak = bool(match.entry.peak and match.entry.peak.applies(when))
        if peak:
            rates = rates.times(match.entry.peak.multiplier)  # type: ignore[union-attr]
        key = (id(match), id(period), id(tier), peak)
        if key not in self._provenance:
            self._provenance[key] = _provenance(match, period, tier, peak, rates)
        return Price(match, period, tier, peak, rates, self._provenance[key])

    def assess(
        self, *, provider: str, model: str | None, usage: Usage, usage_source: str, outcome: str,
        started_at: datetime, provider_cost: Decimal | None = None,
    ) -> CallCost:
        """The cost of one call and where it comes from."""
        if provider_cost is not None:
            return CallCost(provider_cost, "provider_reported")
        price = self.price(provider, model, started_at, usage.input_tokens)
        if price is not None and price.rates == FREE:
            return CallCost(Decimal(0), "computed", price, self.version)
        if usage_source == "none":
            if outcome in ("error", "blocked"):
                return CallCost(Decimal(0), "computed", None, self.version)  # a failed call is not billed
            return CallCost(None, "unpriced", reason=NO_USAGE)
        if price is None:
            return CallCost(None, "unpriced", reason=NO_PRICE)
        return CallCost(price.cost(usage), "computed", price, self.version)

    def suggestions(self, model: str) -> list[str]:
        """Priced names close to ``model`` (for error messages)."""
        return difflib.get_close_matches(model.lower(), list(self._names), n=3, cutoff=0.6)


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise MeterproxyError(f"{path}: not UTF-8 text") from e
    except OSError as e:
        raise MeterproxyError(f"{path}: cannot read: {e.strerror}") from e



def _provenance(match: Match, period: Period, tier: Tier | None, peak: bool, rates: Rates) -> str:
    data: dict[str, Any] = {"model": match.entry.name, "matched": match.how}
    if period.since is not None:
        data["since"] = period.since.date().isoformat()
    if tier is not None:
        data["above"] = tier.above
    if peak:
        data["peak"] = True
    return json.dumps(data | rates.as_dict())


def _candidates(provider: str, model: str) -> list[tuple[str, str]]:
    """Names to try, best first, each with how it relates to the name asked."""
    found: list[tuple[str, str]] = [(f"{provider}/{model}", f"{provider} price of {model}")] if provider else []
    found.append((model, "exact name"))
    first = len(found) - 1
    if "/" in model:
        bare = model.rsplit("/", 1)[1]
        found.append((bare, f"prefix {model[: -len(bare)]!r} removed"))
    for name, how in list(found[first:]):
        undated = _DATE_SUFFIX.sub("", name)
        if undated != name:
            found.append((undated, _also(how, "date suffix removed")))
    for name, how in list(found[first:]):
        if name.startswith("claude-") and "." in name:  # OpenRouter: claude-sonnet-4.5
            found.append((name.replace(".", "-"), _also(how, "dots read as dashes")))
    return found


def _also(how: str, more: str) -> str:
    return more if how == "exact name" else f"{how}, {more}"


def _entry(name: str, spec: ModelSpec, source: str, text: str) -> Entry:
    periods = sorted([_period(spec), *map(_period, spec.periods)], key=lambda p: p.since or _BEGINNING)
    peak = None
    if spec.peak is not None:
        offset, days, spans = peak_window(spec.peak)
        description = f"{', '.join(spec.peak.days)} {', '.join(spec.peak.hours)} UTC{spec.peak.utc_offset}"
        peak = Peak(offset, days, spans, spec.peak.multiplier, description)
    return Entry(
        name=name.lower(),
        provider=spec.provider,
        periods=tuple(periods),
        aliases=tuple(a.lower() for a in spec.aliases),
        source=source,
        line=locate(text, ("models", name)),
        peak=peak,
    )


def _period(spec: PeriodSpec) -> Period:
    tiers = tuple(sorted((Tier(t.above, Rates.from_spec(t)) for t in spec.tiers), key=lambda t: t.above))
    return Period(utc_start(spec.since), Rates.from_spec(spec), tiers)


def _version(entries: dict[str, Entry]) -> str:
    """A hash of the effective table (not of the files' text: comments do not change it)."""
    canonical = {
        key: {
            "aliases": list(entry.aliases),
            "peak": [entry.peak.text, str(entry.peak.multiplier)] if entry.peak else None,
            "periods": [
                {
                    "since": period.since.isoformat() if period.since else None,
                    "rates": period.rates.as_dict(),
                    "tiers": [[tier.above, tier.rates.as_dict()] for tier in period.tiers],
                }
                for period in entry.periods
            ],
        }
        for key, entry in sorted(entries.items())
    }
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()[:12]


def _plain(value: Decimal) -> str:
    """A rate as plain decimal text without trailing zeros: 3, 0.3, 0.0028."""
    return format(value.normalize(), "f")
