"""The application: the one composition root that builds the pipeline from a home and its
config, the mitmproxy addon that only holds hooks, and the runner of ``meterproxy start``."""
