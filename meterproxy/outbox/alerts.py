"""Delivering budget alerts to the ``[alerts] webhook``, never lost.

:mod:`meterproxy.budgets` writes each alert to the ledger's ``alerts`` table (state ``pending``)
in the transaction of the call that raised it. An :class:`AlertSender` thread, woken after each
commit, POSTs pending alerts in the configured format: ``json`` (the alert's fields), ``slack``
(``{"text": ...}``, for Slack and compatible incoming webhooks) or ``ntfy`` (the message as
plain text, with ``Title``, ``Priority`` and ``Tags`` headers). Delivery reuses LockN Logger's
HTTP client and rules (:mod:`meterproxy.outbox.sender`): 2xx is delivered; network errors, 408,
429, 3xx and 5xx are retried with a growing delay; other 4xx mark the alert ``rejected``.
Webhook URLs often carry a secret in their path: logs show the scheme and host only.
"""

from __future__ import annotations

import json
import logging
import random
import time
from typing import Any
from urllib.parse import urlsplit

from sqlite_utils import Database

from meterproxy.config import AlertSettings, ForwardSettings, Home
from meterproxy.errors import MeterproxyError
from meterproxy.ledger.db import connect
from meterproxy.outbox.sender import IDLE_POLL, Attempt, _Http
from meterproxy.outbox.settings import Forwarding
from meterproxy.outbox.thread import DeliveryThread
from meterproxy.times import iso_utc, parse_iso

log = logging.getLogger("meterproxy")

RETRY_DELAY = 1.0
MAX_DELAY = 300.0
TIMEOUT = 10.0
BATCH = 20


def webhook_body(payload: str, format: str) -> tuple[bytes, dict[str, str]]:
    """What one POST carries for an alert (its stored JSON ``payload``), and its extra headers."""
    alert: dict[str, Any] = json.loads(payload)
    if format == "slack":
        return json.dumps({"text": alert["message"]}).encode(), {}
    if format == "ntfy":
        over = alert["level"] == "over"
        headers = {
            "content-type": "text/plain; charset=utf-8",
            "title": f"meterproxy budget {alert['level']}: {alert['budget']}",
            "priority": "high" if over else "default",
            "tags": "rotating_light" if over else "warning",
        }
        return alert["message"].encode(), headers
    return json.dumps({"source": "meterproxy", **alert}).encode(), {}


class AlertSender(DeliveryThread):
    """Delivers the pending alerts of one home to its webhook, on its own thread."""

    def __init__(self, home: Home, settings: AlertSettings):
        super().__init__("meterproxy-alerts")
        assert settings.webhook
        self.home = home
        self.settings = settings
        parts = urlsplit(settings.webhook)
        self.where = f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"
        forward = ForwardSettings(endpoint=settings.webhook, format="flat", timeout=TIMEOUT)
        self._http = _Http(Forwarding(forward, enabled=True))
        self._base_headers = dict(self._http._headers)

    def _run(self) -> None:
        try:
            db = connect(self.home.ledger)
        except MeterproxyError as e:
            log.error("budget alerts are not sent: %s", e)
            return
        try:
            while not self._stop.is_set():
                self._wake.clear()
                try:
                    wait = self.deliver_due(db)
                except Exception:
                    log.exception("sending budget alerts failed; retrying later")
                    wait = RETRY_DELAY
                self._wake.wait(wait)
        finally:
            self._http.close()
            db.close()

    def deliver_due(self, db: Database) -> float:
        """POST every due alert once; seconds until the next one is due (at most IDLE_POLL)."""
        now = time.time()
        rows = db.execute(
            "SELECT alert_id, payload, attempts FROM alerts WHERE state = 'pending' AND next_attempt_at <= ? "
            "ORDER BY created_at, rowid LIMIT ?",
            [iso_utc(now), BATCH],
        ).fetchall()
        for alert_id, payload, attempts in rows:
            if self._stop.is_set():
                break
            self._deliver(db, alert_id, payload, attempts)
        if len(rows) == BATCH:
            return 0.0
        row = db.execute("SELECT min(next_attempt_at) FROM alerts WHERE state = 'pending'").fetchone()
        if not row or row[0] is None:
            return IDLE_POLL
        return min(max(parse_iso(row[0]).timestamp() - time.time(), 0.01), IDLE_POLL)

    def _deliver(self, db: Database, alert_id: str, payload: str, attempts: int) -> Attempt:
        body, headers = webhook_body(payload, self.settings.format)
        self._http._headers = self._base_headers | headers
        # _Http.post sends the payload as-is in its flat format, with the alert id as idempotency key.
        attempt = self._http.post(alert_id, body.decode())
        now = time.time()
        attempts += 1
        update: dict[str, Any] = {
            "attempts": attempts, "last_attempt_at": iso_utc(now),
            "last_status": attempt.status, "last_error": attempt.error,
        }
        if attempt.outcome == "delivered":
            update |= {"state": "delivered", "delivered_at": iso_utc(now)}
        elif attempt.outcome == "rejected":
            update["state"] = "rejected"
            log.warning("budget alert webhook %s rejected alert %s: HTTP %s", self.where, alert_id, attempt.status)
        else:
            ceiling = min(MAX_DELAY, RETRY_DELAY * 2 ** min(attempts - 1, 32))
            wait = max(random.uniform(ceiling / 2, ceiling), attempt.retry_after or 0)
            update["next_attempt_at"] = iso_utc(now + wait)
            log.log(logging.WARNING if attempts == 1 else logging.DEBUG,
                    "budget alert webhook %s: %s; retrying", self.where, attempt.error)
        assignments = ", ".join(f"{name} = ?" for name in update)
        db.execute(f"UPDATE alerts SET {assignments} WHERE alert_id = ?", [*update.values(), alert_id])
        return attempt
