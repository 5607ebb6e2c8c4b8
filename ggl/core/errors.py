"""The one exception type a user is meant to read.

Entry points catch ``UserError``, print its message on one line to stderr and exit with code 2:
bad config keys and values, missing files, missing datasets, mismatched checkpoints.
"""
from __future__ import annotations

import sys
from typing import Callable


class UserError(Exception):
    """A problem with the user's input that they can fix; the message says how."""


class ConfigError(UserError):
    """A bad config file, key or value."""


class WriteError(UserError):
    """A file could not be written (full disk, read-only folder); ``reason`` is the short why."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message


EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


def guarded(fn: Callable[[], object], on_interrupt: Callable[[KeyboardInterrupt], str]) -> int:
    """Every entry point's wrapper: ``fn()``; a ``UserError`` is one line on stderr and exit code 2,
    Ctrl-C the line ``on_interrupt`` gives and exit code 130."""
    try:
        fn()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as exc:
        print(on_interrupt(exc), file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
