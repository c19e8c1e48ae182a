"""User-facing error types shared across the package.

Every error a user can fix (bad flag, missing file, unknown name, exhausted
budget, failed download) derives from :class:`UserError`. The CLI prints such
an error as one message, without a traceback, and exits with the error's
``exit_code``: 2 for configuration and input problems, 1 for failed downloads,
3 for an exhausted teacher-query budget.
"""

from __future__ import annotations


class UserError(Exception):
    """An error the user can fix; ``vl2v`` prints ``prefix: message`` and exits with ``exit_code``."""

    exit_code: int = 2
    prefix: str = "error"


class ConfigError(UserError, ValueError):
    """A configuration is invalid; raised before any work starts, with what to change."""


class WeightsUnavailableError(ConfigError):
    """A model's pretrained weights could not be loaded (offline, not cached); the message says what to pass."""
