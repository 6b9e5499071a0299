"""Stage 6, the outbox: receipts written with each call and delivered to LockN Logger, never lost."""
