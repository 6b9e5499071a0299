"""Live spend per scope and window: the check on the event loop, the settling on the writer thread.

:meth:`BudgetBook.admit` runs in the proxy's request hook: it reads the request's head
(:mod:`~meterproxy.budgets.estimate`), prices its worst case from a cache, and under one short
lock (no I/O) either reserves that worst case on every counter the call touches or refuses it.
The reservation is what makes parallel calls safe: N calls against room for K worst cases let at
most K through. :meth:`BudgetBook.settle`, a :class:`~meterproxy.ledger.writer.LedgerWriter`
step, swaps each call's reservation for its real cost inside the transaction that records it,
and writes an alert row the first time a budget reaches a level in a window (the ``alerts``
table's key makes it once, across restarts). :meth:`BudgetBook.seed` loads the spend of the
current windows from the ledger at start, so a restart loses nothing.

A proxy runs two books: its own checks and reserves, and takes each recorded call's cost from the
meter process's reports (:meth:`BudgetBook.apply` without alerts); the meter process's book
settles inside the transaction and raises the alerts.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from meterproxy.budgets.estimate import read_head
from meterproxy.budgets.rules import ALL, LIFE, Clock, Rule, Scope, Windows, rules_from, zone_of
from meterproxy.config import Budgets
from meterproxy.ledger.db import Reader, insert_rows, read
from meterproxy.money import usd_float
from meterproxy.times import iso_utc

if TYPE_CHECKING:
    from sqlite_utils import Database

    from meterproxy.meter.record import Record
    from meterproxy.pricing.table import PriceTable

log = logging.getLogger("meterproxy")

Level = Literal["ok", "warning", "over"]
_DOLLARS = re.compile(r"\$(\d[\d,]*(?:\.\d+)?)")
PICO_PER_USD_PER_MTOK = 1_000_000
"""A rate of 1 USD per million tokens is 1,000,000 picodollars per token."""


@dataclass(slots=True)
class Counter:
    """Spend of one scope in one window: settled, and reserved by calls in flight."""

    spent_pico: int = 0
    spent_tokens: int = 0
    reserved_pico: int = 0
    reserved_tokens: int = 0

    def used(self, unit: str) -> tuple[int, int]:
        """(spent, reserved) in ``unit``."""
        if unit == "usd":
            return self.spent_pico, self.reserved_pico
        return self.spent_tokens, self.reserved_tokens


@dataclass(slots=True)
class Entry:
    """A rule as it applies to one call: the scope, window and counter it counts in."""

    rule: Rule
    scope: Scope
    window: str
    resets_at: float | None
    counter: Counter


@dataclass(slots=True)
class Hold:
    """A call in flight: what it reserved, where, and the budget that refused it (if any)."""

    entries: list[Entry]
    pico: int = 0
    tokens: int = 0
    refused: Entry | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a call is blocked: the budget, a message for the client, and seconds to its reset."""

    budget: str
    message: str
    retry_after: int | None


@dataclass(frozen=True, slots=True)
class _Rates:
    input: int
    output: int
    free: bool
    tier_from: int | None = None
    """An input of more tokens than this reaches a dearer long-context tier."""


