"""``[budgets]`` as rules, and the day and month windows they count in.

A :class:`Rule` is one limit of config.toml (``daily_usd``, ``agents.marcus.monthly_tokens``,
``each_session.usd``...). Spend is kept per :data:`Scope` (all calls, one agent, one session)
and window (a day or a month in the configured zone, or a session's whole life), so a USD and a
token limit of the same scope and window count the same calls.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Literal
from zoneinfo import ZoneInfo

from meterproxy.config import BudgetLimits, Budgets
from meterproxy.money import to_picousd
from meterproxy.times import local_zone, now

Window = Literal["day", "month", "life"]
Unit = Literal["usd", "tokens"]
Scope = tuple[str, ...]
"""``("all",)``, ``("agent", name)`` or ``("session", name)``."""
ALL: Scope = ("all",)
LIFE = "life"
WINDOW_WORDS = {"day": "daily", "month": "monthly", "life": ""}


@dataclass(frozen=True, slots=True)
class Rule:
    """One configured limit."""

    key: str
    """Its config key under ``[budgets]``: ``daily_usd``, ``agents.marcus.daily_usd``, ``each_session.usd``."""
    kind: Literal["all", "agent", "each_agent", "each_session"]
    window: Window
    unit: Unit
    limit: int
    """Picodollars or tokens."""
    agent: str | None = None

    def scope(self, agent: str, session: str | None, own_agents: frozenset[str]) -> Scope | None:
        """The scope this rule counts a call of ``agent``/``session`` in; None when it does not apply."""
        if self.kind == "all":
            return ALL
        if self.kind == "agent":
            return ("agent", agent) if agent == self.agent else None
        if self.kind == "each_agent":
            return None if agent in own_agents else ("agent", agent)
        return ("session", session) if session else None

    def name(self, scope: Scope) -> str:
        """This budget for one scope: ``daily_usd``, ``agents.marcus.daily_usd``, ``each_agent[bob].daily_usd``."""
        if self.kind == "each_agent" or self.kind == "each_session":
            prefix, _, field = self.key.partition(".")
            return f"{prefix}[{scope[1]}].{field}"
        return self.key

    def describe(self, scope: Scope) -> str:
        """In words, for messages: ``daily budget of agent bob``."""
        word = WINDOW_WORDS[self.window]
        what = {"all": "all calls", "agent": f"agent {scope[-1]}", "session": f"session {scope[-1]}"}[scope[0]]
        unit = " (tokens)" if self.unit == "tokens" else ""
        return f"{word + ' ' if word else ''}budget{unit} of {what}"


def rules_from(budgets: Budgets) -> list[Rule]:
    """Every limit set in ``[budgets]``."""
    rules = _limits(budgets, "", "all")
    for agent, limits in budgets.agents.items():
        rules += _limits(limits, f"agents.{agent}.", "agent", agent)
    rules += _limits(budgets.each_agent, "each_agent.", "each_agent")
    session = budgets.each_session
    if session.usd is not None:
        rules.append(Rule("each_session.usd", "each_session", "life", "usd", to_picousd(_decimal(session.usd))))
    if session.tokens is not None:
        rules.append(Rule("each_session.tokens", "each_session", "life", "tokens", session.tokens))
    return rules


def _limits(limits: BudgetLimits, prefix: str, kind: str, agent: str | None = None) -> list[Rule]:
    found = []
    for window, word in (("day", "daily"), ("month", "monthly")):
        if (value := getattr(limits, f"{word}_usd")) is not None:
            found.append(Rule(f"{prefix}{word}_usd", kind, window, "usd", to_picousd(_decimal(value)), agent))  # type: ignore[arg-type]
        if (value := getattr(limits, f"{word}_tokens")) is not None:
            found.append(Rule(f"{prefix}{word}_tokens", kind, window, "tokens", value, agent))  # type: ignore[arg-type]
    return found


def _decimal(value: float) -> Decimal:
    return Decimal(str(value))  # the number as written in config.toml, not its binary float


def zone_of(name: str | None) -> tzinfo:
    """``[budgets] tz``: UTC, an IANA zone, or (unset) the machine's local zone."""
    if name:
        return UTC if name.upper() == "UTC" else ZoneInfo(name)
    return local_zone()


@dataclass(frozen=True, slots=True)
class Windows:
    """The day and the month a moment falls in: keys and boundaries (epoch seconds of the budget clock)."""

    day: str
    month: str
    day_start: float
    day_end: float
    month_start: float
    month_end: float

    def key(self, window: Window) -> str:
        return self.day if window == "day" else self.month if window == "month" else LIFE

    def resets_at(self, window: Window) -> float | None:
        return self.day_end if window == "day" else self.month_end if window == "month" else None

    def contains(self, moment: float) -> bool:
        return self.day_start <= moment < self.day_end


class Clock:
    """The budgets' time: the wall clock, moved to ``METERPROXY_NOW`` when that is set.

    Set, ``METERPROXY_NOW`` is the moment this clock starts at, and it runs on from there; a
    call's ledger ``started_at`` (wall clock) is shifted by the same amount, so the ledger and
    the live counters agree on which day a call belongs to.
    """

    def __init__(self, zone: tzinfo):
        self.zone = zone
        self.skew = now().timestamp() - time.time()
        self._windows: Windows | None = None

    def time(self) -> float:
        return time.time() + self.skew

    def windows(self, moment: float | None = None) -> Windows:
        """The windows of ``moment`` (default: now); O(1) while the day lasts."""
        moment = self.time() if moment is None else moment
        cached = self._windows
        if cached is not None and cached.contains(moment):
            return cached
        windows = windows_at(moment, self.zone)
        self._windows = windows
        return windows


def windows_at(moment: float, zone: tzinfo) -> Windows:
    local = datetime.fromtimestamp(moment, zone)
    day = local.date()
    first = day.replace(day=1)
    following = (first + timedelta(days=32)).replace(day=1)
    return Windows(
        day.isoformat(), first.strftime("%Y-%m"),
        _midnight(day, zone), _midnight(day + timedelta(days=1), zone),
        _midnight(first, zone), _midnight(following, zone),
    )


def _midnight(day: date, zone: tzinfo) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=zone).timestamp()
