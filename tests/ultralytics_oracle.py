"""The ``ultralytics`` package as a test oracle (YOLOv8 models built from its yaml files, forward, loss, NMS).

``ultralytics`` is installed ``--no-deps`` (``make venv``'s ORACLE_LATE): it imports torchvision, which must
never be installed here (PyPI's torchvision does not load beside the torch 2.13 CPU wheel). ultralytics only
asks ``importlib.metadata`` for torchvision's version and calls ``torchvision.ops.nms``, so a stand-in
distribution is written to a temporary folder and put on ``sys.path`` before ``import ultralytics``; its
``nms`` is ultralytics' own pure-torch NMS. ultralytics runs offline (``YOLO_OFFLINE=1``) with its settings in
a temporary folder: it writes nothing to the home directory and downloads nothing.

Use ``ultralytics_or_skip()`` in a test (or the ``ultralytics`` fixture, imported into a test module): it
returns the imported package, or skips the test when the package (or torch) is missing."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest

STANDIN_VERSION = "0.29.1"

_STANDIN_FILES = {
    f"torchvision-{STANDIN_VERSION}.dist-info/METADATA": (
        f"Metadata-Version: 2.1\nName: torchvision\nVersion: {STANDIN_VERSION}\n"
    ),
    f"torchvision-{STANDIN_VERSION}.dist-info/RECORD": "",
    "torchvision/__init__.py": (
        '"""Test stand-in for torchvision: only what ultralytics uses (tests/ultralytics_oracle.py)."""\n'
        f'__version__ = "{STANDIN_VERSION}"\n'
        "from . import ops  # noqa: E402,F401\n"
    ),
    "torchvision/ops/__init__.py": (
        "def nms(boxes, scores, iou_threshold):\n"
        "    from ultralytics.utils.nms import TorchNMS\n\n"
        "    return TorchNMS.nms(boxes, scores, iou_threshold)\n"
    ),
}


def _write_standin(root: Path) -> None:
    for relative, text in _STANDIN_FILES.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


@cache
def _oracle_home() -> Path:
    """A per-process temporary folder holding the stand-in and ultralytics' settings."""
    return Path(tempfile.mkdtemp(prefix="cfgsurgeon-ultralytics-"))


@cache
def _import_ultralytics() -> ModuleType | str:
    """The imported package, or the reason it cannot be imported (cached: imported once per process)."""
    for needed in ("torch", "ultralytics", "yaml"):
        if importlib.util.find_spec(needed) is None:
            return f"the ultralytics oracle needs `{needed}` (the Makefile's ORACLE_LATE)"
    if "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        home = _oracle_home()
        _write_standin(home / "standin")
        sys.path.insert(0, str(home / "standin"))
        importlib.invalidate_caches()
    settings = _oracle_home() / "settings"
    settings.mkdir(exist_ok=True)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ.setdefault("YOLO_CONFIG_DIR", str(settings))
    os.environ.setdefault("YOLO_VERBOSE", "False")
    with _kept_globals():
        return importlib.import_module("ultralytics")


@contextmanager
def _kept_globals() -> Iterator[None]:
    """Undo what importing ultralytics changes for the whole process: it replaces ``PIL.Image.open`` (its
    HEIC fallback then asks for ``pi_heif`` on any unreadable photo, which turned our one-line "cannot read
    the image" errors into "needs the package 'pi_heif'"), ``torch.save``, and OpenCV's thread count."""
    import cv2
    import torch
    from PIL import Image

    kept = (Image.open, torch.save, cv2.getNumThreads())
    try:
        yield
    finally:
        Image.open, torch.save = kept[:2]
        cv2.setNumThreads(kept[2])


def ultralytics_or_skip() -> ModuleType:
    """The ``ultralytics`` package (with the torchvision stand-in); skips the test when unavailable."""
    result = _import_ultralytics()
    if isinstance(result, str):
        pytest.skip(result)
    return result


@pytest.fixture
def ultralytics() -> ModuleType:
    """Fixture form of ``ultralytics_or_skip()``."""
    return ultralytics_or_skip()
