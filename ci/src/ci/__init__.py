"""Lint, test, build and scan a Python project with the rgbridge pipeline."""

from .main import Ci

__all__ = ["Ci"]
