"""The meterproxy home directory and its optional ``config.toml``.

``METERPROXY_HOME`` (default ``~/.meterproxy``) holds ``certs/`` (the mitmproxy confdir),
``ledger.db``, ``config.toml``, ``logs/`` (the JSONL mirror) and ``archive/`` (old calls).
Every command takes ``--home DIR`` to point elsewhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from meterproxy.errors import MeterproxyError
from meterproxy.files import make_tree_private
from meterproxy.schema import SchemaError, SecretStr, Section, rule

DEFAULT_HOME = "~/.meterproxy"

StorePolicy = Literal["none", "preview", "full"]
"""What of each call's content is stored (see :mod:`meterproxy.meter.storage`)."""
STORE_POLICIES: tuple[str, ...] = get_args(StorePolicy)
DEFAULT_PREVIEW_CHARS = 500


def _http_url(value: str | None) -> str | None:
    """An http(s) URL with a host (an empty one means none)."""
    if not value:
        return None
    from urllib.parse import urlsplit  # only for a URL to check: the read-only commands start faster

    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL")
    parts.port  # noqa: B018 -- raises ValueError on a bad port
    return value


def _zone(value: str | None) -> str | None:
    """An IANA time zone name (or UTC)."""
    if value is not None and value.upper() != "UTC":
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name such as Europe/Paris)") from None
    return value


@dataclass(kw_only=True, repr=False, eq=False)
class ProxySettings(Section):
    host: str = "127.0.0.1"
    port: int = rule(8788, ge=0, le=65535)
    upstream_ca: str | None = None
    auth: dict[str, SecretStr] = field(default_factory=dict)
    """``[proxy.auth]``: agent name -> proxy password, required from clients of other machines."""


@dataclass(kw_only=True, repr=False, eq=False)
class StorageSettings(Section):
    store: StorePolicy = "preview"
    """What of each call's content is kept (``meterproxy start --store`` overrides it)."""
    preview_chars: int = rule(DEFAULT_PREVIEW_CHARS, ge=1, le=1_000_000)


@dataclass(kw_only=True, repr=False, eq=False)
class RedactSettings(Section):
    patterns: dict[str, str] = field(default_factory=dict)
    """Extra findings: name -> regex; each match becomes ``[REDACTED:name]``."""
    allow: list[str] = field(default_factory=list)
    """Regexes of findings to keep (matched against the whole finding)."""

    def validate(self) -> None:
        if self.patterns or self.allow:
            from meterproxy.redact.engine import Redactor  # its rule set is costly to load: only when needed

            Redactor(self.patterns, self.allow)  # raises ValueError naming a bad pattern


def _also(name: str) -> tuple[str, ...]:
    """A ``[forward]`` key may also be spelled like its environment variable."""
    return (f"LOCKN_LOGGER_{name.upper()}", f"lockn_logger_{name}")


@dataclass(kw_only=True, repr=False, eq=False)
class ForwardSettings(Section):
    """``[forward]``: receipts to LockN Logger (``LOCKN_LOGGER_*`` environment variables win)."""

    endpoint: str | None = rule(None, aliases=_also("endpoint"), check=_http_url)
    """Forwarding is on when this is set (or ``meterproxy start --forward``)."""
    api_key: SecretStr | None = rule(None, aliases=_also("api_key"))
    batch_size: int = rule(10, ge=1, le=1000, aliases=_also("batch_size"))
    include_local: bool = rule(True, aliases=_also("include_local"))
    format: Literal["envelope", "flat"] = rule("envelope", aliases=_also("format"))
    timeout: float = rule(10.0, gt=0, le=600)
    """Seconds one POST may take."""
    retry_delay: float = rule(1.0, gt=0, le=600)
    """First retry delay in seconds; it doubles with each failure (with jitter)."""
    max_delay: float = rule(300.0, gt=0, le=86400)
    """The longest wait between delivery rounds while the Logger is failing."""


@dataclass(kw_only=True, repr=False, eq=False)
class BudgetLimits(Section):
    """Limits of one scope: USD or tokens, per day and per month (days and months in ``[budgets] tz``)."""

    daily_usd: float | None = rule(None, gt=0)
    monthly_usd: float | None = rule(None, gt=0)
    daily_tokens: int | None = rule(None, gt=0)
    monthly_tokens: int | None = rule(None, gt=0)


@dataclass(kw_only=True, repr=False, eq=False)
class SessionLimits(Section):
    """``[budgets.each_session]``: what one ``X-Meterproxy-Session`` may spend over its whole life."""

    usd: float | None = rule(None, gt=0)
    tokens: int | None = rule(None, gt=0)


@dataclass(kw_only=True, repr=False, eq=False)
class Budgets(BudgetLimits):
    """Spend limits (all calls, each agent, each session); see docs/budgets.md.

    ``daily_usd``/``monthly_usd`` (all spend) also give every report its budget lines; reports and
    alerts warn from ``warn_at`` (a fraction) of a budget. With ``enforce`` the proxy refuses calls
    that could take a budget past its limit (:mod:`meterproxy.budgets`).
    """

    warn_at: float = rule(0.8, gt=0, le=1)
    enforce: bool = False
    """False: warn only; true: block calls once a limit is reached."""
    unpriced_usd_per_mtok: float = rule(30.0, gt=0)
    """What a model without a price is reserved and counted at, per million tokens (never free)."""
    default_max_output_tokens: int = rule(4096, gt=0, le=10_000_000)
    """The output a request that sets no max tokens is reserved for."""
    tz: str | None = rule(None, check=_zone)
    """The time zone of days and months (an IANA name); default: the machine's local zone."""
    agents: dict[str, BudgetLimits] = field(default_factory=dict)
    """``[budgets.agents.NAME]``: one agent's own limits."""
    each_agent: BudgetLimits = field(default_factory=BudgetLimits)
    """Limits of every agent without its own entry."""
    each_session: SessionLimits = field(default_factory=SessionLimits)


