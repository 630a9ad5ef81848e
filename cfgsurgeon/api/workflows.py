"""Model methods of the pruning workflow: sensitivity, plan, sweep, iterate."""

from __future__ import annotations


class Workflows:
    """Mixed into :class:`cfgsurgeon.Model`."""
