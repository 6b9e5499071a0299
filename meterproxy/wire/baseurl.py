"""Base-URL mode: requests addressed to the proxy itself, sent on by a path prefix.

A client configured with a base URL such as ``http://127.0.0.1:8788/openai/v1`` sends plain
HTTP straight to the proxy's port. The first path segment names where the call goes:

- a prefix (:data:`BUILTIN_PREFIXES`, plus ``[base_urls]`` of config.toml): ``/openai/v1/...``
  goes to ``https://api.openai.com/v1/...``;
- a metered host, ``/HOST[:PORT]/...``: over HTTPS to that host (hosts of wildcard routes,
  such as an Azure resource, and ``--route``d hosts). Only hosts with a route: base-URL mode
  is never a way to reach an unmetered host.

An optional first segment ``/@AGENT`` (or ``/@AGENT:PASSWORD`` where the proxy requires
authentication) names the agent, as the proxy user name does in proxy mode.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from meterproxy.errors import MeterproxyError
from meterproxy.wire.attribution import clean_label
from meterproxy.wire.routes import RouteTable

BUILTIN_PREFIXES: dict[str, str] = {
    "openai": "https://api.openai.com",
    "anthropic": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com",
    "vertex": "https://aiplatform.googleapis.com",
    "openrouter": "https://openrouter.ai",
    "groq": "https://api.groq.com",
    "mistral": "https://api.mistral.ai",
    "codestral": "https://codestral.mistral.ai",
    "deepseek": "https://api.deepseek.com",
    "xai": "https://api.x.ai",
    "together": "https://api.together.xyz",
    "fireworks": "https://api.fireworks.ai",
    "ollama": "http://localhost:11434",
    "lmstudio": "http://localhost:1234",
}
"""Path prefix -> the provider's origin. ``[base_urls]`` in config.toml adds or overrides."""


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> Origin:
        """``http(s)://HOST[:PORT]`` (no path); MeterproxyError with the reason."""
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError as e:
            raise MeterproxyError(f"bad base URL {url!r}: {e}") from e
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise MeterproxyError(f"bad base URL {url!r}: expected http(s)://HOST[:PORT]")
        if parts.path.strip("/") or parts.query or parts.username:
            raise MeterproxyError(f"bad base URL {url!r}: only a scheme, host and port are allowed")
        return cls(parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return f"{self.scheme}://{host}" + ("" if self.port == default else f":{self.port}")


@dataclass(frozen=True, slots=True)
class Target:
    """Where a base-URL request goes, and who sent it."""

    origin: Origin
    path: str
    """The upstream path, query included."""
    agent: str | None = None
    password: str | None = None


class BaseUrls:
    """The base-URL prefixes of one proxy, checked against its routes."""

    def __init__(self, prefixes: Mapping[str, Origin], routes: RouteTable):
        self.prefixes = dict(prefixes)
        self.routes = routes

    @classmethod
    def build(cls, configured: Mapping[str, str], routes: RouteTable) -> BaseUrls:
        """Built-in prefixes plus ``configured`` (name -> origin URL); each origin must be metered."""
        prefixes = {name: Origin.parse(url) for name, url in BUILTIN_PREFIXES.items()}
        for name, url in configured.items():
            key = name.strip().lower()
            if not key or "/" in key or "." in key or ":" in key or key.startswith("@"):
                raise MeterproxyError(f"bad [base_urls] name {name!r}: a word, without '/', '.', ':' or '@'")
            origin = Origin.parse(url)
            if routes.provider_for(origin.host, origin.port) is None:
                raise MeterproxyError(
                    f"[base_urls] {name} = {url!r}: {origin.host}:{origin.port} is not metered (add a route for it)"
                )
            prefixes[key] = origin
        return cls(prefixes, routes)

    def resolve(self, path: str) -> Target | None:
        """The target of a request path sent to the proxy itself; None for an unknown prefix."""
        path, mark, query = path.partition("?")
        agent = password = None
        if path.startswith("/@"):
            label, _, rest = path[2:].partition("/")
            user, _, secret = unquote(label).partition(":")
            agent, password = clean_label(user), secret or None
            path = "/" + rest
        name, _, rest = path[1:].partition("/")
        origin = self.prefixes.get(name.lower()) or self._metered_host(unquote(name))
        if origin is None:
            return None
        return Target(origin, "/" + rest + mark + query, agent, password)

    def _metered_host(self, name: str) -> Origin | None:
        if not name or ("." not in name and ":" not in name and name.lower() != "localhost"):
            return None
        try:
            parts = urlsplit("//" + name)
            host, port = parts.hostname, parts.port or 443
        except ValueError:
            return None
        if not host or parts.username or parts.path or self.routes.provider_for(host, port) is None:
            return None
        return Origin("https", host, port)

    def https_only(self, host: str) -> bool:
        """Whether ``host`` is a provider reached only over HTTPS (a plain-HTTP call to it is a mistake)."""
        host = host.lower()
        return any(o.host == host and o.scheme == "https" and o.port == 443 for o in self.prefixes.values())

    def names(self) -> list[str]:
        return sorted(self.prefixes)
