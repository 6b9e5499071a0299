"""Delivering the outbox to LockN Logger.

A :class:`Sender` delivers the outbox: in the proxy on its own thread (woken after each commit,
see :func:`meterproxy.app.recording.attach_outbox`), or in the caller's thread for ``meterproxy forward``. One receipt per
``POST``, with ``Idempotency-Key: <receiptId>``, so a receipt sent twice (a crash between the
Logger's answer and our bookkeeping) is still stored once.

Delivery: 2xx is delivered; network errors, timeouts, 408, 429 (``Retry-After`` honoured),
3xx and 5xx are retried, three quick tries per round and then a growing delay between rounds
(exponential, with jitter, at most ``max_delay``); a receipt is never dropped. Any other 4xx
marks it ``rejected`` with the Logger's answer kept; ``meterproxy forward --retry-rejected``
sends those again. Rounds hold a lock file, so the proxy and ``meterproxy forward`` never send
the same receipt at the same time.

The API key goes in headers only: never into the ledger, a log line or an error message.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import os
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from sqlite_utils import Database

from meterproxy import __version__
from meterproxy.config import Home
from meterproxy.errors import MeterproxyError
from meterproxy.files import locked
from meterproxy.ledger.db import connect
from meterproxy.outbox.receipt import wire_body
from meterproxy.outbox.settings import Forwarding
from meterproxy.outbox.status import count_pending
from meterproxy.outbox.thread import DeliveryThread
from meterproxy.times import iso_utc, parse_iso

log = logging.getLogger("meterproxy")

QUICK_TRIES = 3
QUICK_WAIT_MAX = 30.0
"""A ``Retry-After`` longer than this ends the round instead of being waited out in it."""
IDLE_POLL = 30.0
RETRY_AFTER_MAX = 86400.0
KEPT_BODY = 4096
"""Characters of a rejecting answer kept in the outbox."""

Outcome = Literal["delivered", "retry", "rejected"]


# --- delivery ------------------------------------------------------------------------------


@dataclass(slots=True)
class Attempt:
    """The Logger's answer to one POST (``status`` None: no answer at all)."""

    status: int | None
    error: str | None = None
    body: str = ""
    retry_after: float | None = None
    logger_id: str | None = None

    @property
    def outcome(self) -> Outcome:
        if self.status is not None and 200 <= self.status < 300:
            return "delivered"
        if self.status is None or self.status in (408, 429) or self.status < 400 or self.status >= 500:
            return "retry"
        return "rejected"


@dataclass(slots=True)
class Round:
    """What one delivery round did."""

    delivered: int = 0
    rejected: int = 0
    failure: Attempt | None = None
    """The answer that ended the round early, when the Logger failed."""
    retry_at: float = 0.0
    full: bool = False
    """The round took a whole batch: more may be waiting."""


@dataclass(slots=True)
class DrainReport:
    """What :meth:`Sender.drain` did."""

    delivered: int = 0
    rejected: int = 0
    pending: int = 0
    failure: Attempt | None = None


