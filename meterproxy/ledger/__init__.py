"""Stage 5, the ledger: the SQLite schema and its migrations, the background writer, the JSONL
mirror, rollups kept by triggers, the archive and repricing of stored calls."""
