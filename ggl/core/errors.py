"""The one exception type a user is meant to read.

Entry points catch ``UserError``, print its message on one line to stderr and exit with code 2:
bad config keys and values, missing files, missing datasets, mismatched checkpoints.
"""


class UserError(Exception):
    """A problem with the user's input that they can fix; the message says how."""


class ConfigError(UserError):
    """A bad config file, key or value."""
