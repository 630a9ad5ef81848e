"""Output-file safety shared by every writer: atomic replacement, and never overwriting an input."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from .errors import UsageError


@contextmanager
def atomic_output(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temp file beside ``path``; rename it over ``path`` only if the block finishes without error."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as out:
            yield out
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def refuse_overwrite(outputs: list[Path], inputs: list[Path | None]) -> None:
    """Raise if an output path is one of the inputs (same file, even through another name)."""
    for out in outputs:
        for source in inputs:
            if source is not None and out.exists() and Path(source).exists() and out.samefile(source):
                raise UsageError(f"refusing to overwrite the input file {source}; choose another output")


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in blocks (inputs can be GBs)."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
