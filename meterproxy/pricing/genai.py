"""genai-prices (pydantic's price database) as a wide net: the price of a model ``pricing.toml``
lacks, and its rates for ``meterproxy pricing check --against genai-prices``.

The package (and its thousand-model table) is imported on first use only, on the thread that
needs it (the ledger writer, a CLI command), never at start-up: a proxy whose models are all in
``pricing.toml`` never loads it. Its rates are USD per million tokens, like ours.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from types import ModuleType
from typing import Any

from meterproxy.providers.usage import Usage

PACKAGE = "genai-prices"
PROVIDER_IDS = {
    "openai": "openai", "anthropic": "anthropic", "gemini": "google", "vertex": "google",
    "xai": "x-ai", "mistral": "mistral", "deepseek": "deepseek", "groq": "groq", "together": "together",
    "fireworks": "fireworks", "openrouter": "openrouter", "azure": "azure",
}
"""meterproxy's provider names -> genai-prices' provider ids."""
GUESS_NEVER = frozenset({"openai_compatible", "ollama", "lmstudio", "llamacpp", "vllm", "local"})
"""Providers whose model names say nothing of whose price list applies."""
RATE_KEYS = {
    "input": "input_mtok", "output": "output_mtok", "cache_read": "cache_read_mtok",
    "cache_write": "cache_write_mtok", "cache_write_1h": "cache_write_1h_mtok",
}
"""Our rate names -> genai-prices' ``ModelPrice`` fields (USD per million tokens)."""

_lock = threading.Lock()
_module: ModuleType | None = None
_missing = False


def _load() -> ModuleType | None:
    """genai_prices, imported once (None when it is not installed)."""
    global _module, _missing
    if _module is None and not _missing:
        with _lock:
            if _module is None and not _missing:
                try:
                    import genai_prices
                except ImportError:
                    _missing = True
                else:
                    _module = genai_prices
    return _module


@functools.cache
def version() -> str | None:
    """The installed genai-prices version, without importing it (read once)."""
    from importlib import metadata  # costly to import: only when asked

    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return None


def version_label() -> str:
    return f"{PACKAGE} {version() or '?'}"


@dataclass(frozen=True)
class Found:
    """A model as genai-prices knows it."""

    provider: str
    model: str
    info: Any
    """genai_prices.types.ModelInfo."""

    def rates_at(self, when: datetime) -> dict[str, Decimal | None]:
        """Our rate names -> genai-prices' base rate (USD per million tokens) at ``when``."""
        prices = self.info.get_prices(when)
        found: dict[str, Decimal | None] = {}
        for ours, theirs in RATE_KEYS.items():
            value = getattr(prices, theirs, None)
            value = getattr(value, "base", value)  # tiered: the base rate
            found[ours] = value if isinstance(value, Decimal) else None
        return found

    def changes(self) -> list[date]:
        """The dates its prices changed (genai-prices' start-date constraints)."""
        prices = self.info.prices
        if not isinstance(prices, list):
            return []
        return sorted({c.constraint.start_date for c in prices if hasattr(c.constraint, "start_date")})


@functools.lru_cache(maxsize=4096)
def find(provider: str, model: str) -> Found | None:
    """genai-prices' model for a call to ``provider`` naming ``model``; None when it has none
    (remembered either way: a model no one prices costs one search, not one per call)."""
    module = _load()
    if module is None:
        return None
    snapshot = module.data_snapshot.get_snapshot()
    provider_id = PROVIDER_IDS.get(provider)
    if provider == "vertex" and model.lower().startswith("claude"):
        provider_id = "anthropic"  # Claude on Vertex: Anthropic's price list
    # Another provider's price for the same name is only a fair guess where the name says whose
    # model it is (OpenRouter's vendor/model) or the provider is not one genai-prices lists; a
    # custom OpenAI-compatible host may serve anything, so it is never guessed.
    candidates: list[str | None] = [provider_id] if provider_id else []
    if (provider_id is None and provider not in GUESS_NEVER) or provider == "openrouter":
        candidates.append(None)
    for candidate in candidates:
        try:
            found_provider, info = snapshot.find_provider_model(model, None, candidate, None)
        except (LookupError, ValueError):
            continue
        return Found(found_provider.id, info.id, info)
    return None


def price(provider: str, model: str, when: datetime, usage: Usage) -> tuple[Decimal, str] | None:
    """The cost of ``usage`` at genai-prices' rates in force at ``when``, and the provenance JSON
    for the ``rates`` column; None when it does not know the model or cannot price the usage."""
    found = find(provider, model)
    module = _module
    if found is None or module is None:
        return None
    counts = {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "cache_write_1h_tokens": min(usage.cache_write_1h_tokens, usage.cache_write_tokens),
    }
    try:
        provider_obj = module.data_snapshot.get_snapshot().find_provider(None, found.provider, None)
        result = found.info.calc_price(module.Usage(**{k: v for k, v in counts.items() if v}), provider_obj,
                                       genai_request_timestamp=when)
    except Exception:  # an unpriceable mix of counts (audio-only prices...): unpriced, not a crash
        return None
    rates = {name: format(value.normalize(), "f") for name, value in found.rates_at(when).items() if value is not None}
    provenance = {
        "source": PACKAGE, "version": version(), "model": found.model, "provider": found.provider,
        "matched": f"{PACKAGE} match of {model}",
    } | rates
    return Decimal(result.total_price), json.dumps(provenance)


@dataclass(frozen=True)
class Disagreement:
    """One rate on which ``pricing.toml`` and genai-prices differ, and since when both have held."""

    model: str
    theirs_model: str
    rate: str
    ours: Decimal
    theirs: Decimal
    since: datetime | None
    """The later of the two prices' start (None: both since the start)."""


def disagreements(entries: Iterable[Any], now: datetime) -> tuple[list[Disagreement], int, list[str]]:
    """Every rate of ``entries`` (price table entries) that genai-prices gives otherwise, in each
    of our periods: (disagreements, models compared, models genai-prices does not know)."""
    found: list[Disagreement] = []
    compared, unknown = 0, []
    for entry in entries:
        theirs = find(entry.provider, entry.name)
        if theirs is None:
            unknown.append(entry.name)
            continue
        compared += 1
        changes = [datetime.combine(d, time(), tzinfo=UTC) for d in theirs.changes()]
        periods = list(entry.periods)
        for i, period in enumerate(periods):
            # The moment to compare at: the end of our period (or now), so their latest change in it counts.
            end = periods[i + 1].since if i + 1 < len(periods) else None
            moment = min(end - timedelta(seconds=1), now) if end is not None else now
            if period.since is not None and moment < period.since:
                moment = period.since
            their_start = max((c for c in changes if c <= moment), default=None)
            starts = [s for s in (period.since, their_start) if s is not None]
            window = period.peak or entry.peak  # both sides at the same moment: peak hours included
            rates = period.rates.times(window.multiplier) if window and window.applies(moment) else period.rates
            for rate, value in theirs.rates_at(moment).items():
                ours = getattr(rates, rate)
                if value is not None and ours.normalize() != value.normalize():
                    found.append(Disagreement(entry.name, theirs.model, rate, ours, value, max(starts, default=None)))
    return found, compared, unknown
