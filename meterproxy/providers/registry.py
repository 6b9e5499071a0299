"""Every built-in provider parser by name: the values of the ``provider`` column and of
``--route HOST=PROVIDER``.

Kept out of the package's ``__init__`` so that reading :mod:`meterproxy.providers.usage` (as
reports and the ledger do) does not import every parser.
"""

from __future__ import annotations

from meterproxy.providers.anthropic import AnthropicProvider
from meterproxy.providers.azure import AzureProvider
from meterproxy.providers.base import API_PARTS, Provider
from meterproxy.providers.gemini import GeminiProvider
from meterproxy.providers.ollama import OllamaProvider
from meterproxy.providers.openai import OpenAICompatible

OPENAI_COMPATIBLE = (
    "openai", "groq", "deepseek", "xai", "together", "fireworks", "lmstudio", "llamacpp", "vllm",
    "openai_compatible",
)
"""Hosts that speak OpenAI's API with no more than the quirks ``usage_from_openai`` handles."""

PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in (
        *(OpenAICompatible(name) for name in OPENAI_COMPATIBLE),
        OpenAICompatible("openrouter", reports_cost=True),
        # Mistral's Conversations API runs the model and reports usage.
        OpenAICompatible("mistral", api_parts=API_PARTS - {"conversations"}),
        AzureProvider(),
        AnthropicProvider(),
        GeminiProvider("gemini"),
        GeminiProvider("vertex"),
        OllamaProvider(),
    )
}


def get_provider(name: str) -> Provider:
    return PROVIDERS[name]
