"""Shared test helpers: the repository root and assertion helpers used across the suites."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
"""The repository root (tests locate docs and sources from it, whatever their own depth)."""