class Sender(DeliveryThread):
    """Delivers the outbox of one home to LockN Logger."""

    def __init__(self, home: Home, forwarding: Forwarding):
        super().__init__("meterproxy-forward")
        self.home = home
        self.forwarding = forwarding
        self.settings = forwarding.settings
        self._http = _Http(forwarding)
        self.on_attempt: Callable[[str, int, Attempt | None], None] | None = None
        """Told (receipt id, try number, None) before each POST and (..., the answer) after it:
        ``meterproxy forward`` shows its progress with it."""

    # --- in the proxy: a thread ------------------------------------------------------------

    def _run(self) -> None:
        try:
            db = connect(self.home.ledger)
        except MeterproxyError as e:
            log.error("receipts are not forwarded: %s", e)
            return
        failed_rounds = 0
        # A fresh start tries everything pending at once (it may follow a crash or an outage);
        # after the first failure, each receipt waits for its own retry time.
        ignore_schedule = True
        try:
            while not self._stop.is_set():
                self._wake.clear()
                try:
                    result = self._round(db, ignore_schedule, wait=False)
                except Exception:
                    log.exception("forwarding receipts failed; retrying later")
                    result = Round(failure=Attempt(None, "internal error"))
                if result is None:  # `meterproxy forward` is delivering right now
                    self._stop.wait(1.0)
                    continue
                if result.failure is not None:
                    log.log(
                        logging.DEBUG if failed_rounds else logging.WARNING,
                        "LockN Logger at %s: %s; receipts stay in the outbox and are retried",
                        self.forwarding.where(), result.failure.error,
                    )
                    failed_rounds += 1
                    ignore_schedule = False
                    # New calls do not cut a backoff short: only stop() does.
                    self._stop.wait(max(result.retry_at - time.time(), self._delay(failed_rounds)))
                    continue
                if failed_rounds and (result.delivered or result.rejected):
                    log.info("LockN Logger at %s is answering again", self.forwarding.where())
                    failed_rounds = 0
                if not result.full:
                    self._wake.wait(_idle_wait(db))
        finally:
            self._http.close()
            pending = count_pending(db)
            db.close()
            if pending:
                log.info("%d receipts pending in the outbox: sent on next start or by `meterproxy forward`", pending)

    # --- `meterproxy forward`: in the caller's thread ---------------------------------------

    def drain(self, retry_rejected: bool = False) -> DrainReport:
        """Send everything pending now, until done or the Logger fails a round."""
        report = DrainReport()
        db = connect(self.home.ledger)
        try:
            if retry_rejected:
                db.execute(
                    "UPDATE outbox SET state = 'pending', next_attempt_at = ? WHERE state = 'rejected'",
                    [iso_utc(time.time())],
                )
            while True:
                result = self._round(db, ignore_schedule=True, wait=True)
                assert result is not None
                report.delivered += result.delivered
                report.rejected += result.rejected
                if result.failure is not None:
                    report.failure = result.failure
                    break
                if not result.full:
                    break
            report.pending = count_pending(db)
        finally:
            self._http.close()
            db.close()
        return report

    # --- rounds ----------------------------------------------------------------------------

    def _round(self, db: Database, ignore_schedule: bool, wait: bool) -> Round | None:
        """Send one batch of due receipts; None when another process holds the outbox."""
        with locked(self.home.root / "forward.lock", wait) as held:
            if not held:
                return None
            due = "" if ignore_schedule else "AND next_attempt_at <= ?"
            rows = db.execute(
                f"SELECT receipt_id, payload, attempts FROM outbox WHERE state = 'pending' {due} "
                "ORDER BY next_attempt_at, receipt_id LIMIT ?",
                ([] if ignore_schedule else [iso_utc(time.time())]) + [self.settings.batch_size],
            ).fetchall()
            result = Round(full=len(rows) == self.settings.batch_size)
            for receipt_id, payload, attempts in rows:
                if self._stop.is_set():
                    result.full = False
                    break
                attempt = self._deliver(db, receipt_id, payload, attempts)
                if attempt.outcome == "delivered":
                    result.delivered += 1
                elif attempt.outcome == "rejected":
                    result.rejected += 1
                else:
                    result.failure = attempt
                    result.retry_at = time.time() + (attempt.retry_after or 0)
                    result.full = False
                    break
            return result

    def _deliver(self, db: Database, receipt_id: str, payload: str, attempts: int) -> Attempt:
        """Up to three quick tries of one receipt; its outcome recorded in the outbox."""
        tries = 0
        while True:
            if self.on_attempt is not None:
                self.on_attempt(receipt_id, tries + 1, None)
            attempt = self._http.post(receipt_id, payload)
            tries += 1
            if self.on_attempt is not None:
                self.on_attempt(receipt_id, tries, attempt)
            if attempt.outcome != "retry" or tries >= QUICK_TRIES or self._stop.is_set():
                break
            wait = max(self._delay(tries - 1), attempt.retry_after or 0)
            if wait > QUICK_WAIT_MAX or self._stop.wait(wait):
                break
        now = time.time()
        attempts += tries
        update: dict[str, Any] = {
            "attempts": attempts,
            "last_attempt_at": iso_utc(now),
            "last_status": attempt.status,
            "last_error": attempt.error,
        }
        if attempt.outcome == "delivered":
            update |= {"state": "delivered", "delivered_at": iso_utc(now), "logger_id": attempt.logger_id}
            log.debug("receipt %s delivered", receipt_id)
        elif attempt.outcome == "rejected":
            update |= {"state": "rejected", "response_body": attempt.body}
            log.warning(
                "LockN Logger rejected receipt %s: HTTP %s %s (kept; see `meterproxy forward --status`)",
                receipt_id, attempt.status, attempt.body[:200],
            )
        else:
            rounds = attempts // QUICK_TRIES
            wait = max(self._delay(rounds), attempt.retry_after or 0)
            update["next_attempt_at"] = iso_utc(now + wait)
        assignments = ", ".join(f"{name} = ?" for name in update)
        db.execute(f"UPDATE outbox SET {assignments} WHERE receipt_id = ?", [*update.values(), receipt_id])
        return attempt

    def _delay(self, failures: int) -> float:
        """Exponential backoff with jitter: about retry_delay * 2^failures, at most max_delay."""
        ceiling = min(self.settings.max_delay, self.settings.retry_delay * 2 ** min(failures, 32))
        return random.uniform(ceiling / 2, ceiling)


