"""Judge a benchmark result against the performance targets (issues 8 and 17), and render it as Markdown."""

from __future__ import annotations

from typing import Any

from bench.startup import HELP_LIMIT_MS, READ_LIMIT_MS

STREAM_SCENARIOS = ("sse", "sse_h2")
LOADED_SCENARIOS = ("json", "json_h2", "sse", "sse_h2")
"""Many clients at once: judged on throughput."""
SERIAL_SCENARIOS = ("json_serial", "json_serial_h2")
"""One client: judged on added latency."""


def _get(data: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict) or data.get(key) is None:
            return None
        data = data[key]
    return data


def _diff(a: float | None, b: float | None) -> float | None:
    return round(a - b, 3) if a is not None and b is not None else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _target(name: str, value: Any, limit: str, met: bool | None, mitmdump: Any = None) -> dict[str, Any]:
    return {"target": name, "meterproxy": value, "limit": limit, "mitmdump": mitmdump, "met": met}


def _round_median(scenario: dict[str, Any], figure: Any) -> float | None:
    """The median over the scenario's interleaved rounds of ``figure(round)`` (robust to a noisy round)."""
    values = sorted(v for r in scenario.get("rounds", []) if (v := figure(r)) is not None)
    if not values:
        return None
    middle = len(values) // 2
    return round(values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2, 3)


