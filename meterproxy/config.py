"""The meterproxy home directory and its optional ``config.toml``.

``METERPROXY_HOME`` (default ``~/.meterproxy``) holds ``certs/`` (the mitmproxy confdir),
``ledger.db``, ``config.toml``, ``logs/`` (the JSONL mirror) and ``archive/`` (old calls).
Every command takes ``--home DIR`` to point elsewhere.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from meterproxy.errors import MeterproxyError
from meterproxy.files import make_tree_private
from meterproxy.redact.engine import Redactor

DEFAULT_HOME = "~/.meterproxy"

StorePolicy = Literal["none", "preview", "full"]
"""What of each call's content is stored (see :mod:`meterproxy.meter.storage`)."""
STORE_POLICIES: tuple[str, ...] = get_args(StorePolicy)
DEFAULT_PREVIEW_CHARS = 500


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProxySettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8788, ge=0, le=65535)
    upstream_ca: str | None = None


class StorageSettings(_Section):
    store: StorePolicy = "preview"
    """What of each call's content is kept (``meterproxy start --store`` overrides it)."""
    preview_chars: int = Field(default=DEFAULT_PREVIEW_CHARS, ge=1, le=1_000_000)


class RedactSettings(_Section):
    patterns: dict[str, str] = Field(default_factory=dict)
    """Extra findings: name -> regex; each match becomes ``[REDACTED:name]``."""
    allow: list[str] = Field(default_factory=list)
    """Regexes of findings to keep (matched against the whole finding)."""

    @model_validator(mode="after")
    def _compiles(self) -> RedactSettings:
        Redactor(self.patterns, self.allow)  # raises ValueError naming a bad pattern
        return self


def _also(name: str) -> AliasChoices:
    """A ``[forward]`` key may also be spelled like its environment variable."""
    return AliasChoices(name, f"LOCKN_LOGGER_{name.upper()}", f"lockn_logger_{name}")


class ForwardSettings(_Section):
    """``[forward]``: receipts to LockN Logger (``LOCKN_LOGGER_*`` environment variables win)."""

    endpoint: str | None = Field(default=None, validation_alias=_also("endpoint"))
    """Forwarding is on when this is set (or ``meterproxy start --forward``)."""
    api_key: SecretStr | None = Field(default=None, validation_alias=_also("api_key"))
    batch_size: int = Field(default=10, ge=1, le=1000, validation_alias=_also("batch_size"))
    include_local: bool = Field(default=True, validation_alias=_also("include_local"))
    format: Literal["envelope", "flat"] = Field(default="envelope", validation_alias=_also("format"))
    timeout: float = Field(default=10.0, gt=0, le=600)
    """Seconds one POST may take."""
    retry_delay: float = Field(default=1.0, gt=0, le=600)
    """First retry delay in seconds; it doubles with each failure (with jitter)."""
    max_delay: float = Field(default=300.0, gt=0, le=86400)
    """The longest wait between delivery rounds while the Logger is failing."""

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL")
        parts.port  # noqa: B018 -- raises ValueError on a bad port
        return value


class Budgets(_Section):
    """Spend limits in USD; reports warn from ``warn_at`` (a fraction) of a budget."""

    daily_usd: float | None = Field(default=None, gt=0)
    monthly_usd: float | None = Field(default=None, gt=0)
    warn_at: float = Field(default=0.8, gt=0, le=1)


class LogSettings(_Section):
    jsonl: bool = True
    """Mirror every call to ``logs/YYYY-MM-DD.jsonl``."""


class Config(_Section):
    """The schema of ``config.toml``; unknown keys are errors, so typos never pass silently."""

    routes: dict[str, str] = Field(default_factory=dict)
    proxy: ProxySettings = Field(default_factory=ProxySettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    redact: RedactSettings = Field(default_factory=RedactSettings)
    forward: ForwardSettings = Field(default_factory=ForwardSettings)
    budgets: Budgets = Field(default_factory=Budgets)
    logs: LogSettings = Field(default_factory=LogSettings)


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
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return Config()
        except (OSError, UnicodeDecodeError) as e:
            raise MeterproxyError(f"{path}: cannot read: {e}") from e
        except tomllib.TOMLDecodeError as e:
            raise MeterproxyError(f"{path}: {e}") from e
        try:
            return Config.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "(top level)"
            message = first["msg"].removeprefix("Value error, ")
            raise MeterproxyError(f"{path}: {where}: {message}") from e
