"""The composition root of the proxy: a home and its config in, the running pipeline out.

:class:`Pipeline` builds what the proxy's hooks use (routes, storage policy and redactor, the
live budgets, the stream counter) and the meter process that records each finished call (its
stages are built by :class:`meterproxy.app.recording.Recorder`), and starts and stops them
together. The mitmproxy addon holds a pipeline and only feeds it exchanges; a stage that needs
another gets it here, never by building it itself.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import certifi

from meterproxy.app.meterproc import MeterProcess
from meterproxy.budgets.book import BudgetBook
from meterproxy.budgets.live import LivePublisher
from meterproxy.budgets.rules import rules_from
from meterproxy.config import STORE_POLICIES, Config, Home
from meterproxy.errors import MeterproxyError
from meterproxy.meter.storage import Storage
from meterproxy.meter.streamcount import StreamCounter
from meterproxy.outbox.otel import Otlp
from meterproxy.outbox.settings import Forwarding
from meterproxy.pricing.reload import PriceFile
from meterproxy.providers.registry import PROVIDERS
from meterproxy.redact.engine import Redactor
from meterproxy.redact.logs import redact_logs
from meterproxy.wire.exchange import Exchange
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
    """The stages of a metering proxy for one home: what the proxy's hooks use in its own process,
    and the :class:`~meterproxy.app.meterproc.MeterProcess` that records each finished call."""

    home: Home
    config: Config
    routes: RouteTable
    storage: Storage
    recorder: MeterProcess
    upstream_bundle: Path | None
    """Public roots plus the configured upstream CA, for mitmproxy's upstream TLS (None: public roots)."""
    budgets: BudgetBook | None = None
    """Live budgets checked in the request hook (None: no limit configured)."""
    budgets_live: LivePublisher | None = None
    """Publishes the budgets (with calls in flight) for ``meterproxy budget``."""
    counter: StreamCounter = field(default_factory=StreamCounter)
    """Counts the text of long streams as it passes (the middle the response taps drop)."""

    @classmethod
    def build(cls, settings: Settings) -> Pipeline:
        """Build the pipeline (nothing runs yet); a bad home, config or price file raises MeterproxyError."""
        home = Home.resolve(settings.home or None).ensure()
        settings = replace(settings, home=str(home.root))
        config = home.load_config()
        routes = RouteTable.build(settings.routes, config.routes, PROVIDERS)
        storage = storage_of(settings.store or config.storage.store, config)
        upstream_ca = settings.upstream_ca or config.proxy.upstream_ca
        bundle = _upstream_bundle(home, Path(upstream_ca).expanduser()) if upstream_ca else None
        # Checked here so that a bad setting fails the start in one line (the meter process uses them).
        Forwarding.resolve(config, os.environ, settings.forward, settings.forward_previews, store_policy=storage.policy)
        Otlp.resolve(config, os.environ)
        budgets = None
        if rules_from(config.budgets):  # reservations are priced: the table only when a budget needs it
            budgets = BudgetBook.build(config.budgets, PriceFile(home.pricing_file).table())
        live = LivePublisher(budgets, home.root) if budgets is not None else None
        settled = functools.partial(budgets.apply, alerts=False) if budgets is not None else None
        recorder = MeterProcess(asdict(settings), on_recorded=settled)
        return cls(home, config, routes, storage, recorder, bundle, budgets, live)

    def start(self) -> None:
        """Start the meter process (a broken ledger raises here), then the rest."""
        self.recorder.start()
        redact_logs(self.storage.redactor)
        log.info(self.describe())
        if self.budgets is not None:
            self.budgets.load(self.home.ledger)
            log.info(self.budgets.describe())
        if self.budgets_live is not None:
            self.budgets_live.start()

    def submit(self, exchange: Exchange) -> None:
        """Hand a finished call to the meter process (never blocks)."""
        self.recorder.submit(exchange)

    def reload_prices(self) -> None:
        """Reload pricing.toml before the next call is priced (SIGHUP)."""
        self.recorder.reload_prices()
        log.warning("SIGHUP: pricing.toml is reloaded before the next call is priced")

    def close(self) -> None:
        """Record every finished call (the meter process writes them all, then exits)."""
        self.recorder.close()
        self.counter.close()
        if self.budgets_live is not None:
            self.budgets_live.stop()

    def describe(self) -> str:
        """What of each call's content is stored, in one line."""
        storage = self.storage
        if storage.policy == "none":
            return "storing no call content (metadata and usage only)"
        previews = f"previews of {storage.preview_chars} characters"
        if storage.policy == "preview":
            return f"storing redacted {previews}"
        return f"storing redacted full bodies (compressed) and {previews}"


def storage_of(policy: str, config: Config) -> Storage:
    """The storage policy and redactor of calls' content (``--store`` wins over config.toml)."""
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
