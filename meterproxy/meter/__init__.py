"""Stage 4, the meter: turns one exchange into one ledger row.

Owns recording a call (usage, outcome, price), token estimates when a provider reports none,
what a call was about (content), and the storage policy that redacts and keeps content.
"""