class KeptAlive:
    """POSTs to one URL over one kept-alive connection (never through a proxy)."""

    def __init__(self, url: str, timeout: float, cafile: str | None = None, ca_name: str = "CA"):
        parts = urlsplit(url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.timeout = timeout
        self._cafile = cafile
        """CA certificates to trust besides the system's (``ca_name`` names them in errors)."""
        self._ca_name = ca_name
        self._conn: http.client.HTTPConnection | None = None

    def post(self, body: str | bytes, headers: dict[str, str], limit: int) -> tuple[http.client.HTTPResponse, bytes]:
        """The response and at most ``limit`` bytes of its body; raises OSError or HTTPException when
        the POST fails (a kept-alive connection the server closed while idle is retried once)."""
        while True:
            reused = self._conn is not None
            try:
                conn = self._conn or self._connect()
                conn.request("POST", self._target, body, headers)
                response = conn.getresponse()
                data = response.read(limit)
                if not response.isclosed():  # more body than we read: this connection is done
                    self.close()
                return response, data
            except (OSError, http.client.HTTPException) as e:
                self.close()
                if reused and isinstance(e, _STALE_CONNECTION):
                    continue  # the server closed an idle kept-alive connection: not a failure
                raise

    def _connect(self) -> http.client.HTTPConnection:
        if self._https:
            context = ssl.create_default_context()
            if self._cafile:
                try:
                    context.load_verify_locations(cafile=os.path.expanduser(self._cafile))
                except (OSError, ssl.SSLError) as e:
                    raise OSError(f"cannot load the {self._ca_name} {self._cafile}: "
                                  f"{getattr(e, 'strerror', None) or e}") from e
            self._conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout, context=context)
        else:
            self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class _Http:
    """POSTs receipts to the Logger (never through a proxy)."""

    def __init__(self, forwarding: Forwarding):
        self.forwarding = forwarding
        self._conn = KeptAlive(forwarding.endpoint, forwarding.settings.timeout)
        self._flat = forwarding.settings.format == "flat"
        self._headers = {"content-type": "application/json", "user-agent": f"meterproxy/{__version__}"}
        if key := forwarding.api_key:
            self._headers |= {"authorization": f"Bearer {key}", "x-api-key": key}

    def post(self, receipt_id: str, payload: str) -> Attempt:
        body = wire_body(payload, self._flat)
        headers = self._headers | {"idempotency-key": receipt_id}
        try:
            response, data = self._conn.post(body, headers, KEPT_BODY * 4)
        except (OSError, http.client.HTTPException) as e:
            return Attempt(None, self.forwarding.scrub(_describe(e, self._conn.timeout)))
        text = self.forwarding.scrub(data.decode("utf-8", "replace"))[:KEPT_BODY]
        attempt = Attempt(response.status, body=text)
        if attempt.outcome == "delivered":
            attempt.logger_id = _answer_id(text)
        else:
            attempt.error = f"HTTP {response.status}"
            if 300 <= response.status < 400:
                location = self.forwarding.scrub(response.getheader("location") or "?")
                attempt.error += f" redirect to {location}: set LOCKN_LOGGER_ENDPOINT to the final URL"
            attempt.retry_after = _retry_after(response.getheader("retry-after"))
        return attempt

    def close(self) -> None:
        self._conn.close()


_STALE_CONNECTION = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


def _describe(error: BaseException, timeout: float) -> str:
    if isinstance(error, TimeoutError):
        return f"no answer within {timeout:g}s"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, ssl.SSLError):
        return f"TLS error: {error.reason or error}"
    if isinstance(error, http.client.HTTPException):
        return f"bad HTTP answer: {type(error).__name__}"
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (delay-seconds or an HTTP date, at most a day); None when unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), RETRY_AFTER_MAX) if math.isfinite(seconds) else None


def _answer_id(text: str) -> str | None:
    try:
        answer = json.loads(text)
    except ValueError:
        return None
    value = answer.get("id") if isinstance(answer, dict) else None
    return str(value) if value is not None else None


def _idle_wait(db: Database) -> float:
    """Seconds until the next pending receipt is due (at most IDLE_POLL)."""
    row = db.execute("SELECT min(next_attempt_at) FROM outbox WHERE state = 'pending'").fetchone()
    if not row or row[0] is None:
        return IDLE_POLL
    due = parse_iso(row[0]).timestamp()
    return min(max(due - time.time(), 0.01), IDLE_POLL)
