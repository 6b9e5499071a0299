"""Progress of long jobs on stderr (``reprice``, ``forward``): a live bar on a terminal, and
plain lines, at most one every :data:`EVERY` seconds plus the last, when stderr is a file or a pipe."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

EVERY = 2.0
"""Seconds between two progress lines when stderr is not a terminal."""


@contextmanager
def counting(label: str, total: int, unit: str) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``: ``n`` more of ``total`` done, shown as ``label: done of total unit``."""
    if sys.stderr.isatty():
        with Progress(
            TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=Console(stderr=True),
        ) as bar:
            task = bar.add_task(label, total=total)
            yield lambda count: bar.advance(task, count)
        return
    done = said = 0
    shown = time.monotonic()

    def advance(count: int) -> None:
        nonlocal done, said, shown
        done += count
        if time.monotonic() - shown >= EVERY:
            shown, said = time.monotonic(), done
            _line(label, done, total, unit)

    yield advance
    if said != done or not done:
        _line(label, done, total, unit)


def _line(label: str, done: int, total: int, unit: str) -> None:
    share = f" ({done * 100 // total}%)" if total else ""
    click.echo(f"{label}: {done:,} of {total:,} {unit}{share}", err=True)


@contextmanager
def ticking(describe: Callable[[], str], every: float = EVERY) -> Iterator[None]:
    """While the block runs, say ``describe()`` and the time elapsed every ``every`` seconds on stderr
    (a spinner line on a terminal): a job that waits on the network is never silent."""
    if sys.stderr.isatty():
        with Progress(TextColumn("{task.description}"), TimeElapsedColumn(), console=Console(stderr=True),
                      transient=True) as bar:
            task = bar.add_task(describe())
            with _repeating(0.25, lambda: bar.update(task, description=describe())):
                yield
        return
    started = time.monotonic()
    with _repeating(every, lambda: click.echo(f"{describe()} ({time.monotonic() - started:.0f}s)", err=True)):
        yield


@contextmanager
def _repeating(seconds: float, action: Callable[[], None]) -> Iterator[None]:
    """Call ``action`` every ``seconds`` on a thread of its own while the block runs."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(seconds):
            action()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
