"""Logs: :class:`RedactingFilter` redacts every record before a handler writes it."""

from __future__ import annotations

import logging

from meterproxy.redact.engine import Redactor


class RedactingFilter(logging.Filter):
    """Redacts every log record a handler emits: message, arguments and traceback."""

    def __init__(self, redactor: Redactor):
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        record.msg, record.args = self.redactor.redact(message)[0], ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor.redact(record.exc_text)[0]
        if record.stack_info:
            record.stack_info = self.redactor.redact(record.stack_info)[0]
        return True


def redact_logs(redactor: Redactor, logger: logging.Logger | None = None) -> None:
    """Put a :class:`RedactingFilter` on every handler of ``logger`` (default: the root logger),
    replacing one put there before."""
    for handler in (logger or logging.getLogger()).handlers:
        for old in [f for f in handler.filters if isinstance(f, RedactingFilter)]:
            handler.removeFilter(old)
        handler.addFilter(RedactingFilter(redactor))
