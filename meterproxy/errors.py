"""The one exception type meterproxy raises for bad input; the CLI prints it as one line."""


class MeterproxyError(Exception):
    """A problem the user can fix: bad option, bad config file, unusable home directory."""
