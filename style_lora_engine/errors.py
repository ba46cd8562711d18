"""Errors the user can act on: each message names the file (if any) and the fix."""

from __future__ import annotations


class StyleLoRAError(Exception):
    """Base class for errors shown to the user as-is."""


class DatasetError(StyleLoRAError):
    """A dataset folder, image or caption file is unusable."""


class ConfigError(StyleLoRAError):
    """A training option is invalid or its dependency is missing."""


class TrainingStopped(StyleLoRAError):
    """Training ended early (non-finite loss, stop request); finished epochs are kept."""
