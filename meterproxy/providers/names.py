"""The names of the built-in provider parsers, without importing them (price files are checked
against these names on every read; :mod:`meterproxy.providers.registry` builds the parsers and a
test keeps both in step)."""

from __future__ import annotations

PROVIDER_NAMES = frozenset({
    "anthropic", "azure", "deepseek", "fireworks", "gemini", "groq", "llamacpp", "lmstudio", "mistral", "ollama",
    "openai", "openai_compatible", "openrouter", "together", "vertex", "vllm", "xai",
})
