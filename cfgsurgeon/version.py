"""The package's version, in a module of its own: the exporters stamp it into the files they write without
importing the package's root (whose import of the API would close a cycle)."""

__version__ = "0.1.0"
