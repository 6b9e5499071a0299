"""Delivering the ``otel_outbox`` table to an OpenTelemetry collector, OTLP/HTTP protobuf.

An :class:`OtelSender` runs on its own thread in the proxy (woken after each commit, see
:func:`meterproxy.app.recording.attach_otel`): for each signal, it POSTs the oldest pending calls
in batches (``batch_size`` spans, or the metrics of as many calls, per request) and marks them
delivered once the collector has answered 2xx. Nothing of it runs on the event loop or the
writer's thread, and nothing is deleted: what is not delivered stays pending in the ledger
across outages and restarts.

Answers, as the OTLP/HTTP specification has them: 2xx is delivered (a partial success, spans
the collector says it dropped, is logged and kept in ``last_error``: resending would not
help); no answer, 408, 429, 502, 503 and 504 are retried, the signal backing off
(exponentially, with jitter, at most ``max_delay``; ``Retry-After`` honoured) while newer calls
wait behind; any other status marks the batch ``rejected``, kept with the collector's answer.

Headers (API keys) go on the wire only: never into the ledger, a log line or an error message.
"""

from __future__ import annotations

import gzip
import http.client
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from meterproxy import __version__
from meterproxy.config import Home
from meterproxy.errors import MeterproxyError
from meterproxy.files import locked
from meterproxy.ledger.db import connect
from meterproxy.outbox.otel import EXTRA_HINT, Otlp
from meterproxy.outbox.sender import KEPT_BODY, KeptAlive, _describe, _retry_after
from meterproxy.outbox.thread import DeliveryThread
from meterproxy.times import iso_utc

log = logging.getLogger("meterproxy")

RETRYABLE = frozenset({408, 429, 502, 503, 504})
IDLE_POLL = 30.0
LINGER = 0.5
"""Seconds the sender waits after being woken by new calls, so that calls close together share a request."""


@dataclass(slots=True)
class Answer:
    """The collector's answer to one POST (``status`` None: no answer at all)."""

    status: int | None
    error: str | None = None
    body: bytes = b""
    retry_after: float | None = None

    @property
    def outcome(self) -> str:
        if self.status is not None and 200 <= self.status < 300:
            return "delivered"
        return "retry" if self.status is None or self.status in RETRYABLE else "rejected"


class OtelSender(DeliveryThread):
    """Delivers the queued spans and metrics of one home to the collector."""

    def __init__(self, home: Home, otlp: Otlp):
        super().__init__("meterproxy-otel")
        self.home = home
        self.otlp = otlp
        self.settings = otlp.settings
        self._http = {signal: _Http(otlp, signal) for signal in otlp.urls}
        self._failures = dict.fromkeys(otlp.urls, 0)
        self._retry_at = dict.fromkeys(otlp.urls, 0.0)
        self._last_error: dict[str, str | None] = dict.fromkeys(otlp.urls)

    def drain(self, retry_rejected: bool = False) -> dict[str, Any]:
        """Send everything pending now, in the caller's thread (``meterproxy otel --send``).

        Per signal: calls delivered and rejected now, and the error that stopped it (None: all sent).
        """
        try:
            from meterproxy.outbox import otlp as encoder
        except ImportError:
            raise MeterproxyError(f"OpenTelemetry export needs the otel extra: {EXTRA_HINT}") from None
        db = connect(self.home.ledger)
        report: dict[str, Any] = {}
        try:
            with locked(self.home.root / "otel.lock", wait=True):
                if retry_rejected:
                    db.execute("UPDATE otel_outbox SET state = 'pending' WHERE state = 'rejected'")
                for signal in self.otlp.urls:
                    before = _states(db, signal)
                    while self._round(db, signal, encoder):
                        pass
                    after = _states(db, signal)
                    report[signal] = {
                        "delivered": after.get("delivered", 0) - before.get("delivered", 0),
                        "rejected": max(after.get("rejected", 0) - before.get("rejected", 0), 0),
                        "pending": after.get("pending", 0),
                        "error": self._last_error.get(signal) if self._failures[signal] else None,
                    }
        finally:
            for conn in self._http.values():
                conn.close()
            db.close()
        return report

    def _run(self) -> None:
        try:
            from meterproxy.outbox import otlp as encoder  # the otel extra, needed on this thread only
            db = connect(self.home.ledger)
        except (ImportError, MeterproxyError) as e:
            log.error("OpenTelemetry export stopped: %s", e)
            return
        try:
            while not self._stop.is_set():
                self._wake.clear()
                waits = [IDLE_POLL]
                with locked(self.home.root / "otel.lock") as held:
                    if not held:  # another proxy on this home is exporting
                        self._stop.wait(1.0)
                        continue
                    for signal in self.otlp.urls:
                        if self._stop.is_set():
                            break
                        if (due := self._retry_at[signal] - time.time()) > 0:
                            waits.append(due)
                            continue
                        try:
                            more = self._round(db, signal, encoder)
                        except Exception:
                            log.exception("OpenTelemetry export of %s failed; retrying later", signal)
                            more = self._failed(signal, Answer(None, "internal error"))
                        if more:
                            waits.append(0)
                        elif self._retry_at[signal] > time.time():
                            waits.append(self._retry_at[signal] - time.time())
                if min(waits) > 0 and self._wake.wait(min(waits)):
                    self._stop.wait(LINGER)  # new calls: let the next commits join them in one request
        finally:
            for conn in self._http.values():
                conn.close()
            pending = db.execute("SELECT count(DISTINCT call_id) FROM otel_outbox WHERE state = 'pending'").fetchone()[0]
            db.close()
            if pending:
                log.info("%d calls queued for the OpenTelemetry collector: sent on next start or by "
                         "`meterproxy otel --send`", pending)

    def _round(self, db: Database, signal: str, encoder: Any) -> bool:
        """Send one batch of a signal; True when more may be waiting."""
        rows = db.execute(
            "SELECT call_id, payload FROM otel_outbox WHERE signal = ? AND state = 'pending' "
            "ORDER BY call_id LIMIT ?", [signal, self.settings.batch_size],
        ).fetchall()
        if not rows:
            return False
        spans = [json.loads(payload) for _, payload in rows]
        build = encoder.traces_body if signal == "traces" else encoder.metrics_body
        answer = self._http[signal].post(build(spans, self.settings))
        ids = [call_id for call_id, _ in rows]
        now = time.time()
        update: dict[str, Any] = {"last_attempt_at": iso_utc(now), "last_status": answer.status}
        if answer.outcome == "delivered":
            rejected, message = encoder.partial_success(signal, answer.body)
            if rejected or message:
                log.warning("the collector dropped %d of %d %s: %s", rejected, len(ids), signal,
                            self.otlp.scrub(message)[:200])
            update |= {"state": "delivered", "delivered_at": iso_utc(now),
                       "last_error": f"partial success: {rejected} rejected: {message}"[:KEPT_BODY]
                       if rejected or message else None}
            if self._failures[signal]:
                log.info("OpenTelemetry collector at %s is answering again", self.otlp.where(signal))
                self._failures[signal] = 0
        elif answer.outcome == "rejected":
            text = self.otlp.scrub(answer.body.decode("utf-8", "replace"))[:KEPT_BODY]
            update |= {"state": "rejected", "last_error": f"{answer.error}: {text}"}
            log.warning("the collector at %s rejected %d %s: %s %s (kept in the ledger's otel_outbox)",
                        self.otlp.where(signal), len(ids), signal, answer.error, text[:200])
        else:
            self._failed(signal, answer)
            update |= {"last_error": answer.error, "next_attempt_at": iso_utc(self._retry_at[signal])}
        marks = ", ".join("?" * len(ids))
        assignments = ", ".join(f"{name} = ?" for name in update)
        db.execute(
            f"UPDATE otel_outbox SET {assignments}, attempts = attempts + 1 WHERE signal = ? AND call_id IN ({marks})",
            [*update.values(), signal, *ids],
        )
        return answer.outcome != "retry" and len(rows) == self.settings.batch_size

    def _failed(self, signal: str, answer: Answer) -> bool:
        """Back the signal off after a failed round; always False (nothing more now)."""
        self._last_error[signal] = answer.error
        if not self._failures[signal] and self._thread.is_alive():  # `meterproxy otel --send` reports it itself
            log.warning("OpenTelemetry collector at %s: %s; %s stay queued in the ledger and are retried",
                        self.otlp.where(signal), answer.error, signal)
        self._failures[signal] += 1
        ceiling = min(self.settings.max_delay, self.settings.retry_delay * 2 ** min(self._failures[signal] - 1, 32))
        self._retry_at[signal] = time.time() + max(random.uniform(ceiling / 2, ceiling), answer.retry_after or 0)
        return False


