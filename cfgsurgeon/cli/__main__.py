"""``python -m cfgsurgeon.cli``: the ``cfgsurgeon`` command."""

from . import main

if __name__ == "__main__":  # pragma: no cover
    main()
