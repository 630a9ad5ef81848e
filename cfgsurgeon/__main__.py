"""``python -m cfgsurgeon``: the ``cfgsurgeon`` command."""

from .cli import main

if __name__ == "__main__":  # pragma: no cover
    main()
