"""Model methods that change the model: prune, retarget, init (and their reports)."""

from __future__ import annotations


class Editing:
    """Mixed into :class:`cfgsurgeon.Model`."""
