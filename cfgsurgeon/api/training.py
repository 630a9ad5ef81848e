"""Model methods that train: train, sparsify."""

from __future__ import annotations


class Training:
    """Mixed into :class:`cfgsurgeon.Model`."""
