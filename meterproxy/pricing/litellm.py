"""``meterproxy pricing import``: LiteLLM's ``model_prices_and_context_window.json`` into the
user's ``pricing.toml``.

LiteLLM gives USD per token; meterproxy keeps USD per million tokens. Numbers are read from the
JSON text as exact decimals. An imported rate that differs from the bundled one takes effect at
the moment of the import (``since``, a UTC date-time: a local date would be read as UTC midnight,
hours off either way); the bundled periods stay as the model's earlier prices, so calls already
made keep the price they were made at.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from meterproxy.errors import MeterproxyError
from meterproxy.pricing.file import ModelSpec, PeriodSpec, parse_text
from meterproxy.pricing.table import MILLION, RATE_FIELDS, Entry, PriceTable, Rates, read_text

CHAT_MODES = {"chat", "completion", "responses"}
RATE_KEYS = {
    "input_cost_per_token": "input",
    "output_cost_per_token": "output",
    "cache_read_input_token_cost": "cache_read",
    "cache_creation_input_token_cost": "cache_write",
    "cache_creation_input_token_cost_above_1hr": "cache_write_1h",
    "output_cost_per_reasoning_token": "reasoning",
}
_TIER_KEY = re.compile(rf"^({'|'.join(RATE_KEYS)})_above_(\d+)k_tokens$")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
HEADER = (
    "# Your meterproxy prices: entries here replace the bundled entry of the same name.\n"
    "# Written by `meterproxy pricing import`; edit freely, then `meterproxy pricing check`.\n"
)


@dataclass
class ImportResult:
    imported: list[str] = field(default_factory=list)
    """Models written to the user file (new or with a different price)."""
    changed: list[str] = field(default_factory=list)
    """Of those, bundled models whose price differs."""
    unchanged: int = 0
    skipped: int = 0
    """Entries that are not token-priced chat models, or that have unusable numbers."""
    kept: list[str] = field(default_factory=list)
    """The user's own entries the import did not touch."""
    backup: Path | None = None


def import_litellm(source: Path, user_file: Path, now: datetime) -> ImportResult:
    """Merge LiteLLM prices into ``user_file`` (the previous file is kept as ``.bak``)."""
    try:
        data = json.loads(read_text(source), parse_float=Decimal)
    except json.JSONDecodeError as e:
        raise MeterproxyError(f"{source}:{e.lineno}: not valid JSON: {e.msg}") from e
    if not isinstance(data, dict):
        raise MeterproxyError(f"{source}: expected a JSON object of models (LiteLLM's format)")
    bundled = PriceTable.load()
    result = ImportResult()
    models: dict[str, dict[str, Any]] = {}
    for name, item in data.items():
        entry = _litellm_entry(item) if name != "sample_spec" else None
        if entry is None:
            result.skipped += name != "sample_spec"
            continue
        key = name.strip().lower()
        match = bundled.lookup(entry["provider"], key)
        old = match.entry if match is not None else None
        if old is not None:
            if _same_as_current(old, entry, now):
                result.unchanged += 1
                continue
            entry = _with_history(key, entry, old, now)
            result.changed.append(key)
        models[key] = entry
        result.imported.append(key)
    if user_file.exists():
        for name, spec in parse_text(str(user_file), read_text(user_file)).models.items():
            if name.lower() not in models:
                models[name.lower()] = _spec_dict(spec)
                result.kept.append(name)
    for entry in models.values():  # a name that is now a model of its own is no alias any more
        entry["aliases"] = [a for a in entry.get("aliases", ()) if a.lower() not in models]
    text = HEADER + dump_models(models)
    parse_text(str(user_file), text)  # never write a file that would stop `meterproxy start`
    if user_file.exists():
        result.backup = user_file.with_name(user_file.name + ".bak")
        os.replace(user_file, result.backup)
    tmp = user_file.with_name(user_file.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, user_file)
    return result


