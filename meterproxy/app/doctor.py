"""``meterproxy doctor``: every check of a working setup, each ok, warn or fail, with its fix.

The checks look at one home and at the environment of the shell that runs them (the variables an
agent started from it would inherit). They are read only: nothing in the home is created or
changed. Each is bounded in time: the proxy and Node are probed on loopback only, tiktoken is
loaded in a child process whose network is cut, so no check can wait on the internet.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import certifi
from sqlite_utils import Database

from meterproxy.app.clientenv import BASE_URL_VARIABLES as SET_BY_ENV
from meterproxy.app.state import ProxyState, read_state, stale_pid
from meterproxy.config import Config, Home
from meterproxy.errors import MeterproxyError
from meterproxy.meter.tokens import ENCODINGS
from meterproxy.outbox.settings import Forwarding
from meterproxy.pricing.table import PriceTable
from meterproxy.reports.unpriced import unpriced_models
from meterproxy.wire.routes import BUILTIN_ROUTES

Status = Literal["ok", "warn", "fail"]

BASE_URL_VARIABLES = (*SET_BY_ENV, "MISTRAL_BASE_URL", "OPENAI_API_BASE", "OLLAMA_HOST")
"""Base-URL variables doctor looks at: those ``meterproxy env`` sets, and other tools' own."""
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0", "::"})
PROBE_TIMEOUT = 1.0
"""Seconds a loopback connection to the proxy may take."""
NODE_TIMEOUT = 8.0
"""Seconds Node gets to print its version, or to try a request through the probe."""
TIKTOKEN_TIMEOUT = 30.0
"""Seconds tiktoken gets to load its encodings from the cache."""
PRICES_STALE_DAYS = 90
WRITER_BACKLOG_WARN = 1000
FIX_ENV = 'eval "$(meterproxy env)" in this shell, or run agents with `meterproxy run -- CMD`'


@dataclass
class Check:
    """One line of the doctor's screen."""

    name: str
    status: Status
    summary: str
    fix: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "summary": self.summary, "fix": self.fix,
                "details": self.details}


@dataclass
class Context:
    """What every check may read: the home, its config, the shell's environment, the clock."""

    home: Home
    environ: Mapping[str, str]
    now: datetime
    config: Config = field(default_factory=Config)
    state: ProxyState | None = None

    @property
    def proxy_address(self) -> tuple[str, int]:
        """Where the proxy listens: the running one's address, else config.toml's."""
        if self.state is not None:
            return self.state.host, self.state.port
        return self.config.proxy.host, self.config.proxy.port

    def env(self, name: str) -> str | None:
        """A variable in either case (``https_proxy`` or ``HTTPS_PROXY``), the lower-case one first like curl."""
        return self.environ.get(name.lower()) or self.environ.get(name.upper()) or None


def run_checks(home: Home, environ: Mapping[str, str], now: datetime) -> list[Check]:
    """Every check, in screen order."""
    context = Context(home, environ, now)
    checks = [_guarded("home", check_home, context)]
    context.state = read_state(home) if home.root.is_dir() else None
    for name, check in CHECKS:
        checks.append(_guarded(name, check, context))
    return checks


def _guarded(name: str, check: Callable[[Context], Check], context: Context) -> Check:
    try:
        return check(context)
    except Exception as e:  # one broken check must not hide the others
        return Check(name, "warn", f"could not check: {e}", "report this as a meterproxy bug")


# --- the home, the proxy ------------------------------------------------------------------------


def check_home(context: Context) -> Check:
    home = context.home
    if not home.root.is_dir():
        return Check("home", "fail", f"no meterproxy home at {home.root}",
                     "check --home / METERPROXY_HOME; `meterproxy start` creates the home")
    try:
        context.config = home.load_config()
    except MeterproxyError as e:
        return Check("home", "fail", str(e), f"fix {home.config_file} (see docs/proxy.md)")
    configured = "config.toml valid" if home.config_file.exists() else "no config.toml: defaults"
    return Check("home", "ok", f"{home.root} ({configured})")


