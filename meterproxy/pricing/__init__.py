"""Stage 3, pricing: the price table, its files and their provenance, and the exact cost of a call."""
