"""Where receipts go and how: :class:`Forwarding`, the ``[forward]`` settings of config.toml
overlaid by the ``LOCKN_LOGGER_*`` environment variables.

The API key goes in headers only: never into the ledger, a log line or an error message
(:meth:`Forwarding.where` prints the endpoint without user info or query string,
:meth:`Forwarding.scrub` takes the key out of a Logger's answer).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from urllib.parse import urlsplit, urlunsplit

from meterproxy.config import Config, ForwardSettings
from meterproxy.errors import MeterproxyError
from meterproxy.schema import SchemaError

DEFAULT_ENDPOINT = "http://localhost:8080/api/receipts"
ENV_NAMES = {
    "endpoint": "LOCKN_LOGGER_ENDPOINT",
    "api_key": "LOCKN_LOGGER_API_KEY",
    "batch_size": "LOCKN_LOGGER_BATCH_SIZE",
    "include_local": "LOCKN_LOGGER_INCLUDE_LOCAL",
    "format": "LOCKN_LOGGER_FORMAT",
}


@dataclass(frozen=True)
class Forwarding:
    """Resolved forwarding settings: ``[forward]`` of config.toml overlaid by ``LOCKN_LOGGER_*``."""

    settings: ForwardSettings
    enabled: bool
    previews: bool = False
    """Put the stored (already redacted) previews in receipts."""

    @classmethod
    def resolve(
        cls, config: Config, env: Mapping[str, str], force: bool = False,
        previews: bool = False, store_policy: str | None = None,
    ) -> Forwarding:
        """On when an endpoint is configured (env or config) or ``force`` (``--forward``) is given.

        Previews go out only when asked (``--forward-previews``) under the storage policy ``full``.
        """
        given = {name: env[var] for name, var in ENV_NAMES.items() if env.get(var)}
        try:
            overlay = ForwardSettings.load(given)
        except SchemaError as e:
            raise MeterproxyError(f"{ENV_NAMES[str(e.loc[0])]}: {e.message}") from None
        settings = replace(config.forward, **{name: getattr(overlay, name) for name in given})
        enabled = force or settings.endpoint is not None
        return cls(settings, enabled, previews=previews and store_policy == "full")

    @property
    def endpoint(self) -> str:
        return self.settings.endpoint or DEFAULT_ENDPOINT

    @property
    def api_key(self) -> str | None:
        return self.settings.api_key.get_secret_value() if self.settings.api_key else None

    def where(self) -> str:
        return printable_url(self.endpoint)

    def describe(self) -> str:
        """One line for ``meterproxy start``."""
        if not self.enabled:
            return "receipts to LockN Logger: off (set LOCKN_LOGGER_ENDPOINT or pass --forward)"
        s = self.settings
        details = [
            f"batch {s.batch_size}",
            "API key set" if s.api_key else "no API key",
            "local models included" if s.include_local else "local models left out",
        ]
        if s.format == "flat":
            details.append("flat format")
        if self.previews:
            details.append("with previews")
        return f"receipts to LockN Logger: {self.where()} ({', '.join(details)})"

    def scrub(self, text: str) -> str:
        """``text`` without the API key (a Logger may echo it in an error)."""
        key = self.api_key
        return text.replace(key, "[REDACTED]") if key else text


def printable_url(url: str) -> str:
    """``url`` fit to print: no user info, no query string."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
