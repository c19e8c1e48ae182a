"""User-facing error types shared across the package."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration is invalid; raised before any work starts, with what to change."""
