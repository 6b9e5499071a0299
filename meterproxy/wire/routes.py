"""Which hosts are metered, and by which provider parser.

A route maps ``HOST[:PORT]`` to a provider name. ``HOST`` may start with ``*`` to match any
host ending in the rest (``*.openai.azure.com``, ``*-aiplatform.googleapis.com``). A route
without a port matches every port of that host. Only routed hosts are decrypted; TLS to every
other host passes through untouched.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from meterproxy.errors import MeterproxyError

BUILTIN_ROUTES: dict[str, str] = {
    "api.openai.com": "openai",
    "*.openai.azure.com": "azure",
    "*.cognitiveservices.azure.com": "azure",
    "*.services.ai.azure.com": "azure",
    "api.anthropic.com": "anthropic",
    "generativelanguage.googleapis.com": "gemini",
    "aiplatform.googleapis.com": "vertex",
    "*-aiplatform.googleapis.com": "vertex",
    "openrouter.ai": "openrouter",
    "api.groq.com": "groq",
    "api.mistral.ai": "mistral",
    "codestral.mistral.ai": "mistral",
    "api.deepseek.com": "deepseek",
    "api.x.ai": "xai",
    "api.together.xyz": "together",
    "api.together.ai": "together",
    "api.fireworks.ai": "fireworks",
    # Local servers on their default ports (plain HTTP). llama.cpp (8080, also LockN Logger's
    # port) and vLLM (8000, every web framework's) are left to --route.
    "localhost:11434": "ollama",
    "127.0.0.1:11434": "ollama",
    "[::1]:11434": "ollama",
    "localhost:1234": "lmstudio",
    "127.0.0.1:1234": "lmstudio",
}


@dataclass(frozen=True, slots=True)
class Route:
    host: str
    port: int | None
    provider: str

    def matches(self, host: str, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.host.startswith("*"):
            suffix = self.host[1:]
            return host.endswith(suffix) and host != suffix
        return host == self.host

    def __str__(self) -> str:
        where = self.host if self.port is None else f"{self.host}:{self.port}"
        return f"{where}={self.provider}"


def parse_route(spec: str, known_providers: Iterable[str]) -> Route:
    """Parse ``HOST[:PORT]=PROVIDER``; raise MeterproxyError with the reason."""
    where, sep, provider = spec.partition("=")
    provider = provider.strip().lower()
    where = where.strip().lower()
    if not sep or not where or not provider:
        raise MeterproxyError(f"bad route {spec!r}: expected HOST[:PORT]=PROVIDER")
    known = sorted(known_providers)
    if provider not in known:
        raise MeterproxyError(
            f"bad route {spec!r}: unknown provider {provider!r} (known: {', '.join(known)})"
        )
    return Route(*_split_host_port(where, spec), provider)


_HOST_NAME = re.compile(r"(\*[.-]?)?[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?")


def _split_host_port(where: str, spec: str) -> tuple[str, int | None]:
    if "/" in where or "@" in where:
        raise MeterproxyError(f"bad route {spec!r}: HOST[:PORT] only, without scheme, user or path (e.g. llm.internal:8443)")
    if where.startswith("["):  # [::1]:8080
        host, _, rest = where[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif where.count(":") == 1:
        host, port_text = where.split(":")
    else:
        host, port_text = where, ""
    if not host:
        raise MeterproxyError(f"bad route {spec!r}: empty host")
    if not (_is_ip(host) if where.startswith("[") else _HOST_NAME.fullmatch(host) or _is_ip(host)):
        raise MeterproxyError(f"bad route {spec!r}: {host!r} is not a host name or IP address")
    if not port_text:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise MeterproxyError(f"bad route {spec!r}: port must be 1-65535")
    return host, int(port_text)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class RouteTable:
    """Routes in priority order: user routes first, then built-in ones."""

    def __init__(self, routes: Iterable[Route]):
        # Exact host:port before host-only before wildcards, so the most specific wins.
        self.routes = sorted(
            routes, key=lambda r: (r.host.startswith("*"), r.port is None)
        )

    @classmethod
    def build(
        cls,
        specs: Iterable[str],
        config_routes: Mapping[str, str],
        known_providers: Iterable[str],
    ) -> RouteTable:
        known = list(known_providers)
        user = [parse_route(s, known) for s in specs]
        user += [parse_route(f"{h}={p}", known) for h, p in config_routes.items()]
        builtin = [parse_route(f"{h}={p}", known) for h, p in BUILTIN_ROUTES.items()]
        return cls(user + builtin)

    def provider_for(self, host: str, port: int) -> str | None:
        host = host.lower().rstrip(".")
        for route in self.routes:
            if route.matches(host, port):
                return route.provider
        return None
