"""The photos that calibrate an int8 model (``quantize``, ``export --format tflite --quantize int8``, the
TFLite step of ``sparsify``): one reader of an image list or a folder, and each photo prepared exactly as
``detect`` prepares it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import UsageError
from .ir import Graph


def calibration_images(source: str | Path, subset: int | None = None) -> list[Path]:
    """The photos of ``source``: a darknet image list (one path a line, relative paths from the list's folder,
    as the dataset reader takes them) or a folder (its image files by name, label ``.txt`` files skipped);
    the first ``subset`` of them when given."""
    from PIL import Image

    source = Path(source)
    if source.is_dir():
        suffixes = set(Image.registered_extensions())
        paths = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
        if not paths:
            raise UsageError("the calibration folder holds no image", str(source))
    elif source.is_file():
        from .train.dataset import read_image_list

        paths = read_image_list(source)
        if not paths:
            raise UsageError("the calibration list names no image", str(source))
    else:
        raise UsageError("no such calibration image list or folder", str(source))
    if subset is not None and subset < 1:
        raise UsageError(f"`subset` must be at least 1, got {subset}")
    return paths[:subset]


def network_batch(graph: Graph, path: Path) -> np.ndarray:
    """One photo as ``detect`` feeds it to the network: a 1×C×H×W float32 batch."""
    from .images import load_image, network_input

    return network_input(graph, load_image(path, graph.net.channels))[None]