@dataclass
class BudgetBook:
    """The live budgets of one proxy (thread-safe)."""

    settings: Budgets
    rules: list[Rule]
    clock: Clock
    prices: PriceTable | None = None
    deliver: bool = False
    """A webhook is configured: new alerts are queued as ``pending`` (else ``logged``)."""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _counters: dict[tuple[Scope, str], Counter] = field(default_factory=dict)
    _holds: dict[str, Hold] = field(default_factory=dict)
    _fired: set[tuple[str, str, str]] = field(default_factory=set)
    _rates: dict[tuple[str, str | None], _Rates] = field(default_factory=dict)
    _rates_day: str = ""
    version: int = 0
    """Grows with every change of the counters (for :mod:`~meterproxy.budgets.live`)."""
    _own_agents: frozenset[str] = frozenset()
    _unpriced: int = 0

    def __post_init__(self) -> None:
        self._own_agents = frozenset(self.settings.agents)
        self._unpriced = int(Decimal(str(self.settings.unpriced_usd_per_mtok)) * PICO_PER_USD_PER_MTOK)

    @classmethod
    def build(cls, settings: Budgets, prices: PriceTable | None = None, deliver: bool = False) -> BudgetBook | None:
        """The book of ``[budgets]``; None when no limit is set (the proxy then checks nothing)."""
        rules = rules_from(settings)
        if not rules:
            return None
        return cls(settings, rules, Clock(zone_of(settings.tz)), prices, deliver)

    def describe(self) -> str:
        """One line for the proxy's start."""
        mode = "enforced: calls that could pass a limit get HTTP 429" if self.settings.enforce else "warn only"
        return f"budgets: {', '.join(rule.key for rule in self.rules)} ({mode})"

    # --- the check (event loop) ----------------------------------------------------------

    def admit(
        self, call_id: str, provider: str, path: str, body: bytes, agent: str, session: str | None,
    ) -> Refusal | None:
        """Reserve this call's worst case, or refuse it (None: it may go). O(1), no I/O."""
        head = read_head(path, body)
        rates = self._rates_of(provider, head.model, head.input_tokens)
        output = head.max_output_tokens or self.settings.default_max_output_tokens
        tokens = head.input_tokens + output
        pico = head.input_tokens * rates.input + output * rates.output
        windows = self.clock.windows()
        enforce = self.settings.enforce and not rates.free
        with self._lock:
            self.version += 1
            hold = Hold(self._entries(windows, agent, session), pico, tokens)
            if enforce:
                for entry in hold.entries:
                    spent, reserved = entry.counter.used(entry.rule.unit)
                    need = pico if entry.rule.unit == "usd" else tokens
                    if spent + reserved + need > entry.rule.limit:
                        hold.pico = hold.tokens = 0
                        hold.refused = entry
                        self._holds[call_id] = hold
                        return self._refusal(entry, need, windows)
            for counter in _unique(hold.entries):
                counter.reserved_pico += pico
                counter.reserved_tokens += tokens
            self._holds[call_id] = hold
        return None

    def _entries(self, windows: Windows, agent: str, session: str | None) -> list[Entry]:
        entries = []
        for rule in self.rules:
            scope = rule.scope(agent, session, self._own_agents)
            if scope is None:
                continue
            key = windows.key(rule.window)
            counter = self._counters.get((scope, key))
            if counter is None:
                counter = self._counters[(scope, key)] = Counter()
            entries.append(Entry(rule, scope, key, windows.resets_at(rule.window), counter))
        return entries

    def _rates_of(self, provider: str, model: str | None, input_tokens: int) -> _Rates:
        """Picodollars per input and output token at their worst (cache writes, reasoning, peak
        hours, the long-context tier the input reaches); cached per model for the day."""
        day = self.clock.windows().day
        if day != self._rates_day:
            self._rates, self._rates_day = {}, day  # prices may change from one day to the next
        rates = self._rates.get((provider, model))
        if rates is None:
            rates = self._rates[(provider, model)] = self._price(provider, model, 0)
        if rates.tier_from is not None and input_tokens > rates.tier_from:
            return self._price(provider, model, input_tokens)  # long prompts only: not cached
        return rates

    def _price(self, provider: str, model: str | None, input_tokens: int) -> _Rates:
        when = datetime.fromtimestamp(self.clock.time(), UTC)
        price = self.prices.price(provider, model, when, input_tokens) if self.prices is not None else None
        if price is None:
            return _Rates(self._unpriced, self._unpriced, False)
        from meterproxy.pricing.table import FREE  # loaded already: self.prices is a PriceTable

        if price.rates == FREE:
            return _Rates(0, 0, True)
        r, entry = price.rates, price.match.entry
        if entry.peak is not None and not price.peak and entry.peak.multiplier > 1:
            r = r.times(entry.peak.multiplier)  # the call may run into peak hours
        tiers = [tier.above for tier in price.period.tiers if tier.above >= input_tokens]
        return _Rates(
            _pico(max(r.input, r.cache_write, r.cache_write_1h)), _pico(max(r.output, r.reasoning)), False,
            min(tiers) if tiers else None,
        )

    def _refusal(self, entry: Entry, need: int, windows: Windows) -> Refusal:
        rule, counter = entry.rule, entry.counter
        spent, reserved = counter.used(rule.unit)
        name = rule.name(entry.scope)
        amount = _amount(rule.unit)
        text = (
            f"meterproxy: {rule.describe(entry.scope)} ({name}) reached: {amount(spent)} spent"
            + (f" and {amount(reserved)} reserved by calls in flight" if reserved else "")
            + f" of its {amount(rule.limit)} limit; this call could use up to {amount(need)}. "
        )
        retry_after = None
        if entry.resets_at is not None:
            retry_after = max(int(entry.resets_at - self.clock.time()) + 1, 1)
            text += f"It resets at {_local(entry.resets_at, self.clock)} (in {retry_after} s)."
        else:
            text += "It does not reset: start a new session."
        return Refusal(name, text, retry_after)

    # --- settling (writer thread) -------------------------------------------------------

    def settle(self, db: Database, records: list[Record]) -> None:
        """A writer step: each call's reservation becomes its real cost; new alert levels are recorded."""
        fired = self.apply([record.row for record in records if record.table == "calls"])
        if fired:
            self._record_alerts(db, fired)

    def apply(self, rows: Iterable[dict[str, Any]], alerts: bool = True) -> list[dict[str, Any]]:
        """Count ledger rows of ``calls`` as spent (releasing their reservations); the alerts of the
        levels they reach for the first time (none with ``alerts=False``: another book raises them)."""
        fired: list[dict[str, Any]] = []
        for row in rows:
            with self._lock:
                self.version += 1
                hold = self._holds.pop(row["id"], None)
                if hold is None:  # reserved by no admit of this book (another process's, or before a restart)
                    hold = Hold(self._entries(self.clock.windows(), row.get("agent") or "unknown", row.get("session")))
                    hold.refused = next((e for e in hold.entries if e.rule.name(e.scope) == row.get("budget")), None)
                pico, tokens = self._cost(row)
                for counter in _unique(hold.entries):
                    counter.reserved_pico -= hold.pico
                    counter.reserved_tokens -= hold.tokens
                    counter.spent_pico += pico
                    counter.spent_tokens += tokens
                if alerts:
                    for entry in hold.entries:
                        fired += self._levels(entry, blocked=entry is hold.refused)
        return fired

    def _cost(self, row: dict[str, Any]) -> tuple[int, int]:
        """(picodollars, tokens) a ledger row counts for: unpriced calls at ``unpriced_usd_per_mtok``."""
        tokens = (row.get("input_tokens") or 0) + (row.get("output_tokens") or 0)
        pico = row.get("cost_picousd")
        return (tokens * self._unpriced if pico is None else pico), tokens

    def _levels(self, entry: Entry, blocked: bool) -> list[dict[str, Any]]:
        """Alerts for levels this entry reached for the first time (called under the lock)."""
        spent, _ = entry.counter.used(entry.rule.unit)
        level = _level(spent, entry.rule.limit, self.settings.warn_at)
        reached = [] if level == "ok" else ["warning", "over"][: 1 + (level == "over")]
        if blocked and level != "over":
            reached.append("over")  # refused: the limit is reached for this call's worst case
        name = entry.rule.name(entry.scope)
        alerts = []
        for each in reached:
            if (name, entry.window, each) in self._fired:
                continue
            self._fired.add((name, entry.window, each))
            alerts.append(self._alert(entry, each, spent))
        return alerts

    def _alert(self, entry: Entry, level: str, spent: int) -> dict[str, Any]:
        rule = entry.rule
        name, amount = rule.name(entry.scope), _amount(rule.unit)
        used = spent / rule.limit
        period = "" if entry.window == LIFE else f" on {entry.window}"
        if level == "warning":
            message = (f"meterproxy: warning: {rule.describe(entry.scope)} ({name}) at {used:.0%}{period}: "
                       f"{amount(spent)} of {amount(rule.limit)}")
        else:
            then = "calls are blocked" if self.settings.enforce else "not enforced, calls go on"
            if spent < rule.limit:  # refused before the limit: the call's worst case did not fit
                then = "calls that could pass it are blocked"
            if entry.resets_at is not None and self.settings.enforce:
                then += f" until {_local(entry.resets_at, self.clock)}"
            message = (f"meterproxy: over: {rule.describe(entry.scope)} ({name}) reached{period}: "
                       f"{amount(spent)} of {amount(rule.limit)} ({used:.0%}); {then}")
        return {
            "budget": name, "key": rule.key, "level": level, "window": entry.window,
            "scope": entry.scope[0], "name": entry.scope[1] if len(entry.scope) > 1 else None,
            "unit": rule.unit, "limit": _value(rule.unit, rule.limit), "spent": _value(rule.unit, spent),
            "used": round(used, 4), "enforce": self.settings.enforce,
            "resets_at": _iso(entry.resets_at), "message": message,
        }

    def _record_alerts(self, db: Database, alerts: list[dict[str, Any]]) -> None:
        created = iso_utc(self.clock.time() - self.clock.skew)
        rows = []
        for alert in alerts:
            # "$0.0039" would be masked as [AMOUNT] by the log redactor: the log says "0.0039 USD".
            log.warning("%s", _DOLLARS.sub(r"\1 USD", alert["message"].removeprefix("meterproxy: ")))
            alert["created_at"] = created
            rows.append({
                "alert_id": f"{alert['budget']}|{alert['window']}|{alert['level']}",
                "created_at": created, "budget": alert["budget"], "window": alert["window"],
                "level": alert["level"], "message": alert["message"],
                "payload": json.dumps(alert, separators=(",", ":")),
                "state": "pending" if self.deliver else "logged", "attempts": 0, "next_attempt_at": created,
            })
        insert_rows(db, "alerts", rows)

    # --- seeding (at start) ---------------------------------------------------------------

    def load(self, ledger: Path) -> None:
        """:meth:`seed` from the ledger file (created and migrated if needed)."""
        db = read(ledger)
        try:
            self.seed(db)
        finally:
            db.close()

    def seed(self, db: Reader) -> None:
        """Load the spend of the current windows, and the alerts already raised, from the ledger."""
        windows = self.clock.windows()
        skew = self.clock.skew
        bounds = [iso_utc(t - skew) for t in (windows.day_start, windows.day_end, windows.month_start, windows.month_end)]
        pico = "COALESCE(cost_picousd, (COALESCE(input_tokens, 0) + COALESCE(output_tokens, 0)) * ?)"
        tokens = "(COALESCE(input_tokens, 0) + COALESCE(output_tokens, 0))"
        in_day = "started_at >= ? AND started_at < ?"
        rows = db.execute(
            f"SELECT COALESCE(agent, 'unknown'), SUM(CASE WHEN {in_day} THEN {pico} ELSE 0 END), "
            f"SUM(CASE WHEN {in_day} THEN {tokens} ELSE 0 END), SUM({pico}), SUM({tokens}) "
            "FROM calls WHERE started_at >= ? AND started_at < ? GROUP BY 1",
            [bounds[0], bounds[1], self._unpriced, bounds[0], bounds[1], self._unpriced, bounds[2], bounds[3]],
        ).fetchall()
        sessions = []
        if any(rule.kind == "each_session" for rule in self.rules):
            sessions = db.execute(
                f"SELECT session, SUM({pico}), SUM({tokens}) FROM calls WHERE session IS NOT NULL GROUP BY session",
                [self._unpriced],
            ).fetchall()
        fired = db.execute("SELECT budget, window, level FROM alerts").fetchall()
        with self._lock:
            for agent, day_pico, day_tokens, month_pico, month_tokens in rows:
                for scope in (ALL, ("agent", agent)):
                    self._add((scope, windows.day), day_pico, day_tokens)
                    self._add((scope, windows.month), month_pico, month_tokens)
            for session, spent_pico, spent_tokens in sessions:
                self._add((("session", session), LIFE), spent_pico, spent_tokens)
            self._fired.update((budget, window, level) for budget, window, level in fired)

    def _add(self, key: tuple[Scope, str], pico: int | None, tokens: int | None) -> None:
        counter = self._counters.setdefault(key, Counter())
        counter.spent_pico += int(pico or 0)
        counter.spent_tokens += int(tokens or 0)

    # --- status ---------------------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        """Every budget in force now, for each scope it has: limit, spent, reserved, remaining, status, reset."""
        windows = self.clock.windows()
        with self._lock:
            counters = dict(self._counters)
        found = []
        for rule in self.rules:
            key = windows.key(rule.window)
            for scope in self._scopes(rule, key, counters):
                counter = counters.get((scope, key), Counter())
                found.append(self._state(rule, scope, key, windows.resets_at(rule.window), counter))
        return found

    def _scopes(self, rule: Rule, window: str, counters: dict[tuple[Scope, str], Counter]) -> Iterable[Scope]:
        if rule.kind == "all":
            return [ALL]
        if rule.kind == "agent":
            return [("agent", rule.agent or "")]
        kind = "agent" if rule.kind == "each_agent" else "session"
        return sorted(
            scope for scope, key in counters
            if key == window and scope[0] == kind and not (kind == "agent" and scope[1] in self._own_agents)
        )

    def _state(self, rule: Rule, scope: Scope, window: str, resets_at: float | None, counter: Counter) -> dict[str, Any]:
        spent, reserved = counter.used(rule.unit)
        level = _level(spent, rule.limit, self.settings.warn_at)
        return {
            "budget": rule.name(scope), "key": rule.key, "scope": scope[0],
            "name": scope[1] if len(scope) > 1 else None, "window": rule.window, "period": window,
            "unit": rule.unit, "limit": _value(rule.unit, rule.limit), "spent": _value(rule.unit, spent),
            "reserved": _value(rule.unit, reserved), "remaining": _value(rule.unit, max(rule.limit - spent - reserved, 0)),
            "used": round(spent / rule.limit, 4), "status": level, "enforce": self.settings.enforce,
            "resets_at": _iso(resets_at),
        }


def _unique(entries: Sequence[Entry]) -> list[Counter]:
    """The counters of ``entries``, each once (a USD and a token rule may share one)."""
    seen: dict[int, Counter] = {}
    for entry in entries:
        seen.setdefault(id(entry.counter), entry.counter)
    return list(seen.values())


def _level(spent: int, limit: int, warn_at: float) -> Level:
    return "over" if spent >= limit else "warning" if spent >= warn_at * limit else "ok"


def _pico(rate: Decimal) -> int:
    return int(rate * PICO_PER_USD_PER_MTOK)


def _value(unit: str, amount: int) -> float | int:
    return usd_float(amount) if unit == "usd" else amount


def _amount(unit: str):
    if unit == "usd":
        return lambda pico: f"${usd_float(pico):,.2f}" if pico >= 10**12 else f"${usd_float(pico):.4f}"
    return lambda tokens: f"{tokens:,} tokens"


def _iso(moment: float | None) -> str | None:
    return None if moment is None else iso_utc(moment).replace(".000Z", "Z")


def _local(moment: float, clock: Clock) -> str:
    return datetime.fromtimestamp(moment, clock.zone).strftime("%Y-%m-%d %H:%M %Z").strip()
