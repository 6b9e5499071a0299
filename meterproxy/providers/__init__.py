"""Provider parsers, selected by route name.

Each parser classifies endpoints (model call or other API call), reads the request's model and
stream flag, and reads the response's usage into the normalized :class:`meterproxy.usage.Usage`.
"""

from __future__ import annotations

from meterproxy.providers.anthropic import AnthropicProvider
from meterproxy.providers.base import Provider
from meterproxy.providers.openai import OpenAIProvider

PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in (
        OpenAIProvider(),
        AnthropicProvider(),
    )
}


def get_provider(name: str) -> Provider:
    return PROVIDERS[name]