@dataclass(kw_only=True, repr=False, eq=False)
class AlertSettings(Section):
    """``[alerts]``: where budget alerts are POSTed, and in which format."""

    webhook: str | None = rule(None, check=_http_url)
    format: Literal["json", "slack", "ntfy"] = "json"


@dataclass(kw_only=True, repr=False, eq=False)
class LogSettings(Section):
    jsonl: bool = True
    """Mirror every call to ``logs/YYYY-MM-DD.jsonl``."""


@dataclass(kw_only=True, repr=False, eq=False)
class ServeSettings(Section):
    """``[serve]``: ``meterproxy serve`` (its options win)."""

    host: str = "127.0.0.1"
    port: int = rule(8789, ge=0, le=65535)
    token: SecretStr | None = None
    """Every request must carry it; required to listen on an address other than loopback."""


@dataclass(kw_only=True, repr=False, eq=False)
class OtelSettings(Section):
    """``[otel]``: every call as OpenTelemetry GenAI spans and metrics, OTLP/HTTP protobuf to a collector.

    The standard ``OTEL_*`` environment variables win (see :mod:`meterproxy.outbox.otel`). Export
    is on when an endpoint is set here or there.
    """

    endpoint: str | None = rule(None, check=_http_url)
    """Base URL: ``/v1/traces`` and ``/v1/metrics`` are appended (``OTEL_EXPORTER_OTLP_ENDPOINT``)."""
    traces_endpoint: str | None = rule(None, check=_http_url)
    """Full URL for spans, used as is (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``)."""
    metrics_endpoint: str | None = rule(None, check=_http_url)
    """Full URL for metrics, used as is (``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT``)."""
    headers: dict[str, SecretStr] = field(default_factory=dict)
    """Headers of every export request, e.g. an API key (``OTEL_EXPORTER_OTLP_HEADERS``)."""
    service_name: str = "meterproxy"
    resource_attributes: dict[str, str] = field(default_factory=dict)
    traces: bool = True
    metrics: bool = True
    compression: Literal["none", "gzip"] = "gzip"
    certificate: str | None = None
    """A PEM file of CA certificates to trust for an https collector, besides the system's (``OTEL_EXPORTER_OTLP_CERTIFICATE``)."""
    batch_size: int = rule(200, ge=1, le=5000)
    """Calls per export request."""
    include_local: bool = True
    timeout: float = rule(10.0, gt=0, le=600)
    retry_delay: float = rule(1.0, gt=0, le=600)
    max_delay: float = rule(300.0, gt=0, le=86400)


@dataclass(kw_only=True, repr=False, eq=False)
class Config(Section):
    """The schema of ``config.toml``; unknown keys are errors, so typos never pass silently."""

    routes: dict[str, str] = field(default_factory=dict)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    redact: RedactSettings = field(default_factory=RedactSettings)
    forward: ForwardSettings = field(default_factory=ForwardSettings)
    budgets: Budgets = field(default_factory=Budgets)
    logs: LogSettings = field(default_factory=LogSettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    serve: ServeSettings = field(default_factory=ServeSettings)
    otel: OtelSettings = field(default_factory=OtelSettings)
    base_urls: dict[str, str] = field(default_factory=dict)
    """``[base_urls]``: base-URL prefix -> ``http(s)://HOST[:PORT]`` of a metered host (adds or overrides)."""


@dataclass(frozen=True)
class Home:
    """Paths inside one meterproxy home directory."""

    root: Path

    @classmethod
    def resolve(cls, home: str | os.PathLike[str] | None = None) -> Home:
        raw = home or os.environ.get("METERPROXY_HOME") or DEFAULT_HOME
        return cls(Path(raw).expanduser().absolute())

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    @property
    def ca_cert(self) -> Path:
        return self.certs / "mitmproxy-ca-cert.pem"

    @property
    def ca_bundle(self) -> Path:
        return self.certs / "ca-bundle.pem"

    @property
    def upstream_bundle(self) -> Path:
        return self.certs / "upstream-ca-bundle.pem"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.db"

    @property
    def pricing_file(self) -> Path:
        """The user's prices; they replace or extend the bundled ``pricing.toml``."""
        return self.root / "pricing.toml"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def archive(self) -> Path:
        return self.root / "archive"

    @property
    def config_file(self) -> Path:
        return self.root / "config.toml"

    def ensure(self) -> Home:
        """Create the home and certs directories; everything in the home is made private to the user."""
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.certs.mkdir(mode=0o700, exist_ok=True)
            make_tree_private(self.root)
        except OSError as e:
            raise MeterproxyError(f"cannot use home directory {self.root}: {e.strerror}") from e
        return self

    def load_config(self) -> Config:
        """Read ``config.toml``; a missing file means defaults, a bad one a clear error."""
        path = self.config_file
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return Config()
        except (OSError, UnicodeDecodeError) as e:
            raise MeterproxyError(f"{path}: cannot read: {e}") from e
        import tomllib  # only when there is a file to read

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise MeterproxyError(f"{path}: {e}") from e
        try:
            return Config.load(data)
        except SchemaError as e:
            raise MeterproxyError(f"{path}: {e}") from e

