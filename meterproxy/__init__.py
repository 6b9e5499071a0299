"""meterproxy: a local proxy that meters LLM traffic in flight."""

__version__ = "0.1.0"
