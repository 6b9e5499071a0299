"""Reading the ledger, never the proxy: periods and zones, filters and call listings, spend
reports and their rendering (for the CLI, and the web app to come)."""
