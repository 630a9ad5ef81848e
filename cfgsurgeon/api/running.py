"""Model methods that run the model: detect, evaluate, bench, export."""

from __future__ import annotations


class Running:
    """Mixed into :class:`cfgsurgeon.Model`."""