def check_proxy(context: Context) -> Check:
    host, port = context.proxy_address
    state = context.state
    if state is not None:
        details = {"pid": state.pid, "host": state.host, "port": state.port}
        if not _listening(host, port):
            return Check("proxy", "fail", f"pid {state.pid} runs but nothing answers on {state.url}",
                         "stop it (`meterproxy stop`, or kill it) and start again", details)
        note = ""
        if port != context.config.proxy.port:
            note = f"; config.toml's port is {context.config.proxy.port}: pass --port {port} to env and run"
        return Check("proxy", "ok", f"listening on {state.url} (pid {state.pid}){note}", None, details)
    left = stale_pid(context.home)
    gone = f" (pid {left} left proxy.json behind: it did not exit cleanly)" if left else ""
    if _listening(host, port):
        return Check("proxy", "warn", f"something listens on {host}:{port} but no meterproxy runs on this home{gone}",
                     "`meterproxy status --home DIR` for the home it serves, or stop it and "
                     "`meterproxy start` here", {"host": host, "port": port})
    return Check("proxy", "fail", f"no proxy listening on {host}:{port}{gone}", "meterproxy start",
                 {"host": host, "port": port})


def _listening(host: str, port: int) -> bool:
    target = "127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host
    try:
        with socket.create_connection((target, port), timeout=PROBE_TIMEOUT):
            return True
    except OSError:
        return False


# --- the CA and the trust stores -------------------------------------------------------------------


def check_ca(context: Context) -> Check:
    path = context.home.ca_cert
    if not path.exists():
        return Check("ca", "fail", f"no CA at {path}", "meterproxy start (or meterproxy env) creates it")
    try:
        from cryptography import x509

        certificate = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as e:
        return Check("ca", "fail", f"{path} is not a PEM certificate ({e})",
                     f"move {context.home.certs} aside and run `meterproxy start` for a new CA")
    expires = certificate.not_valid_after_utc
    if expires <= context.now:
        return Check("ca", "fail", f"the CA expired on {expires:%Y-%m-%d}",
                     f"move {context.home.certs} aside and run `meterproxy start` for a new CA")
    return Check("ca", "ok", f"{path} (valid until {expires:%Y-%m-%d})", None, {"path": str(path)})


def _ca_der(context: Context) -> bytes | None:
    try:
        return ssl.PEM_cert_to_DER_cert(context.home.ca_cert.read_text(encoding="ascii"))
    except (OSError, ValueError):
        return None


