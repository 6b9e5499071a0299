"""A running proxy's price table, reloaded when the user's ``pricing.toml`` changes.

The ledger writer asks for the table before it prices each call: one ``stat`` of the file
(microseconds, on the writer's thread, never on the event loop). A changed file (modification
time, size or inode) or a SIGHUP (:meth:`PriceFile.request_reload`) reloads it, so the next call
is priced by the new table. A file that does not parse keeps the previous table, with one
logged error per version of the file.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from meterproxy.errors import MeterproxyError
from meterproxy.pricing.table import PriceTable

log = logging.getLogger("meterproxy")

Signature = tuple[int, int, int] | None
"""(mtime_ns, size, inode) of the file; None when there is none."""


class PriceFile:
    """The effective price table of the bundled prices and a user file, kept current."""

    def __init__(self, path: Path):
        self.path = path
        self._signature = self._stat()
        self._table = PriceTable.load(path)  # a bad file at start fails the start
        self._forced = threading.Event()
        self.reloads = 0

    def table(self) -> PriceTable:
        """The current table, reloaded first if the file changed or a reload was requested."""
        signature = self._stat()
        if signature != self._signature or self._forced.is_set():
            self._forced.clear()
            self._reload(signature)
        return self._table

    def request_reload(self) -> None:
        """Reload before the next call is priced, changed or not (SIGHUP). Thread- and signal-safe."""
        self._forced.set()

    def _reload(self, signature: Signature) -> None:
        self._signature = signature
        try:
            table = PriceTable.load(self.path)
        except MeterproxyError as e:
            log.error("pricing.toml not reloaded, still pricing with version %s: %s", self._table.version, e)
            return
        if table.version != self._table.version:
            log.warning("prices reloaded from %s: pricing version %s -> %s", self.path, self._table.version, table.version)
        self._table = table
        self.reloads += 1

    def _stat(self) -> Signature:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino
