"""The command line's own table drawing gives the very characters rich gives, or leaves the table to rich."""

from __future__ import annotations

import io
import random

from rich.console import Console

from meterproxy.reports.tables import Table, plain_output

WIDTH = 400


def by_rich(table: Table, width: int = WIDTH) -> str:
    out = io.StringIO()
    Console(file=out, width=width).print(table.to_rich())  # a file: not a terminal, as when piped
    return out.getvalue()


def random_table(rng: random.Random) -> Table:
    words = ["", " ", "a", "gpt-4o", "claude-sonnet-4-5", "llama3.1:8b", "1,234,567", "0.0042", "unpriced", "  x",
             "x  ", "12:34:56", "2026-11-22 12:00:00", "a b  c", "total", "(3 more)", "~", "$", "x" * 60, "q?", "~/a",
             "each_agent[ana].daily_usd", "[bold]x[/]", "[/]", ":smile:", "a:100:b", "\\[x]", "[link=x]y"]
    table = Table(
        title=rng.choice([None, "", "Spend today", "Newest 20 calls", "USD per 1M tokens (* in force 2026-11-22 12:00)",
                          "Spend today · agent=bob", "t" * 90]),
        box=rng.choice(["heavy_head", None]), pad_edge=rng.random() < 0.6,
        header_style=rng.choice([None, "bold"]),
    )
    for _ in range(rng.randint(1, 7)):
        table.add_column(rng.choice(words[1:] + ["cost $", "cache r/w"]), justify=rng.choice(["left", "right"]),
                         no_wrap=rng.random() < 0.3)
    for _ in range(rng.randint(0, 8)):
        table.add_row(*(rng.choice(words) for _ in table.columns), style=rng.choice([None, "bold", "dim"]))
        if rng.random() < 0.2:
            table.add_section()
    return table


def test_plain_tables_are_drawn_as_rich_draws_them() -> None:
    rng = random.Random(17)
    drawn = 0
    for _ in range(600):
        table = random_table(rng)
        width = rng.choice([WIDTH, 60])
        mine = table.plain(width)
        if mine is not None:
            drawn += 1
            assert mine == by_rich(table, width), (table, mine, by_rich(table, width))
    assert drawn > 300  # most random tables take the plain path


def test_text_is_shown_as_it_is_and_what_only_rich_can_draw_is_left_to_it() -> None:
    names = Table(title="Spend [today]")
    names.add_column("budget")
    names.add_row("each_agent[ana].daily_usd")
    names.add_row(":smile: [bold]x[/]")
    assert names.plain(WIDTH) == by_rich(names)
    assert "each_agent[ana].daily_usd" in by_rich(names) and ":smile: [bold]x[/]" in by_rich(names)
    for cell in ("café", "日本", "tab\there", "line\nbreak"):
        table = Table()
        table.add_column("c")
        table.add_row(cell)
        assert table.plain(WIDTH) is None, cell
    wide = Table()
    wide.add_column("w")
    wide.add_row("x" * (WIDTH + 1))
    assert wide.plain(WIDTH) is None


def test_plain_output_follows_rich_s_terminal_rules(monkeypatch) -> None:
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    assert plain_output()  # pytest captures stdout: not a terminal
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert not plain_output()
    monkeypatch.setenv("FORCE_COLOR", "")
    assert plain_output()
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    assert not plain_output()