def _within(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


def targets(result: dict[str, Any], writer_rate: int) -> list[dict[str, Any]]:
    """Each target of the issue: meterproxy's figure, the limit, mitmdump's figure, met or not."""
    s = result["scenarios"]
    out = []
    for name in LOADED_SCENARIOS:
        if name not in s:
            continue
        ratio = _round_median(s[name], lambda r: _ratio(r["meterproxy"]["req_per_s"], r["mitmdump"]["req_per_s"]))
        mitm_rps = _get(s, name, "mitmdump", "req_per_s")
        out.append(_target(f"Throughput, {name}, {s[name]['concurrency']} concurrent (meterproxy / mitmdump, "
                           "median of rounds)", ratio, ">= 0.97", None if ratio is None else ratio >= 0.97,
                           f"{mitm_rps} req/s"))
    for name in SERIAL_SCENARIOS:
        if name not in s:
            continue
        for q, limit in (("p50", 0.3), ("p99", 0.5)):
            added = _round_median(s[name], lambda r, q=q: _diff(r["meterproxy"][q], r["mitmdump"][q]))
            out.append(_target(f"Added latency {q} over mitmdump, {name}, 1 client (ms, median of rounds)", added,
                               f"<= {limit}", _within(added, limit), _get(s, name, "mitmdump", "latency_ms", q)))
    for name in STREAM_SCENARIOS:
        meter, mitm = (_get(s, name, p, "ttfb_ms", "p50") for p in ("meterproxy", "mitmdump"))
        added = _diff(meter, mitm)
        out.append(_target(f"TTFB p50 over mitmdump, {name} (ms)", added, "<= 1.0", _within(added, 1.0), mitm))
        meter, mitm = (_get(s, name, p, "chunk_delay_ms", "p99") for p in ("meterproxy", "mitmdump"))
        added = _diff(meter, mitm)
        out.append(_target(f"Per-chunk delay p99 over mitmdump, {name} (ms)", added, "<= 0.5",
                           _within(added, 0.5), mitm))
    held = [_get(s, name, "meterproxy", "chunks_held_back") for name in STREAM_SCENARIOS]
    complete = _get(result, "big_stream", "meterproxy", "complete")
    held_total = sum(h or 0 for h in held)
    out.append(_target("Chunks held back (streams; big stream complete)", f"{held_total}; {complete}", "0; True",
                       held_total == 0 and complete is True and None not in held))
    big = result.get("big_stream", {})
    growth = _get(big, "meterproxy", "rss_growth_mib")
    out.append(_target(f"RSS growth streaming {big.get('bytes', 0) // 2**20} MiB (MiB)", growth, "< 50",
                       None if growth is None else growth < 50, _get(big, "mitmdump", "rss_growth_mib")))
    w = result.get("writer", {})
    # The writer wakes every LINGER (0.2 s) by design: "keeping up" is a queue that stays under
    # half a second of calls, is no longer at the end than at the start, and drains at once.
    first, last = w.get("queue_mean_first_third", 0), w.get("queue_mean_last_third", 1e9)
    keeps_up = (w.get("offered_per_s", 0) >= 0.98 * writer_rate and w.get("queue_max", 1e9) < writer_rate / 2
                and last <= first * 1.5 + 10 and w.get("drain_after_offer_ms", 1e9) < 1000)
    out.append(_target(f"Ledger writer at {writer_rate} calls/s (queue max; mean first/last third; drain ms)",
                       f"{w.get('queue_max')}; {first}/{last}; {w.get('drain_after_offer_ms')}",
                       f"< {writer_rate // 2}; not growing; < 1000", keeps_up))
    ledger = result.get("ledger", {})
    out.append(_target("Ledger rows after SIGTERM = requests made", f"{ledger.get('rows')} / {ledger.get('requests')}",
                       "equal", ledger.get("rows") == ledger.get("requests") and bool(ledger.get("requests"))))
    idle = result.get("rss_at_start_mib", {})
    meter_idle, mitm_idle = idle.get("meterproxy"), idle.get("mitmdump")
    added = _diff(meter_idle, mitm_idle)
    out.append(_target("Idle RSS over mitmdump's, proxy process (MiB)", added, "<= 40", _within(added, 40), mitm_idle))
    both = _diff(None if meter_idle is None else meter_idle + idle.get("meter_process", 0), mitm_idle)
    out.append(_target("Idle RSS over mitmdump's, proxy + meter process (MiB)", both, "<= 40", _within(both, 40),
                       mitm_idle))
    startup = result.get("startup", {})
    for name, figures in startup.get("commands", {}).items():
        limit = HELP_LIMIT_MS if name == "--help" else READ_LIMIT_MS
        median = figures["median_ms"]
        out.append(_target(f"`meterproxy {name}`, whole process, {startup['ledger_calls']:,}-call ledger (ms)",
                           median, f"<= {limit}", figures["exit_codes"] == [0] and median <= limit))
    return out


# --- Markdown -------------------------------------------------------------------------------

ROWS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("requests", ("requests",)),
    ("errors", ("errors",)),
    ("req/s", ("req_per_s",)),
    ("latency p50 ms", ("latency_ms", "p50")),
    ("latency p95 ms", ("latency_ms", "p95")),
    ("latency p99 ms", ("latency_ms", "p99")),
    ("TTFB p50 ms", ("ttfb_ms", "p50")),
    ("TTFB p99 ms", ("ttfb_ms", "p99")),
    ("chunk delay p50 ms", ("chunk_delay_ms", "p50")),
    ("chunk delay p99 ms", ("chunk_delay_ms", "p99")),
    ("chunk delay max ms", ("chunk_delay_ms", "max")),
    ("chunks held back", ("chunks_held_back",)),
    ("proxy CPU s / 1000 req (meterproxy: with its meter process)", ("cpu_s_per_1000",)),
)


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "**NO**"
    return f"{value:g}" if isinstance(value, float) else str(value)


