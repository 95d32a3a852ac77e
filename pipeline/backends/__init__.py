"""Backends run step descriptions. One module each, picked by name."""

from __future__ import annotations

from .base import Backend, StepOutputCallback

__all__ = ["Backend", "StepOutputCallback"]
