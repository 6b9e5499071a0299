"""The delivery threads' common life: started with the proxy, woken after each commit, stopped between two POSTs."""

from __future__ import annotations

import threading


class DeliveryThread:
    """A daemon thread that delivers what the ledger queued (receipts, alerts, telemetry).

    Subclasses implement :meth:`_run`: a loop until ``self._stop`` is set that waits on
    ``self._wake`` when there is nothing to send.
    """

    def __init__(self, name: str):
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self, _records: object = None) -> None:
        """Look at the queue now (an after-commit hook: never blocks)."""
        self._wake.set()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop between two POSTs; what is undelivered stays pending in the ledger."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        raise NotImplementedError