def holds_ca(bundle: str | os.PathLike[str], ca_der: bytes) -> bool:
    """Whether the CA file ``bundle`` holds the certificate ``ca_der`` (so clients using it accept it)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=os.fspath(bundle))
    except (OSError, ssl.SSLError):
        return False
    return ca_der in context.get_ca_certs(binary_form=True)


def _store_check(
    name: str, variable: str, context: Context, clients: str, fallback: tuple[str, Path] | None = None,
) -> Check:
    """A variable naming a CA file: holding the CA (ok), or not (fail when this shell's HTTPS_PROXY
    sends calls through the proxy, else warn); unset, ``fallback`` (label, file) counts instead."""
    ca = _ca_der(context)
    if ca is None:
        return Check(name, "warn", "no CA to look for (see the ca check)", "meterproxy start")
    value = context.environ.get(variable)
    proxy = context.env("HTTPS_PROXY")
    routed = bool(proxy) and _points_at_proxy(proxy or "", context)
    severity: Status = "fail" if routed else "warn"
    consequence = f"{clients} {'reject' if routed else 'would reject'} metered hosts through HTTPS_PROXY"
    if value:
        details = {variable: value}
        if not Path(value).is_file():
            return Check(name, severity, f"{variable}={value}: no such file, so {consequence}", FIX_ENV, details)
        if holds_ca(value, ca):
            return Check(name, "ok", f"{variable} holds the meterproxy CA, trusted by {clients}", None, details)
        return Check(name, severity, f"{variable}={value} lacks the meterproxy CA, so {consequence}", FIX_ENV,
                     details)
    if fallback is not None and holds_ca(fallback[1], ca):
        return Check(name, "ok", f"{variable} unset; {fallback[0]} holds the meterproxy CA, trusted by {clients}")
    where = f" and {fallback[0]} lacks the CA" if fallback else ""
    return Check(name, severity, f"{variable} is not set{where}, so {consequence} (base-URL mode needs no CA)",
                 FIX_ENV)


def check_certifi(context: Context) -> Check:
    ca = _ca_der(context)
    if ca is None:
        return Check("certifi", "warn", "no CA to look for (see the ca check)", "meterproxy start")
    bundle = certifi.where()
    if holds_ca(bundle, ca):
        return Check("certifi", "ok", "certifi's bundle holds the meterproxy CA", None, {"path": bundle})
    covered = [v for v in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
               if context.environ.get(v) and holds_ca(context.environ[v], ca)]
    if len(covered) == 2:
        return Check("certifi", "ok", "certifi's bundle lacks the CA (normal): SSL_CERT_FILE and REQUESTS_CA_BUNDLE "
                     "name bundles that hold it", None, {"path": bundle})
    return Check("certifi", "warn", "certifi's bundle lacks the meterproxy CA: requests and httpx reject metered "
                 "hosts unless REQUESTS_CA_BUNDLE and SSL_CERT_FILE name a bundle that holds it",
                 FIX_ENV + " (both set them)", {"path": bundle})


def check_ssl_cert_file(context: Context) -> Check:
    return _store_check("ssl_cert_file", "SSL_CERT_FILE", context, "Python's ssl and httpx")


def check_node_ca(context: Context) -> Check:
    return _store_check("node_ca", "NODE_EXTRA_CA_CERTS", context, "Node")


def check_curl_ca(context: Context) -> Check:
    system = _system_cafile()
    return _store_check("curl_ca", "CURL_CA_BUNDLE", context, "curl",
                        ("the system store", system) if system else None)


def _system_cafile() -> Path | None:
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and os.path.isfile(candidate):
            return Path(candidate)
    return None


# --- this shell's environment ----------------------------------------------------------------------


def _points_at_proxy(url: str, context: Context) -> bool:
    try:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        port = parts.port
    except ValueError:
        return False
    host, proxy_port = context.proxy_address
    hosts = {host.lower()} | (LOOPBACK if host in LOOPBACK else set())
    return (parts.hostname or "").lower() in hosts and port == proxy_port


def _shown(url: str) -> str:
    """A URL fit to print: a password becomes ***."""
    return re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url)


def check_env_proxy(context: Context) -> Check:
    found = {name: context.environ[name] for name in ("HTTPS_PROXY", "https_proxy") if context.environ.get(name)}
    host, port = context.proxy_address
    if not found:
        if base_urls := _base_urls_at_proxy(context):
            return Check("env_proxy", "ok", f"HTTPS_PROXY not set; {', '.join(base_urls)} point at the proxy")
        return Check("env_proxy", "warn", "HTTPS_PROXY is not set: agents started from this shell are not metered",
                     FIX_ENV)
    details = {name: _shown(url) for name, url in found.items()}
    wrong = [f"{name}={_shown(url)}" for name, url in found.items() if not _points_at_proxy(url, context)]
    if wrong:  # clients differ in the case they read: both must point at the proxy
        return Check("env_proxy", "fail", f"{', '.join(wrong)} but the proxy listens on {host}:{port}", FIX_ENV,
                     details)
    users = {urlsplit(url).username for url in found.values()} - {None}
    agent = f" (agent {', '.join(sorted(users))})" if users else ""
    return Check("env_proxy", "ok", f"HTTPS_PROXY points at the proxy{agent}", None, details)


def _base_urls_at_proxy(context: Context) -> list[str]:
    return [name for name in BASE_URL_VARIABLES if (v := context.environ.get(name)) and _points_at_proxy(v, context)]


def check_env_base_urls(context: Context) -> Check:
    found = {name: context.environ[name] for name in BASE_URL_VARIABLES if context.environ.get(name)}
    if not found:
        return Check("env_base_urls", "ok", "no base-URL variables set (SDKs use their providers' hosts)")
    proxied = bool(context.env("HTTPS_PROXY"))
    unmetered = []
    for name, value in found.items():
        if _points_at_proxy(value, context):
            continue
        host = (urlsplit(value if "://" in value else f"http://{value}").hostname or "").lower()
        if not (proxied and _is_provider_host(host)):
            unmetered.append(f"{name}={_shown(value)}")
    details = {name: _shown(value) for name, value in found.items()}
    if unmetered:
        return Check("env_base_urls", "warn", f"not metered: {', '.join(unmetered)} (neither the proxy nor a "
                     "metered host behind HTTPS_PROXY)",
                     "point them at the proxy (meterproxy env prints the values), or meter the host with "
                     "`meterproxy start --route HOST[:PORT]=PROVIDER`", details)
    return Check("env_base_urls", "ok", f"{', '.join(found)} metered", None, details)


def _is_provider_host(host: str) -> bool:
    for pattern in BUILTIN_ROUTES:
        name = pattern.rsplit(":", 1)[0] if not pattern.startswith("[") else pattern
        if name.startswith("*"):
            if host.endswith(name[1:]) and host != name[1:]:
                return True
        elif host == name:
            return True
    return False


PROVIDER_HOSTS = tuple(sorted({h for h in BUILTIN_ROUTES if ":" not in h and not h.startswith("*")}))
"""Public provider hosts a ``NO_PROXY`` entry must not cover."""


def bypassed(no_proxy: str, host: str) -> bool:
    """Whether a ``NO_PROXY`` list sends ``host`` around the proxy (the rules curl, requests and Node share:
    ``*``, the host itself, or a domain suffix with or without its leading dot)."""
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        entry = entry.lstrip("*").lstrip(".").split(":")[0]
        if entry and (host == entry or host.endswith("." + entry)):
            return True
    return False


def check_env_no_proxy(context: Context) -> Check:
    value = context.env("NO_PROXY") or ""
    if not value.strip():
        return Check("env_no_proxy", "ok", "NO_PROXY excludes no provider host")
    excluded = [host for host in PROVIDER_HOSTS if bypassed(value, host)]
    if excluded:
        shown = ", ".join(excluded[:4]) + (f" and {len(excluded) - 4} more" if len(excluded) > 4 else "")
        return Check("env_no_proxy", "fail", f"NO_PROXY={value} sends {shown} around the proxy: unmetered",
                     "remove those entries from NO_PROXY (meterproxy env keeps the others)", {"NO_PROXY": value})
    if bypassed(value, "localhost") or bypassed(value, "127.0.0.1"):
        return Check("env_no_proxy", "warn", f"NO_PROXY={value} sends loopback around the proxy: local model "
                     "servers (Ollama, LM Studio) are not metered", "remove loopback entries from NO_PROXY, or "
                     "use base-URL variables for local servers", {"NO_PROXY": value})
    return Check("env_no_proxy", "ok", "NO_PROXY excludes no provider host", None, {"NO_PROXY": value})


# --- Node -----------------------------------------------------------------------------------------

_NODE_PROBE = (
    "fetch('https://doctor.meterproxy.invalid/').catch(() => {}).finally(() => process.exit(0));"
    f"setTimeout(() => process.exit(0), {int((NODE_TIMEOUT - 2) * 1000)});"
)


def check_node(context: Context) -> Check:
    node = shutil.which("node", path=context.environ.get("PATH"))
    if node is None:
        return Check("node", "ok", "node not installed: nothing to check")
    try:
        version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=NODE_TIMEOUT,
                                 env=dict(context.environ)).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return Check("node", "warn", f"{node} does not answer ({e})", "check the Node install")
    honours = node_honours_proxy(node, context.environ)
    details = {"node": node, "version": version, "honours_https_proxy": honours}
    if honours:
        return Check("node", "ok", f"Node {version}: fetch honours HTTPS_PROXY", None, details)
    base_urls = _base_urls_at_proxy(context)
    if {"OPENAI_BASE_URL", "ANTHROPIC_BASE_URL"} <= set(base_urls):
        return Check("node", "ok", f"Node {version} ignores HTTPS_PROXY; OPENAI_BASE_URL and ANTHROPIC_BASE_URL "
                     "point at the proxy, so the official SDKs are metered", None, details)
    return Check("node", "warn", f"Node {version}'s fetch ignores HTTPS_PROXY: Node agents (openai, "
                 "@anthropic-ai/sdk) call providers unmetered",
                 FIX_ENV + " (both point the SDKs' base-URL variables at the proxy)", details)


def node_honours_proxy(node: str, environ: Mapping[str, str]) -> bool:
    """Whether ``node``'s fetch, in this environment, sends an HTTPS request through ``HTTPS_PROXY``:
    a loopback probe plays the proxy, the request is for a name that cannot resolve."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        probe.listen(1)
        probe.settimeout(NODE_TIMEOUT)
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
        env = dict(environ) | {"HTTPS_PROXY": url, "https_proxy": url, "NO_PROXY": "", "no_proxy": ""}
        child = subprocess.Popen([node, "-e", _NODE_PROBE], env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + NODE_TIMEOUT
            while child.poll() is None and time.monotonic() < deadline:
                probe.settimeout(0.1)
                try:
                    connection, _ = probe.accept()
                except TimeoutError:
                    continue
                with connection:
                    connection.settimeout(2)
                    return connection.recv(64).startswith(b"CONNECT ")
            return False
        finally:
            child.kill()
            child.wait()


# --- tiktoken ---------------------------------------------------------------------------------------

_LOAD_ENCODINGS = "import sys, tiktoken\nfor name in sys.argv[1:]:\n    tiktoken.get_encoding(name)\n"


def check_tiktoken(context: Context) -> Check:
    cache = context.environ.get("TIKTOKEN_CACHE_DIR") or context.environ.get("DATA_GYM_CACHE_DIR") or ""
    details = {"encodings": list(ENCODINGS), "cache_dir": cache or "(tiktoken's default, in the temp directory)"}
    # The network is cut (a proxy that refuses): an encoding missing from the cache fails at once.
    offline = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": "",
               "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9", "no_proxy": ""}
    try:
        result = subprocess.run([sys.executable, "-c", _LOAD_ENCODINGS, *ENCODINGS], capture_output=True, text=True,
                                timeout=TIKTOKEN_TIMEOUT, env=dict(context.environ) | offline)
    except subprocess.TimeoutExpired:
        return Check("tiktoken", "warn", f"loading the encodings took more than {TIKTOKEN_TIMEOUT:g}s",
                     "check TIKTOKEN_CACHE_DIR's disk", details)
    if result.returncode == 0:
        return Check("tiktoken", "ok", f"{', '.join(ENCODINGS)} load offline", None, details)
    return Check("tiktoken", "warn", "tiktoken encodings are not in the cache: estimates (for calls that report no "
                 "usage) fall back to 1 token per 4 bytes",
                 "set TIKTOKEN_CACHE_DIR to a directory holding them (for the proxy too), or start the proxy once "
                 "online", details)