class _Http:
    """POSTs of one signal over one kept-alive connection (never through a proxy)."""

    def __init__(self, otlp: Otlp, signal: str):
        self.otlp = otlp
        self.signal = signal
        self._conn = KeptAlive(otlp.urls[signal], otlp.settings.timeout, otlp.settings.certificate, "collector's CA")
        self._gzip = otlp.settings.compression == "gzip"
        self._headers = otlp.headers | {
            "content-type": "application/x-protobuf", "user-agent": f"meterproxy/{__version__}",
        }
        if self._gzip:
            self._headers["content-encoding"] = "gzip"

    def post(self, body: bytes) -> Answer:
        if self._gzip:
            body = gzip.compress(body, compresslevel=5)
        try:
            response, data = self._conn.post(body, self._headers, KEPT_BODY * 16)
        except (OSError, http.client.HTTPException) as e:
            return Answer(None, self.otlp.scrub(_describe(e, self._conn.timeout)))
        answer = Answer(response.status, body=data)
        if answer.outcome != "delivered":
            answer.error = f"HTTP {response.status}"
            answer.retry_after = _retry_after(response.getheader("retry-after"))
        return answer

    def close(self) -> None:
        self._conn.close()


def _states(db: Database, signal: str) -> dict[str, int]:
    return dict(db.execute("SELECT state, count(*) FROM otel_outbox WHERE signal = ? GROUP BY state", [signal]))


def otel_status(db: Database) -> dict[str, Any]:
    """Per signal: counts per state, the oldest pending call, and the newest rejections."""
    status: dict[str, Any] = {}
    for signal in ("traces", "metrics"):
        counts = _states(db, signal)
        oldest = db.execute(
            "SELECT call_id, created_at, attempts, last_attempt_at, last_error FROM otel_outbox "
            "WHERE signal = ? AND state = 'pending' ORDER BY call_id LIMIT 1", [signal],
        ).fetchone()
        rejected = db.execute(
            "SELECT last_status, last_error, count(*) FROM otel_outbox WHERE signal = ? AND state = 'rejected' "
            "GROUP BY last_status, last_error ORDER BY max(last_attempt_at) DESC LIMIT 5", [signal],
        ).fetchall()
        status[signal] = {
            "pending": counts.get("pending", 0),
            "delivered": counts.get("delivered", 0),
            "rejected": counts.get("rejected", 0),
            "oldest_pending": dict(zip(("call_id", "created_at", "attempts", "last_attempt_at", "last_error"), oldest))
            if oldest else None,
            "rejections": [{"status": s, "error": e, "calls": n} for s, e, n in rejected],
        }
    return status
