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

Then, by what the response reports: every rate times the multipliers of its billing context
(``service_tier``, ``inference_geo``, a regional ``endpoint``), usage billed at another model's
rates (Anthropic's advisor) priced at that model's, and per-use server tool fees (USD per 1,000
uses) added.

An unknown model has no cost (None), never $0, unless ``genai-prices`` (pydantic's price
database, a wide net consulted only for models ``pricing.toml`` lacks) knows it. Local providers
cost 0. A cost the provider reports itself (OpenRouter's ``usage.cost``) wins over the computed one.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from meterproxy.errors import MeterproxyError
from meterproxy.money import to_picousd
from meterproxy.pricing.file import (
    LOCAL_PROVIDERS,
    Fees,
    ModelSpec,
    Multipliers,
    PeakSpec,
    PeriodSpec,
    RatesSpec,
    locate,
    parse_text,
    peak_window,
    utc_start,
)
from meterproxy.providers.usage import TOKEN_FIELDS, Usage

MILLION = Decimal(1_000_000)
BUNDLED = "bundled pricing.toml"
_DATE_SUFFIX = re.compile(r"(?:-(\d{4}-\d{2}-\d{2}|\d{8})|@\d{8})$")
_BEGINNING = datetime.min.replace(tzinfo=UTC)

CostSource = Literal["computed", "provider_reported", "unpriced", "genai-prices"]
NO_PRICE = "no price for this model"
THOUSAND = Decimal(1000)
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
    peak: Peak | None = None
    """This period's own time-of-day window (else the entry's applies)."""

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
    fees: Mapping[str, Decimal] = field(default_factory=dict)
    multipliers: Mapping[str, Mapping[str, Decimal]] = field(default_factory=dict)

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
class ModelCost:
    """The part of a call billed at one model's rates (a call spanning models has several)."""

    model: str
    usage: Usage
    cost: Decimal | None


@dataclass(frozen=True, slots=True)
class CallCost:
    """The cost columns of one ledger row."""

    cost: Decimal | None
    source: CostSource
    price: Price | None = None
    version: str | None = None
    reason: str | None = None
    """Why a call is unpriced."""
    provenance: str | None = None
    """The ``rates`` column when it says more than ``price.provenance`` (fees, multipliers, other models)."""
    models: tuple[ModelCost, ...] = ()
    """Cost per model, for a call billed at more than one model's rates."""

    def columns(self) -> dict[str, Any]:
        rates = self.provenance or (self.price.provenance if self.price is not None else None)
        return {
            "cost_usd": float(self.cost) if self.cost is not None else None,
            "cost_picousd": to_picousd(self.cost) if self.cost is not None else None,
            "cost_source": self.source,
            "pricing_version": self.version,
            "rates": rates,
        }


@dataclass(frozen=True, slots=True)
class Billing:
    """What a response says about its bill besides the usage of its model."""

    parts: Mapping[str, Usage] = field(default_factory=dict)
    """Usage billed at other models' rates, by model."""
    tool_uses: Mapping[str, int] = field(default_factory=dict)
    context: Mapping[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.parts or self.tool_uses or self.context)

    @classmethod
    def from_provenance(cls, rates: str | None, parts: Mapping[str, Usage] | None = None) -> Billing:
        """The billing facts a ``rates`` column kept (for repricing)."""
        try:
            data = json.loads(rates) if rates else {}
        except ValueError:
            data = {}
        data = data if isinstance(data, dict) else {}
        uses = {k: int(v["uses"]) for k, v in (data.get("fees") or {}).items() if isinstance(v, dict) and "uses" in v}
        context = {k: str(v) for k, v in (data.get("context") or {}).items()}
        return cls(parts or {}, uses, context)



class PriceTable:
    """The effective price table: the bundled file, overlaid by the user's.

    A user entry replaces the bundled entry of the same name (all its periods).
    """

    def __init__(
        self, entries: dict[str, Entry], version: str, files: list[tuple[str, int]],
        fees: Mapping[str, Fees] | None = None, multipliers: Mapping[str, Multipliers] | None = None,
        wide_net: bool = True,
    ):
        self.entries = entries
        self.version = version
        self.files = files
        self.fees: Mapping[str, Fees] = fees or {}
        """Provider -> its default per-use fees (USD per 1,000 uses)."""
        self.multipliers: Mapping[str, Multipliers] = multipliers or {}
        """Provider -> its default multipliers."""
        self.wide_net = wide_net
        """Price models this table lacks with genai-prices."""
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
        sources = [(BUNDLED, bundled_text())]
        if user_file is not None and user_file.exists():
            sources.append((str(user_file), read_text(user_file)))
        return cls.from_texts(sources)

    @classmethod
    def from_texts(cls, sources: list[tuple[str, str]]) -> PriceTable:
        entries: dict[str, Entry] = {}
        files = []
        fees: dict[str, dict[str, Decimal]] = {}
        multipliers: dict[str, dict[str, dict[str, Decimal]]] = {}
        for source, text in sources:
            spec = parse_text(source, text)
            files.append((source, len(spec.models)))
            for name, model in spec.models.items():
                entries[name.lower()] = _entry(name, model, source, text)
            for provider, provider_fees in spec.fees.items():
                fees.setdefault(provider.lower(), {}).update(provider_fees)
            for provider, keys in spec.multipliers.items():
                for key, values in keys.items():
                    multipliers.setdefault(provider.lower(), {}).setdefault(key, {}).update(values)
        # A user entry may take a name that a bundled entry uses as an alias: the entry wins.
        for key, entry in entries.items():
            if any(alias in entries for alias in entry.aliases):
                entries[key] = replace(entry, aliases=tuple(a for a in entry.aliases if a not in entries))
        return cls(entries, _version(entries, fees, multipliers), files, fees, multipliers)

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
        window = period.peak or match.entry.peak
        peak = bool(window and window.applies(when))
        if peak:
            rates = rates.times(window.multiplier)  # type: ignore[union-attr]
        key = (id(match), id(period), id(tier), peak)
        if key not in self._provenance:
            self._provenance[key] = _provenance(match, period, tier, peak, rates)
        return Price(match, period, tier, peak, rates, self._provenance[key])

    def assess(
        self, *, provider: str, model: str | None, usage: Usage, usage_source: str, outcome: str,
        started_at: datetime, provider_cost: Decimal | None = None, billing: Billing | None = None,
    ) -> CallCost:
        """The cost of one call and where it comes from. ``usage`` is the call's whole usage;
        ``billing.parts`` the part of it billed at other models' rates."""
        if provider_cost is not None:
            return CallCost(provider_cost, "provider_reported")
        billing = billing or Billing()
        own = _minus(usage, billing.parts.values())
        price = self.price(provider, model, started_at, own.input_tokens)
        if price is not None and price.rates == FREE:
            return CallCost(Decimal(0), "computed", price, self.version)
        if usage_source == "none":
            if outcome in ("error", "blocked"):
                return CallCost(Decimal(0), "computed", None, self.version)  # a failed call is not billed
            return CallCost(None, "unpriced", reason=NO_USAGE)
        if price is None:
            wide = self._wide_net(provider, model, started_at, own, billing)
            return wide or CallCost(None, "unpriced", reason=NO_PRICE)
        if not billing:
            return CallCost(price.cost(own), "computed", price, self.version)
        return self._with_billing(provider, model or price.match.entry.name, price, own, started_at, billing)

    def _with_billing(
        self, provider: str, model: str, price: Price, own: Usage, when: datetime, billing: Billing,
    ) -> CallCost:
        """A call's cost with its other models, multipliers and per-use fees."""
        entry = price.match.entry
        models = [ModelCost(model, own, price.cost(own))]
        for other, part in billing.parts.items():
            other_price = self.price(provider, other, when, part.input_tokens)
            if other_price is None:
                return CallCost(None, "unpriced", reason=f"no price for model {other!r} (billed in this call)")
            models.append(ModelCost(other, part, other_price.cost(part)))
        factor, applied = self._multiplier(provider, entry, billing.context)
        fees, fee_detail = self._fees(provider, entry, billing.tool_uses)
        if factor != 1 or fees:
            share = [fees / len(models)] * len(models)  # fees split evenly, for the cost per model
            models = [replace(m, cost=m.cost * factor + s) for m, s in zip(models, share)]  # type: ignore[operator]
        total = sum((m.cost for m in models), Decimal(0))  # type: ignore[misc]
        data = json.loads(price.provenance)
        if applied:
            data["multiplier"] = _plain(factor)
        if billing.context:
            data["context"] = dict(billing.context)
        if fee_detail:
            data["fees"] = fee_detail
        if len(models) > 1:
            data["models"] = {m.model: _plain(m.cost) for m in models}  # type: ignore[arg-type]
        return CallCost(
            total, "computed", price, self.version, provenance=json.dumps(data),
            models=tuple(models) if len(models) > 1 else (),
        )

    def _multiplier(self, provider: str, entry: Entry, context: Mapping[str, str]) -> tuple[Decimal, dict[str, str]]:
        """The product of the factors ``context`` selects: the model's own, else the call's
        provider's, else the model's provider's."""
        factor, applied = Decimal(1), {}
        for key, value in context.items():
            for table in (entry.multipliers, self.multipliers.get(provider, {}), self.multipliers.get(entry.provider, {})):
                if value in table.get(key, {}):
                    factor *= table[key][value]
                    applied[key] = value
                    break
        return factor, applied

    def _fees(self, provider: str, entry: Entry, uses: Mapping[str, int]) -> tuple[Decimal, dict[str, Any]]:
        total, detail = Decimal(0), {}
        for tool, count in uses.items():
            for table in (entry.fees, self.fees.get(provider, {}), self.fees.get(entry.provider, {})):
                if tool in table:
                    total += table[tool] * count / THOUSAND
                    detail[tool] = {"uses": count, "per_1000": _plain(table[tool])}
                    break
            else:
                detail[tool] = {"uses": count, "per_1000": None}  # kept for audit and reprice
        return total, detail

    def _wide_net(
        self, provider: str, model: str | None, when: datetime, usage: Usage, billing: Billing,
    ) -> CallCost | None:
        """The cost genai-prices gives a model this table lacks (None: it does not know it either)."""
        if not self.wide_net or not model or billing.parts:
            return None
        from meterproxy.pricing import genai  # only for models this table lacks: `pricing show` starts faster

        found = genai.price(provider, model, when, usage)
        if found is None:
            return None
        cost, provenance = found
        return CallCost(cost, "genai-prices", None, genai.version_label(), provenance=provenance)

    def suggestions(self, model: str) -> list[str]:
        """Priced names close to ``model`` (for error messages)."""
        import difflib  # only to suggest names

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
    # The top-level table's peak is the model's (for every period without its own), not a period's.
    top = replace(_period(spec), peak=None)
    periods = sorted([top, *map(_period, spec.periods)], key=lambda p: p.since or _BEGINNING)
    peak = _peak(spec.peak) if spec.peak is not None else None
    return Entry(
        name=name.lower(),
        provider=spec.provider,
        periods=tuple(periods),
        aliases=tuple(a.lower() for a in spec.aliases),
        source=source,
        line=locate(text, ("models", name)),
        peak=peak,
        fees=dict(spec.fees),
        multipliers={key: dict(values) for key, values in spec.multipliers.items()},
    )


def _period(spec: PeriodSpec) -> Period:
    tiers = tuple(sorted((Tier(t.above, Rates.from_spec(t)) for t in spec.tiers), key=lambda t: t.above))
    return Period(utc_start(spec.since), Rates.from_spec(spec), tiers, _peak(spec.peak) if spec.peak else None)


def _peak(spec: PeakSpec) -> Peak:
    offset, days, spans = peak_window(spec)
    description = f"{', '.join(spec.days)} {', '.join(spec.hours)} UTC{spec.utc_offset}"
    return Peak(offset, days, spans, spec.multiplier, description)


def _minus(usage: Usage, parts: Any) -> Usage:
    """``usage`` less the usage of ``parts`` (never below 0)."""
    own = usage
    for part in parts:
        own = Usage(*(max(getattr(own, f) - getattr(part, f), 0) for f in TOKEN_FIELDS))
    return own


def _version(
    entries: dict[str, Entry], fees: Mapping[str, Fees] | None = None, multipliers: Mapping[str, Multipliers] | None = None,
) -> str:
    """A hash of the effective table (not of the files' text: comments do not change it)."""
    canonical: dict[str, Any] = {
        key: {
            "aliases": list(entry.aliases),
            "peak": [entry.peak.text, str(entry.peak.multiplier)] if entry.peak else None,
            "periods": [
                {
                    "since": period.since.isoformat() if period.since else None,
                    "rates": period.rates.as_dict(),
                    "tiers": [[tier.above, tier.rates.as_dict()] for tier in period.tiers],
                    **({"peak": [period.peak.text, str(period.peak.multiplier)]} if period.peak else {}),
                }
                for period in entry.periods
            ],
        }
        for key, entry in sorted(entries.items())
    }
    extras = {
        "model_fees": {k: e.fees for k, e in entries.items() if e.fees},
        "model_multipliers": {k: e.multipliers for k, e in entries.items() if e.multipliers},
        "fees": fees or {},
        "multipliers": multipliers or {},
    }
    if any(extras.values()):  # tables without fees or multipliers keep the hash they had
        canonical["(billing)"] = json.loads(json.dumps(extras, default=_plain, sort_keys=True))
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()[:12]


def _plain(value: Decimal) -> str:
    """A rate as plain decimal text without trailing zeros: 3, 0.3, 0.0028."""
    return format(value.normalize(), "f")


def bundled_text() -> str:
    """The bundled ``pricing.toml`` (read from the package's folder: importlib.resources, for a
    package that is not in one, costs the command line 10 ms to import)."""
    path = Path(__file__).with_name("pricing.toml")
    if path.is_file():
        return path.read_text(encoding="utf-8")
    from importlib import resources

    return resources.files("meterproxy.pricing").joinpath("pricing.toml").read_text(encoding="utf-8")