# --- prices ---------------------------------------------------------------------------------------


def check_pricing(context: Context) -> Check:
    try:
        table = PriceTable.load(context.home.pricing_file)
    except MeterproxyError as e:
        first = str(e).splitlines()
        return Check("pricing", "fail", " ".join(first[:2]) + (" ..." if len(first) > 2 else ""),
                     "meterproxy pricing check (lists every problem); fix the file", {"problems": first})
    checked = bundled_checked()
    days = (context.now.date() - checked).days if checked else None
    details: dict[str, Any] = {"pricing_version": table.version, "bundled_checked": checked and checked.isoformat()}
    user = context.home.pricing_file
    note = ""
    if user.exists():
        modified = datetime.fromtimestamp(user.stat().st_mtime, UTC)
        details["user_file"] = str(user)
        details["user_file_modified"] = modified.isoformat(timespec="seconds")
        note = f"; {user.name} changed {modified:%Y-%m-%d}"
    if days is not None and days > PRICES_STALE_DAYS:
        return Check("pricing", "warn", f"bundled prices checked {checked}, {days} days ago: providers may have "
                     f"changed them{note}", "upgrade meterproxy, or `meterproxy pricing import` LiteLLM's prices",
                     details)
    return Check("pricing", "ok", f"prices valid, bundled ones checked {checked}{note}", None, details)


