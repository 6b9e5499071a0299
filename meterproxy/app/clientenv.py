"""The environment that points an agent at meterproxy (``meterproxy env`` and ``meterproxy run``).

Clients get ``HTTPS_PROXY``/``HTTP_PROXY`` (both cases: curl reads only the lower-case
``http_proxy``) and a CA bundle with the system roots plus the meterproxy CA, so metered hosts
verify against meterproxy's certificates and every other host against its own.
``NO_PROXY`` keeps the user's entries but never loopback ones: local model servers (Ollama,
LM Studio) on loopback are metered too.

They also get the base-URL variables the official SDKs read (:data:`BASE_URL_VARIABLES`), set to
the proxy's base-URL mode: clients whose HTTP stack ignores ``HTTPS_PROXY`` (Node's ``fetch``)
are metered too. A variable the user already set is left as it is. The agent's name is the proxy
user (with a placeholder password: ``requests`` and ``urllib`` drop a user without one) and
``/@AGENT`` in base URLs.
"""

from __future__ import annotations

import os
import shlex
import ssl
from pathlib import Path
from urllib.parse import quote

import certifi
from mitmproxy.certs import CertStore

from meterproxy.config import Home
from meterproxy.errors import MeterproxyError

CA_KEY_SIZE = 2048
PASSWORD_PLACEHOLDER = "x"
"""The password of proxy URLs that name an agent (ignored unless the proxy requires authentication)."""
BASE_URL_VARIABLES: dict[str, str] = {
    "OPENAI_BASE_URL": "/openai/v1",
    "ANTHROPIC_BASE_URL": "/anthropic",
    "GOOGLE_GEMINI_BASE_URL": "/gemini",
    "GROQ_BASE_URL": "/groq",
}
"""Variable -> its base-URL path on the proxy. Read by: the ``openai`` SDKs (Python, Node) and the
tools built on them; the ``anthropic`` SDKs (Python, Node) and Claude Code; ``google-genai``
(Python); the ``groq`` SDKs. See docs/proxy.md."""
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]", "0.0.0.0", "127.0.0.0/8", "::1/128"})


def ensure_ca(home: Home) -> Path:
    """Create meterproxy's CA in ``home/certs`` if it does not exist yet (key file mode 0600)."""
    home.ensure()
    if not home.ca_cert.exists():
        try:
            CertStore.from_store(home.certs, "mitmproxy", CA_KEY_SIZE)
        except Exception as e:
            raise MeterproxyError(f"cannot create the CA in {home.certs}: {e}") from e
    return home.ca_cert


def system_roots() -> Path:
    """The system's CA file, or certifi's when the system has none."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and os.path.isfile(candidate):
            return Path(candidate)
    return Path(certifi.where())


def write_ca_bundle(home: Home) -> Path:
    """Write system roots + the meterproxy CA to ``home/certs/ca-bundle.pem``."""
    ca = ensure_ca(home).read_bytes()
    roots = system_roots().read_bytes()
    home.ca_bundle.write_bytes(roots.rstrip(b"\n") + b"\n" + ca)
    return home.ca_bundle


def proxy_url(host: str, port: int, agent: str | None = None) -> str:
    """The proxy's URL; an agent is its user name, with :data:`PASSWORD_PLACEHOLDER` as password."""
    user = f"{quote(agent, safe='')}:{PASSWORD_PLACEHOLDER}@" if agent else ""
    return f"http://{user}{_client_host(host)}:{port}"


def base_urls(host: str, port: int, agent: str | None = None) -> dict[str, str]:
    """:data:`BASE_URL_VARIABLES` pointing at the proxy's base-URL mode (the agent as ``/@AGENT``)."""
    named = f"/@{quote(agent, safe='')}" if agent else ""
    origin = f"http://{_client_host(host)}:{port}{named}"
    return {name: origin + path for name, path in BASE_URL_VARIABLES.items()}


def _client_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def no_proxy(current: str | None) -> str:
    """The user's NO_PROXY entries, minus loopback ones (so local model servers are metered)."""
    entries = [e.strip() for e in (current or "").split(",") if e.strip()]
    return ",".join(e for e in entries if e.lower() not in LOOPBACK_NAMES)


def client_environment(home: Home, host: str, port: int, agent: str | None = None) -> dict[str, str]:
    """Environment variables that route a client through meterproxy and trust its CA.

    Base-URL variables already set in this environment are left out (the user's own endpoint
    stays; ``HTTPS_PROXY`` still meters it where the client honours it).
    """
    bundle = str(write_ca_bundle(home))
    url = proxy_url(host, port, agent)
    skip = no_proxy(os.environ.get("NO_PROXY", os.environ.get("no_proxy")))
    return {
        "HTTPS_PROXY": url,
        "HTTP_PROXY": url,
        "https_proxy": url,
        "http_proxy": url,
        "NO_PROXY": skip,
        "no_proxy": skip,
        "SSL_CERT_FILE": bundle,
        "REQUESTS_CA_BUNDLE": bundle,
        "NODE_EXTRA_CA_CERTS": bundle,
        "CURL_CA_BUNDLE": bundle,
        "NODE_USE_ENV_PROXY": "1",
    } | {name: url for name, url in base_urls(host, port, agent).items() if not _users_own(name, host)}


def _users_own(name: str, host: str) -> bool:
    """Whether the user set base-URL variable ``name`` to something else than a meterproxy on ``host``."""
    value = os.environ.get(name)
    return bool(value) and not value.startswith(f"http://{_client_host(host)}:")


def export_lines(env: dict[str, str]) -> str:
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())
