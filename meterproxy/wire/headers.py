"""Which headers meterproxy reads, keeps and stores, and reading them in one pass.

Credentials (:data:`SECRET_HEADERS`) are never kept: their values only serve to scrub
themselves from anything stored. An :class:`~meterproxy.wire.exchange.Exchange` keeps the
allow-listed headers below; of those, the ledger stores fewer still (:func:`stored_header`).
"""

from __future__ import annotations

from collections.abc import Iterable

SECRET_HEADERS = ("authorization", "x-api-key", "api-key", "x-goog-api-key")
"""Headers that carry provider credentials."""
REQUEST_ID_HEADERS = ("x-request-id", "request-id", "apim-request-id", "x-goog-request-id", "mistral-correlation-id")
"""Where providers put their request id, in order of preference."""
KEPT_REQUEST_HEADERS = ("content-type", "content-encoding", "user-agent")
KEPT_RESPONSE_HEADERS = ("content-type", "content-encoding", *REQUEST_ID_HEADERS)
STORED_REQUEST_HEADERS = ("content-type", "user-agent")
"""With the response's content type and request ids, the only headers ever stored."""
_REQUEST_ID_SUFFIXES = ("request-id", "requestid", "correlation-id")
_TOKEN_SCHEMES = ("bearer", "basic", "token")
_KEY_PARAMETERS = ("key", "api_key", "api-key")
MIN_SECRET_CHARS = 8
"""Shorter credential values are not scrubbed (they would match ordinary text)."""


def stored_header(name: str) -> bool:
    """Whether a kept response header reaches the ledger: its content type and request ids."""
    return name == "content-type" or name.endswith(_REQUEST_ID_SUFFIXES)


def header_values(fields: Iterable[tuple[bytes, bytes]]) -> dict[str, list[str]]:
    """Every header's values by lower-case name, read in one pass over raw ``(name, value)`` fields.

    Each ``headers.get`` or ``name in headers`` of mitmproxy scans and decodes all fields again;
    a dozen of them were most of the addon's time per call on the event loop.
    """
    found: dict[str, list[str]] = {}
    for name, value in fields:
        key = name.decode("utf-8", "surrogateescape").lower()
        found.setdefault(key, []).append(value.decode("utf-8", "surrogateescape"))
    return found


def joined(found: dict[str, list[str]], name: str) -> str | None:
    """A header's value as ``headers.get`` gives it (repeated values joined), or None."""
    values = found.get(name)
    return ", ".join(values) if values else None


def kept(found: dict[str, list[str]], names: tuple[str, ...]) -> dict[str, str]:
    """The headers of ``names`` that are present, repeated values joined."""
    return {h: ", ".join(found[h]) for h in names if h in found}


def credentials(found: dict[str, list[str]], query: Iterable[tuple[str, str]] = ()) -> tuple[str, ...]:
    """Credential values in a request's headers and query: scrubbed from anything stored, never stored."""
    values = []
    for name in SECRET_HEADERS:
        for value in found.get(name, ()):
            values.append(value)
            scheme, _, token = value.partition(" ")
            if token and scheme.lower() in _TOKEN_SCHEMES:
                values.append(token.strip())
    values += [value for key, value in query if key.lower() in _KEY_PARAMETERS and value]
    return tuple(v for v in values if len(v) >= MIN_SECRET_CHARS)
