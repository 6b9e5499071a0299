"""The ``meterproxy`` command line, commands grouped by subject."""
