"""Reading the ledger: periods and zones, filters and call listings, spend reports and their rendering."""
