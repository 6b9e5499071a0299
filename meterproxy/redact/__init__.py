"""Redaction: secrets and personal data found in text and replaced before anything reaches disk."""
