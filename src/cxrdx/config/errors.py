"""The one configuration error."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config file or override names an unknown key or a value of the wrong type."""
