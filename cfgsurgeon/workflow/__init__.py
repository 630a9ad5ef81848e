"""The pruning workflow on real data, on top of ``surgery`` and ``train``: per-unit sensitivity analysis
(``sensitivity``), ratio sweeps (``sweep``) and the iterative prune ↔ fine-tune loop (``iterate``).

Like ``train``, these need torch for the forward passes; nothing outside this package imports it at module
level.
"""
