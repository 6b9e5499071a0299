"""The meterproxy home directory and its optional ``config.toml``.

``METERPROXY_HOME`` (default ``~/.meterproxy``) holds ``certs/`` (the mitmproxy confdir),
``ledger.db`` and ``config.toml``. Every command takes ``--home DIR`` to point elsewhere.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from meterproxy.errors import MeterproxyError
from meterproxy.redact import Redactor

DEFAULT_HOME = "~/.meterproxy"

StorePolicy = Literal["none", "preview", "full"]
"""What of each call's content is stored (see :mod:`meterproxy.storage`)."""
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


class Config(_Section):
    """The schema of ``config.toml``; unknown keys are errors, so typos never pass silently."""

    routes: dict[str, str] = Field(default_factory=dict)
    proxy: ProxySettings = Field(default_factory=ProxySettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    redact: RedactSettings = Field(default_factory=RedactSettings)


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
    def config_file(self) -> Path:
        return self.root / "config.toml"

    def ensure(self) -> Home:
        """Create the home and certs directories (private to the user)."""
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.certs.mkdir(mode=0o700, exist_ok=True)
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
