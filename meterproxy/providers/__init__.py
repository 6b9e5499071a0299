"""Stage 2, the providers: parsers, selected by route name.

Each parser classifies endpoints (model call, other API call, or unknown), reads the request's
model, stream flag and prompt, and reads the response's usage into the normalized
:class:`meterproxy.providers.usage.Usage`. The names here are the values of the ``provider`` column and
of ``--route HOST=PROVIDER``.
"""
