"""Running the proxy and pointing clients at it: ``start``, ``env`` and ``run``.

The application (mitmproxy and the pipeline) is imported inside the commands, so the other
commands never load it.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import click

from meterproxy.cli import options
from meterproxy.cli.options import home_option
from meterproxy.config import STORE_POLICIES, Config, Home
from meterproxy.errors import MeterproxyError
from meterproxy.outbox.settings import Forwarding
from meterproxy.wire.attribution import is_loopback
from meterproxy.wire.exposure import Credentials, exposed


@click.command()
@home_option
@click.option("--host", help="Address to listen on [default: 127.0.0.1, or config.toml]")
@click.option("--port", type=click.IntRange(0, 65535), help="Port [default: 8788, or config.toml]")
@click.option(
    "--route", "routes", multiple=True, metavar="HOST[:PORT]=PROVIDER",
    help="Meter another host with a provider's parser (repeatable).",
)
@click.option(
    "--upstream-ca", type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Extra CA bundle trusted for upstream TLS (self-hosted gateways).",
)
@click.option("--grace", type=float, default=10.0, show_default=True,
              help="Seconds calls in flight get to finish on SIGINT/SIGTERM.")
@click.option(
    "--store", type=click.Choice(STORE_POLICIES),
    help="Content stored per call, always redacted: none, preview (the default, or config.toml's) "
    "or full (compressed bodies).",
)
@click.option(
    "--inject-stream-usage", is_flag=True,
    help="Ask OpenAI-compatible streams for their usage (stream_options.include_usage) when the "
         "client did not, and remove the extra chunk before the client sees it.",
)
@click.option("--forward", is_flag=True,
              help="Forward receipts to LockN Logger [default: on when LOCKN_LOGGER_ENDPOINT or [forward] endpoint is set]")
@click.option("--forward-previews", is_flag=True,
              help="Put the stored, redacted previews in receipts (only with the storage policy full).")
@click.option("--no-jsonl", is_flag=True, help="Do not mirror calls to logs/YYYY-MM-DD.jsonl.")
@click.option("--auth", "auth", multiple=True, metavar="USER:PASS",
              help="Proxy credentials (the user is the agent's name), required from other machines; needed to "
                   "listen on a non-loopback --host (also [proxy.auth] in config.toml). Repeatable.")
@click.option("-v", "--verbose", is_flag=True, help="Log every metered call (agent, host:port, model, tokens, cost).")
def start(
    home: Home, host: str | None, port: int | None, routes: tuple[str, ...],
    upstream_ca: Path | None, grace: float, store: str | None, inject_stream_usage: bool, forward: bool,
    forward_previews: bool, no_jsonl: bool, auth: tuple[str, ...], verbose: bool,
) -> None:
    """Run the metering proxy in the foreground."""
    from meterproxy.app.clientenv import client_environment
    from meterproxy.app.runner import ProxySpec, serve

    options.setup_logging(verbose)
    config = home.ensure().load_config()
    check_routes(routes, config)
    host = host or config.proxy.host
    credentials = _credentials(auth, config)
    if exposed(host) and not credentials:
        raise MeterproxyError(
            f"refusing to listen on {host} (reachable from other machines) without proxy authentication: "
            "add --auth USER:PASS or [proxy.auth] in config.toml, or listen on 127.0.0.1"
        )
    forwarding = Forwarding.resolve(
        config, os.environ, forward, forward_previews, store_policy=store or config.storage.store
    )
    if forward_previews and not forwarding.previews:
        click.echo("warning: --forward-previews needs the storage policy full: receipts carry no previews", err=True)
    spec = ProxySpec(
        home=home,
        host=host,
        port=config.proxy.port if port is None else port,
        routes=routes,
        upstream_ca=upstream_ca,
        grace=grace,
        store=store,
        inject_stream_usage=inject_stream_usage,
        forward=forward,
        forward_previews=forward_previews,
        jsonl=not no_jsonl,
        auth=auth,
    )

    def ready(listen_host: str, listen_port: int) -> None:
        env = client_environment(home, listen_host, listen_port)  # writes the CA bundle first
        click.echo(f"meterproxy listening on http://{listen_host}:{listen_port} (ledger: {home.ledger})")
        click.echo(forwarding.describe())
        if exposed(listen_host):
            click.echo(f"warning: listening on {listen_host}, reachable from other machines: their clients must "
                       "authenticate (proxy credentials or base-URL /@AGENT:PASSWORD/)", err=True)
        flags = _client_flags(home, config, listen_host, listen_port)
        click.echo(f'# meter a shell: eval "$(meterproxy env{flags})", or: meterproxy run{flags} -- CMD')
        for name in ("HTTPS_PROXY", "HTTP_PROXY", "SSL_CERT_FILE", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL"):
            if name in env:
                click.echo(f"export {name}={env[name]}")
        sys.stdout.flush()

    sys.exit(serve(spec, ready))


def _client_flags(home: Home, config: Config, listen_host: str, listen_port: int) -> str:
    """The ``--home``/``--host``/``--port`` that ``env`` and ``run`` need to reach this proxy."""
    flags = f" --home {shlex.quote(str(home.root))}" if home.root != Home.resolve().root else ""
    if listen_host != config.proxy.host and not (is_loopback(listen_host) and is_loopback(config.proxy.host)):
        flags += f" --host {listen_host}"
    if listen_port != config.proxy.port:
        flags += f" --port {listen_port}"
    return flags


def _credentials(auth: tuple[str, ...], config: Config) -> Credentials:
    return Credentials.build(auth, {user: secret.get_secret_value() for user, secret in config.proxy.auth.items()})


def check_routes(specs: tuple[str, ...], config: Config) -> None:
    """The routes (``--route`` and config.toml's) and ``[base_urls]`` are valid: a one-line error otherwise."""
    from meterproxy.providers.registry import PROVIDERS
    from meterproxy.wire.baseurl import BaseUrls
    from meterproxy.wire.routes import RouteTable

    BaseUrls.build(config.base_urls, RouteTable.build(specs, config.routes, PROVIDERS))


def _proxy_address(home: Home, host: str | None, port: int | None) -> tuple[str, int]:
    config = home.load_config()
    return host or config.proxy.host, config.proxy.port if port is None else port


@click.command()
@home_option
@click.option("--agent", help="Agent name for every call (sent as the proxy user name).")
@click.option("--host", help="Proxy address [default: from config.toml, else 127.0.0.1]")
@click.option("--port", type=click.IntRange(1, 65535), help="Proxy port [default: 8788]")
def env(home: Home, agent: str | None, host: str | None, port: int | None) -> None:
    """Print shell export lines that send a shell's traffic through meterproxy."""
    from meterproxy.app.clientenv import client_environment, export_lines

    click.echo(export_lines(client_environment(home, *_proxy_address(home, host, port), agent)), nl=False)


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@home_option
@click.option("--agent", help="Agent name for every call the command makes.")
@click.option("--host", help="Proxy address [default: from config.toml, else 127.0.0.1]")
@click.option("--port", type=click.IntRange(1, 65535), help="Proxy port [default: 8788]")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(home: Home, agent: str | None, host: str | None, port: int | None, command: tuple[str, ...]) -> None:
    """Run COMMAND with its traffic going through meterproxy; exit with its exit code."""
    from meterproxy.app.clientenv import client_environment

    environment = os.environ | client_environment(home, *_proxy_address(home, host, port), agent)
    try:
        child = subprocess.Popen(command, env=environment)
    except FileNotFoundError as e:
        raise MeterproxyError(f"command not found: {command[0]}") from e
    except PermissionError as e:
        raise MeterproxyError(f"cannot run {command[0]}: permission denied") from e
    returncode = _wait_forwarding_signals(child)
    sys.exit(returncode if returncode >= 0 else 128 - returncode)


FORWARDED_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def _wait_forwarding_signals(child: subprocess.Popen) -> int:
    """Wait for ``child``, passing it the signals meant for us (Ctrl-C: its own exit code wins)."""

    def forward(number: int, _frame: object) -> None:
        if number == signal.SIGINT and _terminal_sent_it(child.pid):
            return  # Ctrl-C in a terminal reaches the child itself: a second SIGINT could cut its cleanup short
        try:
            child.send_signal(number)
        except ProcessLookupError:
            pass

    previous = {number: signal.signal(number, forward) for number in FORWARDED_SIGNALS}
    try:
        return child.wait()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _terminal_sent_it(pid: int) -> bool:
    """Whether ``pid`` is in the terminal's foreground process group (so it got the terminal's signal too)."""
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgid(pid)
    except (OSError, AttributeError, ValueError):
        return False
