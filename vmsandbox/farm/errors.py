"""Errors of the farm itself (not of its jobs): the farm could not run (exit code 2)."""
from __future__ import annotations

from ..exceptions import SandboxError


class FarmError(SandboxError):
    """The farm could not run: the base could not be prepared, or its setup failed."""
