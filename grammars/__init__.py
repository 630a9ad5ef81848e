"""Data-only package holding cfgsurgeon's lark grammars (``darknet_cfg.lark``).

It is a package (not just a folder) so that ``importlib.resources.files("grammars")`` finds the grammar both
in an editable install and in an installed wheel.
"""
