"""Redaction: secrets and personal data found in text and replaced before anything reaches disk.

- ``rule``: the rule engine's vocabulary (:class:`~meterproxy.redact.rule.Rule`, placeholders, word boundaries).
- ``rules``: the built-in rules, most specific first, and the checks that confirm their matches.
- ``engine``: the :class:`~meterproxy.redact.engine.Redactor`: finds spans, merges them, rebuilds the text.
- ``call``: one call's stored content redacted, with a cache of redactions shared between calls.
- ``logs``: log records redacted before a handler writes them.
"""
