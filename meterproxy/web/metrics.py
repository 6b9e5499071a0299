"""``/metrics``: the ledger's totals in the Prometheus text format (version 0.0.4).

Counters are all-time sums of the calls in the ledger (archived calls leave them), by provider,
model and agent: the report ``report --from 2000-01-01 --by provider --by model --by agent``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from meterproxy.providers.usage import TOKEN_FIELDS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LABELS = ("provider", "model", "agent")


def metrics_text(report: dict[str, Any], budgets: dict[str, Any]) -> str:
    """``report``: by provider, model and agent (nested); ``budgets``: :func:`~meterproxy.web.budgets.budgets_view`."""
    rows = list(_leaves(report["groups"], ()))
    out: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float | int]]) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            out.append(f"{name}{_labels(labels)} {_number(value)}")

    family("meterproxy_calls_total", "counter", "LLM calls recorded in the ledger.",
           [(labels, row["calls"]) for labels, row in rows])
    family("meterproxy_tokens_total", "counter",
           "Tokens by type (input includes cache reads and writes, output includes reasoning).",
           [(labels | {"type": t.removesuffix("_tokens")}, row[t]) for labels, row in rows for t in TOKEN_FIELDS])
    family("meterproxy_cost_usd_total", "counter", "Cost of the priced calls in USD.",
           [(labels, row["cost_usd"]) for labels, row in rows])
    family("meterproxy_unpriced_calls_total", "counter", "Calls without a price (not in the cost).",
           [(labels, row["unpriced_calls"]) for labels, row in rows])
    family("meterproxy_estimated_calls_total", "counter", "Calls whose usage was estimated with tiktoken.",
           [(labels, row["estimated_calls"]) for labels, row in rows])
    family("meterproxy_no_usage_calls_total", "counter", "Calls without usage reported or estimated.",
           [(labels, row["no_usage_calls"]) for labels, row in rows])
    family("meterproxy_budget_used_ratio", "gauge", "Spend over the budget's limit (1 = all used).",
           [({"budget": b["budget"], "scope": b["scope"], "unit": b["unit"]}, b["used"]) for b in budgets["budgets"]])
    family("meterproxy_budget_limit", "gauge", "The budget's limit, in its unit (usd or tokens).",
           [({"budget": b["budget"], "scope": b["scope"], "unit": b["unit"]}, b["limit"]) for b in budgets["budgets"]])
    return "\n".join(out) + "\n"


def _leaves(groups: list[dict[str, Any]], keys: tuple[str, ...]) -> Iterator[tuple[dict[str, str], dict[str, Any]]]:
    for group in groups:
        path = (*keys, group["key"])
        if "groups" in group:
            yield from _leaves(group["groups"], path)
        else:
            yield dict(zip(LABELS, path)), group


def _labels(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{name}="{_escape(value)}"' for name, value in labels.items()) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float | int) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)