def markdown(result: dict[str, Any]) -> str:
    m, load = result["machine"], result["load_average"]
    lines = [
        f"# meterproxy benchmark ({result['mode']}), {result['started_at']}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, mitmproxy {m['mitmproxy']}, "
        f"httpx {m['httpx']}, {m['platform']}; meterproxy {m['meterproxy_commit']}.  ",
        f"Load average (1/5/15 min) at start {_load(load['start'])}, at end {_load(load['end'])}.  ",
        "Paths: direct to the upstream; plain `mitmdump -q` (no addon, same CA and upstream trust, "
        f"`stream_large_bodies=1`); `{' '.join(['meterproxy start', *result.get('meterproxy_args', [])])}`. "
        "Segments interleaved, order rotating each round.",
        "",
        "## Targets",
        "",
        "| target | meterproxy | limit | mitmdump | met |",
        "|---|---|---|---|---|",
    ]
    for t in result["targets"]:
        lines.append(f"| {t['target']} | {_cell(t['meterproxy'])} | {t['limit']} | {_cell(t['mitmdump'])} "
                     f"| {_cell(t['met'])} |")
    for name, scenario in result["scenarios"].items():
        lines += ["", f"## {name}: {scenario['description']}", "",
                  "| figure | direct | mitmdump | meterproxy | meterproxy / mitmdump | meterproxy / direct |",
                  "|---|---|---|---|---|---|"]
        for label, keys in ROWS:
            values = [_get(scenario, path, *keys) for path in ("direct", "mitmdump", "meterproxy")]
            if all(v is None for v in values):
                continue
            ratios = ("", "") if label in ("requests", "errors", "chunks held back") else (
                _cell(_ratio(values[2], values[1])), _cell(_ratio(values[2], values[0])))
            lines.append(f"| {label} | {' | '.join(_cell(v) for v in values)} | {ratios[0]} | {ratios[1]} |")
        rounds = [f"{_cell(_ratio(r['meterproxy']['req_per_s'], r['mitmdump']['req_per_s']))} / "
                  f"{_cell(_diff(r['meterproxy']['p99'], r['mitmdump']['p99']))}" for r in scenario.get("rounds", [])]
        if rounds:
            lines += ["", f"Each round, meterproxy / mitmdump req/s and added p99 ms: {', '.join(rounds)}."]
    big = result.get("big_stream", {})
    lines += ["", f"## One client streams {big.get('bytes', 0) // 2**20} MiB (OpenAI SSE, HTTP/1.1)", "",
              "| figure | direct | mitmdump | meterproxy |", "|---|---|---|---|"]
    for label, key in (("MiB/s", "mib_per_s"), ("complete", "complete"),
                       ("proxy peak RSS during the load scenarios MiB", "peak_rss_under_load_mib"),
                       ("proxy RSS before MiB", "rss_before_mib"), ("proxy peak RSS while streaming MiB", "rss_max_mib"),
                       ("proxy RSS growth MiB", "rss_growth_mib")):
        lines.append(f"| {label} | {' | '.join(_cell(_get(big, p, key)) for p in ('direct', 'mitmdump', 'meterproxy'))} |")
    ledger, w = result.get("ledger", {}), result.get("writer", {})
    idle = result.get("rss_at_start_mib", {})
    lines += [
        "",
        f"Proxy RSS 2 s after start, idle: mitmdump {_cell(idle.get('mitmdump'))} MiB, "
        f"meterproxy {_cell(idle.get('meterproxy'))} MiB, and its meter process {_cell(idle.get('meter_process'))} MiB.",
        "",
        "## Ledger and writer",
        "",
        f"- Ledger after SIGTERM (exit {ledger.get('meterproxy_exit_code')}): {ledger.get('rows')} rows for "
        f"{ledger.get('requests')} requests; by outcome {ledger.get('rows_by_outcome')}; longest wait for the "
        f"ledger to catch up after a segment {ledger.get('max_lag_after_segment_ms')} ms.",
        f"- Ledger writer alone (LedgerWriter + Meter, OpenAI JSON calls): offered {w.get('offered_per_s')} "
        f"calls/s for {w.get('seconds')} s, queue max {w.get('queue_max')} (mean {w.get('queue_mean_first_third')} "
        f"in the first third, {w.get('queue_mean_last_third')} in the last), drained "
        f"{w.get('drain_after_offer_ms')} ms after the last; a burst of {w.get('burst_calls')} written at "
        f"{w.get('burst_written_per_s')} calls/s.",
        "- Writer-thread CPU per call to meter, price and redact it, by storage policy (µs): "
        + "; ".join(f"{policy}: JSON {c['json']}, stream {c['sse']}" for policy, c in w.get("record_cpu_us", {}).items())
        + ".",
        "",
    ]
    return "\n".join(lines)


def _load(values: list[float] | tuple[float, ...]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)
