"""Prices from ``pricing.toml``, and the exact (Decimal) cost of a call.

Rates are USD per million tokens. Cost of one call, by the usage rules of meterproxy.usage:

    uncached input  * input
  + cache reads     * cache_read      (defaults to input)
  + 5-minute writes * cache_write     (defaults to input)
  + 1-hour writes   * cache_write_1h  (defaults to cache_write)
  + output          * output          (reasoning is part of output and priced as output)

An unknown model has no cost (None), never $0.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from pathlib import Path

from meterproxy.errors import MeterproxyError
from meterproxy.usage import Usage

MILLION = Decimal(1_000_000)
PICO = Decimal("1e-12")
LOCAL_PROVIDERS = frozenset({"ollama", "lmstudio", "llamacpp", "vllm", "local"})
_DATE_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8})$")


@dataclass(frozen=True, slots=True)
class Rates:
    """USD per million tokens for one model."""

    model: str
    input: Decimal
    output: Decimal
    cache_read: Decimal
    cache_write: Decimal
    cache_write_1h: Decimal

    def cost(self, usage: Usage) -> Decimal:
        five_minute_writes = usage.cache_write_tokens - usage.cache_write_1h_tokens
        uncached = usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens
        total = (
            uncached * self.input
            + usage.cache_read_tokens * self.cache_read
            + five_minute_writes * self.cache_write
            + usage.cache_write_1h_tokens * self.cache_write_1h
            + usage.output_tokens * self.output
        )
        return total / MILLION

    def as_dict(self) -> dict[str, str]:
        return {
            "model": self.model,
            "input": str(self.input),
            "output": str(self.output),
            "cache_read": str(self.cache_read),
            "cache_write": str(self.cache_write),
            "cache_write_1h": str(self.cache_write_1h),
        }


ZERO_RATES = Rates("local", *(Decimal(0),) * 5)


class PriceTable:
    """The effective price table: the bundled file, overlaid by the user's."""

    def __init__(self, models: dict[str, Rates], aliases: dict[str, str], version: str):
        self.models = models
        self.aliases = aliases
        self.version = version

    @classmethod
    def load(cls, user_file: Path | None = None) -> PriceTable:
        sources = [("bundled pricing.toml", resources.files("meterproxy").joinpath("pricing.toml").read_bytes())]
        if user_file is not None and user_file.exists():
            try:
                sources.append((str(user_file), user_file.read_bytes()))
            except OSError as e:
                raise MeterproxyError(f"{user_file}: cannot read: {e.strerror}") from e
        models: dict[str, Rates] = {}
        aliases: dict[str, str] = {}
        digest = hashlib.sha256()
        for name, data in sources:
            digest.update(data)
            file_models, file_aliases = _parse(name, data)
            models.update(file_models)
            aliases.update(file_aliases)
        return cls(models, aliases, digest.hexdigest()[:12])

    def rates_for(self, provider: str, model: str | None) -> Rates | None:
        """The rates of a model as named by a provider; None when it is not priced."""
        if provider in LOCAL_PROVIDERS:
            return ZERO_RATES
        if not model:
            return None
        for candidate in _candidates(model.lower()):
            name = self.aliases.get(candidate, candidate)
            if name in self.models:
                return self.models[name]
        return None


def _candidates(model: str) -> list[str]:
    """Names to try: as given, without a provider prefix, without a date suffix."""
    names = [model]
    if "/" in model:
        names.append(model.rsplit("/", 1)[1])
    names += [_DATE_SUFFIX.sub("", n) for n in names if _DATE_SUFFIX.search(n)]
    return names


def _parse(source: str, data: bytes) -> tuple[dict[str, Rates], dict[str, str]]:
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise MeterproxyError(f"{source}: {e}") from e
    models: dict[str, Rates] = {}
    aliases: dict[str, str] = {}
    for name, entry in (doc.get("models") or {}).items():
        where = f"{source}: models.{name}"
        if not isinstance(entry, dict):
            raise MeterproxyError(f"{where}: expected a table")
        try:
            rate = {k: Decimal(str(entry[k])) for k in ("input", "output")}
        except KeyError as e:
            raise MeterproxyError(f"{where}: missing {e.args[0]!r}") from e
        except ArithmeticError as e:
            raise MeterproxyError(f"{where}: rates must be numbers") from e
        cache_read = Decimal(str(entry.get("cache_read", rate["input"])))
        cache_write = Decimal(str(entry.get("cache_write", rate["input"])))
        cache_write_1h = Decimal(str(entry.get("cache_write_1h", cache_write)))
        key = name.lower()
        models[key] = Rates(key, rate["input"], rate["output"], cache_read, cache_write, cache_write_1h)
        for alias in entry.get("aliases", ()):
            aliases[str(alias).lower()] = key
    return models, aliases