def _litellm_entry(item: Any) -> dict[str, Any] | None:
    """One LiteLLM model as a pricing.toml entry; None if it is not a token-priced chat model."""
    if not isinstance(item, dict) or item.get("mode", "chat") not in CHAT_MODES:
        return None
    rates = {ours: _per_million(item.get(theirs)) for theirs, ours in RATE_KEYS.items()}
    if rates["cache_read"] is None:
        rates["cache_read"] = _per_million(item.get("input_cost_per_token_cache_hit"))
    if rates["input"] is None or rates["output"] is None:
        return None
    entry: dict[str, Any] = {"provider": str(item.get("litellm_provider") or "unknown")}
    entry |= {k: v for k, v in rates.items() if v is not None}
    tiers: dict[int, dict[str, Decimal]] = {}
    for key, value in item.items():
        match = _TIER_KEY.match(key)
        rate = _per_million(value) if match else None
        if match and rate is not None:
            ours = RATE_KEYS[match.group(1)]
            tiers.setdefault(int(match.group(2)) * 1000, {})[ours] = rate
    if tiers:
        # A rate not given above the threshold stays what it is below it (reasoning follows output).
        base = {k: v for k, v in entry.items() if k in RATE_FIELDS and (k != "reasoning" or v != entry["output"])}
        entry["tiers"] = [{"above": above} | base | rates for above, rates in sorted(tiers.items())]
    return entry


def _per_million(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        return None
    try:
        rate = (Decimal(value) * MILLION).normalize()
    except InvalidOperation:
        return None
    return rate if rate.is_finite() and rate >= 0 else None


def _same_as_current(old: Entry, entry: dict[str, Any], now: datetime) -> bool:
    current = old.period_at(now)
    spec = PeriodSpec.load({k: v for k, v in entry.items() if k != "provider"})
    new_tiers = [(t.above, Rates.from_spec(t)) for t in spec.tiers]
    return Rates.from_spec(spec) == current.rates and new_tiers == [(t.above, t.rates) for t in current.tiers]


def _with_history(entry_name: str, entry: dict[str, Any], old: Entry, now: datetime) -> dict[str, Any]:
    """The imported price from ``now`` on, the bundled periods before (and any scheduled later)."""
    periods = []
    for period in old.periods:
        if period.since is not None and period.since == now:
            continue
        item: dict[str, Any] = {"since": _since(period.since)} if period.since else {}
        item |= _rates_dict(period.rates)
        if period.tiers:
            item["tiers"] = [{"above": t.above} | _rates_dict(t.rates) for t in period.tiers]
        periods.append(item)
    aliases = list(old.aliases) if old.name == entry_name else []
    return entry | {"since": _since(now), "aliases": aliases, "periods": periods}


def _since(moment: datetime) -> date | datetime:
    """A UTC moment as a ``since`` value: a date at midnight, else a date-time to the second."""
    moment = moment.astimezone(UTC)
    if moment.time() == time():
        return moment.date()
    return moment.replace(microsecond=0)


def _rates_dict(rates: Rates) -> dict[str, Decimal]:
    """Rates as entry fields, leaving out those equal to their default."""
    defaults = {"cache_read": rates.input, "cache_write": rates.input, "cache_write_1h": rates.cache_write,
                "reasoning": rates.output}
    return {name: getattr(rates, name) for name in RATE_FIELDS if getattr(rates, name) != defaults.get(name)}


def _spec_dict(spec: ModelSpec) -> dict[str, Any]:
    return spec.dump()


def dump_models(models: dict[str, dict[str, Any]]) -> str:
    """Entries as ``pricing.toml`` text."""
    lines: list[str] = []
    for name, entry in models.items():
        table = f"models.{_key(name)}"
        lines += ["", f"[{table}]", *_scalars(entry)]
        if "peak" in entry:
            lines += ["", f"[{table}.peak]", *_scalars(entry["peak"])]
        for tier in entry.get("tiers", ()):
            lines += ["", f"[[{table}.tiers]]", *_scalars(tier)]
        for period in entry.get("periods", ()):
            lines += ["", f"[[{table}.periods]]", *_scalars(period)]
            for tier in period.get("tiers", ()):
                lines += ["", f"[[{table}.periods.tiers]]", *_scalars(tier)]
    return "\n".join(lines) + "\n"


def _scalars(table: dict[str, Any]) -> list[str]:
    return [
        f"{key} = {_value(value)}"
        for key, value in table.items()
        if key not in ("tiers", "periods", "peak") and value != []
    ]


def _key(name: str) -> str:
    return name if _BARE_KEY.match(name) else json.dumps(name)


def _value(value: Any) -> str:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return json.dumps(str(value))