def bundled_checked() -> Any:
    """The newest "Checked YYYY-MM-DD" date in the bundled pricing.toml."""
    text = resources.files("meterproxy.pricing").joinpath("pricing.toml").read_text(encoding="utf-8")
    dates = re.findall(r"Checked (\d{4}-\d{2}-\d{2})", text)
    return max(datetime.strptime(d, "%Y-%m-%d").date() for d in dates) if dates else None


def check_unpriced(context: Context) -> Check:
    ledger = context.home.ledger
    if not ledger.exists():
        return Check("unpriced", "ok", "no ledger yet: no models seen")
    try:
        table = PriceTable.load(context.home.pricing_file)
    except MeterproxyError:
        return Check("unpriced", "warn", "prices do not load (see the pricing check)", "meterproxy pricing check")
    with _read_only(ledger) as db:
        missing = unpriced_models(Database(db), table)
    if not missing:
        return Check("unpriced", "ok", "every model in the ledger has a price")
    shown = ", ".join(f"{model or '(no model name)'} ({provider}, {count:,} calls)"
                      for provider, model, count, _, _ in missing[:4])
    more = f" and {len(missing) - 4} more" if len(missing) > 4 else ""
    return Check("unpriced", "warn", f"seen without a price: {shown}{more}",
                 "add them to pricing.toml (meterproxy pricing check), then `meterproxy reprice`",
                 {"models": [{"provider": p, "model": m, "calls": c} for p, m, c, _, _ in missing]})


