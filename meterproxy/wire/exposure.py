"""Who may use a proxy that listens beyond loopback, and where such clients may not go.

On a non-loopback address every client from another machine authenticates (HTTP Basic proxy
credentials; the user name is the agent's name); clients on this machine's loopback need not.
A remote client is never connected to this machine's loopback (services listening only there
must stay unreachable from the network), whatever name it gave for the host.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
from collections.abc import Iterable, Mapping

from meterproxy.errors import MeterproxyError
from meterproxy.wire.attribution import clean_label, is_loopback

AUTH_HEADER = "x-meterproxy-auth"
"""``USER:PASSWORD`` for base-URL requests from clients that can add a header but not proxy credentials."""


def parse_credential(spec: str) -> tuple[str, str]:
    """``USER:PASS`` -> (user, password); MeterproxyError (without the password) when malformed."""
    user, sep, password = spec.partition(":")
    user = user.strip()
    if not sep or not user or not password:
        raise MeterproxyError(f"bad --auth for {user or '?'!r}: expected USER:PASS with a non-empty password")
    if clean_label(user) != user or "@" in user or "/" in user:
        raise MeterproxyError(f"bad --auth user {user!r}: printable, without '@', '/' or surrounding spaces")
    return user, password


class Credentials:
    """Agent names and their passwords (kept as SHA-256 digests, compared in constant time)."""

    def __init__(self, users: Mapping[str, str]):
        self._digests = {user: _digest(password) for user, password in users.items()}

    @classmethod
    def build(cls, specs: Iterable[str], configured: Mapping[str, str]) -> Credentials:
        """``--auth USER:PASS`` values over config.toml's ``[proxy.auth]`` (user -> password)."""
        users = {}
        for user, password in configured.items():
            users.update([parse_credential(f"{user}:{password}")])
        users.update(parse_credential(spec) for spec in specs)
        return cls(users)

    def __bool__(self) -> bool:
        return bool(self._digests)

    def check(self, user: str | None, password: str | None) -> bool:
        expected = self._digests.get(user or "")
        return expected is not None and password is not None and hmac.compare_digest(expected, _digest(password))

    def basic(self, header: str | None) -> str | None:
        """The user of a valid ``Basic`` credential header, else None."""
        user, password = basic_credentials(header)
        return user if self.check(user, password) else None

    def pair(self, value: str | None) -> str | None:
        """The user of a valid ``USER:PASSWORD`` (the ``X-Meterproxy-Auth`` header), else None."""
        user, _, password = (value or "").partition(":")
        return user if self.check(user.strip(), password) else None


def basic_credentials(header: str | None) -> tuple[str | None, str | None]:
    """(user, password) of a ``Basic`` header; (None, None) when absent or malformed."""
    scheme, _, token = (header or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        text = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    user, sep, password = text.partition(":")
    return user, password if sep else None


def exposed(listen_host: str) -> bool:
    """Whether listening on ``listen_host`` accepts connections from other machines."""
    return not is_loopback(listen_host)


def local_only(address: str) -> bool:
    """Whether a connection to IP ``address`` stays on this machine (loopback, or unspecified = loopback)."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return address.lower() in ("localhost", "localhost.")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified


def _digest(password: str) -> bytes:
    return hashlib.sha256(password.encode("utf-8")).digest()
