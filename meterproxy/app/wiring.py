"""The one composition root: a home and its config in, the running pipeline out.

:class:`Pipeline` builds every stage of a metering proxy (routes, storage policy and
redactor, price table, meter, ledger writer, JSONL mirror, outbox and sender) and starts and
stops them together. The mitmproxy addon holds a pipeline and only feeds it exchanges; a stage
that needs another gets it here, never by building it itself.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import certifi

from meterproxy.budgets.book import BudgetBook
from meterproxy.budgets.live import LivePublisher
from meterproxy.config import STORE_POLICIES, Config, Home
from meterproxy.errors import MeterproxyError
from meterproxy.ledger import calllog
from meterproxy.ledger.mirror import JsonlMirror
from meterproxy.ledger.writer import LedgerWriter
from meterproxy.meter.record import Meter
from meterproxy.meter.storage import Storage
from meterproxy.outbox.alerts import AlertSender
from meterproxy.outbox.otel import EXTRA_HINT, OtelOutbox, Otlp, extra_installed
from meterproxy.outbox.otel_sender import OtelSender
from meterproxy.outbox.receipt import Outbox
from meterproxy.outbox.sender import Sender
from meterproxy.outbox.settings import Forwarding
from meterproxy.pricing.reload import PriceFile
from meterproxy.pricing.table import PriceTable
from meterproxy.providers.registry import PROVIDERS
from meterproxy.redact.engine import Redactor
from meterproxy.redact.logs import redact_logs
from meterproxy.wire.routes import RouteTable

log = logging.getLogger("meterproxy")


@dataclass(frozen=True)
class Settings:
    """What the command line (or mitmproxy options) adds to config.toml; empty means config.toml's."""

    home: str = ""
    routes: Sequence[str] = ()
    upstream_ca: str = ""
    store: str = ""
    forward: bool = False
    forward_previews: bool = False
    jsonl: bool = True


@dataclass
class Pipeline:
    """Every stage a metering proxy runs for one home, wired together."""

    home: Home
    config: Config
    routes: RouteTable
    storage: Storage
    writer: LedgerWriter
    sender: Sender | None
    upstream_bundle: Path | None
    """Public roots plus the configured upstream CA, for mitmproxy's upstream TLS (None: public roots)."""
    budgets: BudgetBook | None = None
    """Live budgets checked in the request hook (None: no limit configured)."""
    alerts: AlertSender | None = None
    budgets_live: LivePublisher | None = None
    """Publishes the budgets (with calls in flight) for ``meterproxy budget``."""
    otel_sender: OtelSender | None = None

    @classmethod
    def build(cls, settings: Settings) -> Pipeline:
        """Build the pipeline (nothing runs yet); a bad home, config or price file raises MeterproxyError."""
        home = Home.resolve(settings.home or None).ensure()
        config = home.load_config()
        routes = RouteTable.build(settings.routes, config.routes, PROVIDERS)
        storage = _storage(settings.store or config.storage.store, config)
        price_file = PriceFile(home.pricing_file)
        meter = Meter(price_file.table(), storage, price_file)
        upstream_ca = settings.upstream_ca or config.proxy.upstream_ca
        bundle = _upstream_bundle(home, Path(upstream_ca).expanduser()) if upstream_ca else None
        forwarding = Forwarding.resolve(
            config, os.environ, settings.forward, settings.forward_previews, store_policy=storage.policy,
        )
        writer = LedgerWriter(home.ledger, meter)
        if settings.jsonl and config.logs.jsonl:
            writer.after_commit.append(JsonlMirror(home.ledger, home.logs))
        if calllog.log.isEnabledFor(logging.DEBUG):  # meterproxy start -v
            writer.after_commit.append(calllog.log_calls)
        sender = attach_outbox(writer, home, forwarding)
        budgets, alerts = attach_budgets(writer, home, config, meter.prices)
        live = LivePublisher(budgets, home.root) if budgets is not None else None
        otel_sender = attach_otel(writer, home, Otlp.resolve(config, os.environ))
        return cls(home, config, routes, storage, writer, sender, bundle, budgets, alerts, live, otel_sender)

    def start(self) -> None:
        """Open the ledger and start the writer (a broken ledger raises here), then the rest."""
        self.writer.start()
        redact_logs(self.storage.redactor)
        log.info(self.describe())
        if self.sender is not None:
            self.sender.start()
        if self.budgets is not None:
            self.budgets.load(self.home.ledger)
            log.info(self.budgets.describe())
        if self.alerts is not None:
            self.alerts.start()
        if self.budgets_live is not None:
            self.budgets_live.start()
        if self.otel_sender is not None:
            self.otel_sender.start()

    def reload_prices(self) -> None:
        """Reload pricing.toml before the next call is priced (SIGHUP)."""
        if self.writer.meter.price_file is not None:
            self.writer.meter.price_file.request_reload()
            log.warning("SIGHUP: pricing.toml is reloaded before the next call is priced")

    def close(self) -> None:
        """Write everything queued, stop the sender (undelivered receipts stay in the outbox)."""
        self.writer.close()
        if self.sender is not None:
            self.sender.stop()
        if self.alerts is not None:
            self.alerts.stop()
        if self.budgets_live is not None:
            self.budgets_live.stop()
        if self.otel_sender is not None:
            self.otel_sender.stop()

    def describe(self) -> str:
        """What of each call's content is stored, in one line."""
        storage = self.storage
        if storage.policy == "none":
            return "storing no call content (metadata and usage only)"
        previews = f"previews of {storage.preview_chars} characters"
        if storage.policy == "preview":
            return f"storing redacted {previews}"
        return f"storing redacted full bodies (compressed) and {previews}"