# --- the ledger, the writer, the outbox -----------------------------------------------------------


@contextmanager
def _read_only(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only SQLite connection (never creates the file, never migrates)."""
    connection = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=2)
    try:
        yield connection
    finally:
        connection.close()


def check_ledger(context: Context) -> Check:
    ledger = context.home.ledger
    if not ledger.exists():
        return Check("ledger", "warn", f"no ledger yet at {ledger}", "meterproxy start creates it")
    size = sum(p.stat().st_size for p in (ledger, ledger.with_name(ledger.name + "-wal")) if p.exists())
    details: dict[str, Any] = {"path": str(ledger), "bytes": size}
    try:
        connection = sqlite3.connect(ledger, timeout=2, isolation_level=None)
        try:
            calls = connection.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
            connection.execute("BEGIN IMMEDIATE")  # takes the write lock, writes nothing
            connection.execute("ROLLBACK")
        finally:
            connection.close()
    except sqlite3.OperationalError as e:
        if "locked" in str(e) or "busy" in str(e):
            return Check("ledger", "warn", f"{ledger}: busy for more than 2 s ({e})",
                         "look for a long `meterproxy archive` or `reprice`, then run doctor again", details)
        return Check("ledger", "fail", f"{ledger} is not writable: {e}",
                     "check the file's owner and permissions, and the disk space", details)
    except sqlite3.DatabaseError as e:
        return Check("ledger", "fail", f"{ledger} is not a usable ledger: {e}",
                     "move it aside (meterproxy start makes a new one) and keep the old file for recovery", details)
    if not os.access(ledger.parent, os.W_OK):
        return Check("ledger", "fail", f"{ledger.parent} is not writable (SQLite needs it for its journal)",
                     "check the directory's owner and permissions", details)
    details["calls"] = calls
    return Check("ledger", "ok", f"{ledger}: {_size(size)}, {calls:,} calls, writable", None, details)


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


def check_writer(context: Context) -> Check:
    return writer_check(context.state)


def writer_check(state: ProxyState | None) -> Check:
    """The running proxy's writer, from its state file."""
    if state is None:
        return Check("writer", "ok", "no proxy running: nothing waiting to be written")
    details = {"writer_backlog": state.writer_backlog, "failed": state.failed, "writer_error": state.writer_error}
    if state.writer_error:
        return Check("writer", "fail", f"the writer's last write failed: {state.writer_error} "
                     f"({state.writer_backlog:,} calls waiting)",
                     "check the disk space and the ledger's permissions (doctor's ledger check)", details)
    if state.writer_backlog > WRITER_BACKLOG_WARN:
        return Check("writer", "warn", f"{state.writer_backlog:,} calls waiting to be written: the writer is behind",
                     "see `meterproxy status`; a busy disk or a long reprice/archive slows it", details)
    if state.failed:
        return Check("writer", "warn", f"{state.failed:,} calls could not be recorded since the start",
                     "see the proxy's log for the cause", details)
    return Check("writer", "ok", f"{state.writer_backlog:,} calls waiting to be written, {state.calls:,} written",
                 None, details)


def check_forward(context: Context) -> Check:
    try:
        forwarding = Forwarding.resolve(context.config, context.environ)
    except MeterproxyError as e:
        return Check("forward", "fail", f"forwarding settings: {e}", "fix the LOCKN_LOGGER_* variable")
    ledger = context.home.ledger
    counts = {"pending": 0, "rejected": 0, "delivered": 0}
    oldest = None
    if ledger.exists():
        with _read_only(ledger) as db:
            if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'outbox'").fetchone():
                counts |= dict(db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall())
                oldest = db.execute(
                    "SELECT created_at, last_error FROM outbox WHERE state = 'pending' ORDER BY created_at LIMIT 1"
                ).fetchone()
    details = {"enabled": forwarding.enabled, "endpoint": forwarding.where(), **counts}
    where = f"LockN Logger at {forwarding.where()}"
    if counts["pending"]:
        since = f" since {oldest[0]}" if oldest else ""
        error = f" (last error: {oldest[1]})" if oldest and oldest[1] else ""
        if not forwarding.enabled:
            return Check("forward", "warn", f"{counts['pending']:,} receipts pending{since} but forwarding is off",
                         "set LOCKN_LOGGER_ENDPOINT (or [forward] endpoint), then `meterproxy forward`", details)
        return Check("forward", "warn", f"{counts['pending']:,} receipts pending for {where}{since}{error}",
                     "meterproxy forward (delivers now; check that the Logger answers)", details)
    if counts["rejected"]:
        return Check("forward", "warn", f"{counts['rejected']:,} receipts rejected by {where}",
                     "meterproxy forward --status; once fixed, meterproxy forward --retry-rejected", details)
    if not forwarding.enabled:
        return Check("forward", "ok", "forwarding to LockN Logger is off", None, details)
    return Check("forward", "ok", f"nothing pending for {where} ({counts['delivered']:,} delivered)", None, details)


CHECKS: tuple[tuple[str, Callable[[Context], Check]], ...] = (
    ("proxy", check_proxy),
    ("ca", check_ca),
    ("certifi", check_certifi),
    ("ssl_cert_file", check_ssl_cert_file),
    ("node_ca", check_node_ca),
    ("curl_ca", check_curl_ca),
    ("env_proxy", check_env_proxy),
    ("env_base_urls", check_env_base_urls),
    ("env_no_proxy", check_env_no_proxy),
    ("node", check_node),
    ("tiktoken", check_tiktoken),
    ("pricing", check_pricing),
    ("unpriced", check_unpriced),
    ("ledger", check_ledger),
    ("writer", check_writer),
    ("forward", check_forward),
)
"""Every check after ``home``, in screen order."""
