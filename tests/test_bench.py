"""The benchmark harness's smoke run, and the addon's one-pass header reading it led to.

Speed targets are judged by ``python -m bench.run --full``, not here: this checks that the
harness works end to end (three paths, results written) and that every metered request is a
ledger row after a SIGTERM shutdown.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mitmproxy import http

from bench.run import PATHS
from meterproxy.wire.headers import header_values, joined
from tests.proxy_process import REPO


def test_quick_benchmark_run(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "quick.json").read_text())
    markdown = (tmp_path / "quick.md").read_text()

    ledger = result["ledger"]
    assert ledger["meterproxy_exit_code"] == 0
    assert ledger["requests"] > 0
    assert ledger["rows"] == ledger["requests"]
    assert ledger["rows_by_outcome"] == {"ok": ledger["requests"]}

    for name, scenario in result["scenarios"].items():
        for path in PATHS:
            figures = scenario[path]
            assert figures["requests"] > 0 and figures["errors"] == 0, (name, path, figures)
            assert figures["latency_ms"]["p50"] > 0
            if scenario["stream"]:
                # Held-back chunks are a timing figure, judged by the benchmark's targets, not here.
                assert figures["chunks"] >= figures["requests"] * 10 and figures["chunks_held_back"] >= 0
            if path != "direct":
                assert figures["cpu_s_per_1000"] > 0
        assert f"## {name}:" in markdown
    for path in PATHS:
        assert result["big_stream"][path]["complete"] is True
        assert result["big_stream"][path]["received"] >= result["big_stream"]["bytes"]
    # Memory figures are real readings of /proc for the two proxies (none for the direct path), in
    # MiB: a Python process with mitmproxy loaded holds tens to hundreds of MiB, so a figure under
    # 10 or over 65536 is in the wrong unit or not a reading. (Memory targets are judged in bench/.)
    assert "rss_before_mib" not in result["big_stream"]["direct"]
    assert set(result["rss_at_start_mib"]) == {"mitmdump", "meterproxy", "meter_process"}
    assert 5 < result["rss_at_start_mib"]["meter_process"] < 65536
    for path in ("mitmdump", "meterproxy"):
        memory = result["big_stream"][path]
        assert 10 < result["rss_at_start_mib"][path] < 65536, (path, result["rss_at_start_mib"])
        assert 10 < memory["rss_before_mib"] < 65536 and 10 < memory["rss_max_mib"] < 65536, (path, memory)
        # The peak so far (VmHWM) is read with the RSS it is a peak of.
        assert memory["peak_rss_under_load_mib"] >= memory["rss_before_mib"], (path, memory)
        # Growth is after minus before, each rounded to 0.1 MiB.
        assert memory["rss_growth_mib"] == pytest.approx(memory["rss_max_mib"] - memory["rss_before_mib"], abs=0.1001)
        assert isinstance(memory["peak_exact"], bool)

    # Every read-only command ran over the ledger as a whole process, and succeeded.
    commands = result["startup"]["commands"]
    assert {"--help", "report --today", "calls", "pricing show gpt-4o"} <= set(commands)
    for name, figures in commands.items():
        assert figures["exit_codes"] == [0] and 0 < figures["median_ms"] <= figures["max_ms"], (name, figures)
        assert f"`meterproxy {name}`" in markdown

    writer = result["writer"]
    assert writer["failed"] == 0
    assert writer["written"] >= writer["burst_calls"] + writer["offered_per_s"] * writer["seconds"] * 0.9
    assert {t["target"] for t in result["targets"]} and all("met" in t for t in result["targets"])
    assert "| Ledger rows after SIGTERM = requests made |" in markdown
    assert result["machine"]["mitmproxy"] and result["load_average"]["end"]


_names = st.sampled_from(["Authorization", "authorization", "X-Api-Key", "Content-Type", "X-Meterproxy-Agent",
                          "user-agent", "Accept"])
_values = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF, exclude_characters="\x7f"), max_size=20)


@given(st.lists(st.tuples(_names, _values), max_size=8))
def test_header_values_read_as_mitmproxy_reads_them(fields: list[tuple[str, str]]) -> None:
    headers = http.Headers([(name.encode(), value.encode()) for name, value in fields])
    found = header_values(headers.fields)
    for name in {name.lower() for name, _ in fields} | {"x-missing"}:
        assert found.get(name, []) == headers.get_all(name)
        assert joined(found, name) == headers.get(name)