def attach_outbox(writer: LedgerWriter, home: Home, forwarding: Forwarding) -> Sender | None:
    """Queue a receipt with each call ``writer`` records and return their (unstarted) sender; None when off."""
    if not forwarding.enabled:
        return None
    sender = Sender(home, forwarding)
    writer.in_transaction.append(Outbox(forwarding))
    writer.after_commit.append(sender.wake)
    return sender


def attach_budgets(
    writer: LedgerWriter, home: Home, config: Config, prices: PriceTable,
) -> tuple[BudgetBook | None, AlertSender | None]:
    """Settle each call's cost into the live budgets as ``writer`` records it, and deliver their
    alerts to ``[alerts] webhook`` (both unstarted); (None, None) when no budget is set."""
    webhook = config.alerts.webhook
    book = BudgetBook.build(config.budgets, prices, deliver=bool(webhook))
    if book is None:
        return None, None
    writer.in_transaction.append(book.settle)
    alerts = AlertSender(home, config.alerts) if webhook else None
    if alerts is not None:
        writer.after_commit.append(alerts.wake)
    return book, alerts


def attach_otel(writer: LedgerWriter, home: Home, otlp: Otlp) -> OtelSender | None:
    """Queue each call ``writer`` records for the OpenTelemetry collector and return the (unstarted) sender.

    None when export is off, or when the ``otel`` extra is missing: then calls are still queued (and
    sent by a later start with the extra installed) and a warning says what to install.
    """
    if not otlp.enabled:
        return None
    writer.in_transaction.append(OtelOutbox(otlp))
    log.info(otlp.describe())
    if not extra_installed():
        log.warning("OpenTelemetry export needs the otel extra: %s (calls are queued in the ledger until then)",
                    EXTRA_HINT)
        return None
    sender = OtelSender(home, otlp)
    writer.after_commit.append(sender.wake)
    return sender


def _storage(policy: str, config: Config) -> Storage:
    if policy not in STORE_POLICIES:
        raise MeterproxyError(f"bad storage policy {policy!r}: choose one of {', '.join(STORE_POLICIES)}")
    redactor = Redactor(config.redact.patterns, config.redact.allow)
    return Storage(policy, config.storage.preview_chars, redactor)  # type: ignore[arg-type]


def _upstream_bundle(home: Home, extra_ca: Path) -> Path:
    """Public roots plus ``extra_ca``, written to the home: mitmproxy trusts one file only."""
    try:
        extra = extra_ca.read_bytes()
    except OSError as e:
        raise MeterproxyError(f"cannot read upstream CA {extra_ca}: {e.strerror}") from e
    if b"-----BEGIN CERTIFICATE-----" not in extra:
        raise MeterproxyError(f"upstream CA {extra_ca} holds no PEM certificate")
    bundle = home.upstream_bundle
    with open(bundle, "wb") as out, open(certifi.where(), "rb") as roots:
        shutil.copyfileobj(roots, out)
        out.write(b"\n" + extra)
    return bundle
