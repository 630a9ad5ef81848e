"""Photos as darknet feeds them to a network: loading (stb's pixels), ``resize_image``, ``letterbox_image``
and the class-names file, in numpy and Pillow only.

``resize_image`` and ``letterbox_image`` are computed in float32 in darknet's order of operations, so they
are bit-exact; :mod:`cfgsurgeon.detect`, the training data set and int8 calibration all prepare photos here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import UsageError

if TYPE_CHECKING:
    from .ir import Graph


def open_rgb(path: str | Path):
    """The photo as a Pillow RGB image (no EXIF rotation, alpha dropped, not composited: stb's way)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        raise UsageError(f"cannot read the image ({_reason(exc)})", str(path)) from None


def load_image(path: str | Path, channels: int = 3) -> np.ndarray:
    """``channels×H×W`` float32 in [0, 1] (RGB, or stb's grey ``(77r + 150g + 29b) >> 8`` for 1 channel),
    values ``byte / 255`` as darknet's stb loader gives them."""
    rgb = np.asarray(open_rgb(path), dtype=np.uint8)
    if channels == 1:
        r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
        pixels = ((r * 77 + g * 150 + b * 29) >> 8)[None].astype(np.uint8)
    elif channels == 3:
        pixels = rgb.transpose(2, 0, 1)
    else:
        raise UsageError(f"networks with {channels} input channels cannot read photos (1 or 3 only)")
    return (pixels / 255.0).astype(np.float32)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def load_names(path: str | Path) -> list[str]:
    """Class names, one a line (darknet's ``get_labels``: a final newline adds no name, CRs are dropped)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UsageError(f"cannot read the names file ({_reason(exc)})", str(path)) from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def resize_image(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """darknet's ``resize_image``: bilinear with scale ``(in − 1)/(out − 1)``, columns first, then rows."""
    img = np.asarray(img, dtype=np.float32)
    if img.shape[1:] == (h, w):
        return img.copy()
    return _resize_rows(_resize_columns(img, w), h)


def _scale(size_in: int, size_out: int) -> np.float32:
    if size_out == 1:  # darknet divides by zero here; only the last pixel is ever read then
        return np.float32(0)
    return np.float32(size_in - 1) / np.float32(size_out - 1)


def _resize_columns(img: np.ndarray, w: int) -> np.ndarray:
    in_w = img.shape[2]
    part = np.empty((*img.shape[:2], w), dtype=np.float32)
    part[..., w - 1] = img[..., in_w - 1]  # the last column, and every column when the input has one
    if w > 1 and in_w > 1:
        sx = np.arange(w - 1, dtype=np.float32) * _scale(in_w, w)
        ix = sx.astype(np.int64)
        dx = sx - ix.astype(np.float32)
        right = np.minimum(ix + 1, in_w - 1)
        part[..., : w - 1] = (1 - dx) * img[..., ix] + dx * img[..., right]
    elif w > 1:
        part[...] = img[..., :1]
    return part


def _resize_rows(part: np.ndarray, h: int) -> np.ndarray:
    in_h = part.shape[1]
    sy = np.arange(h, dtype=np.float32) * _scale(in_h, h)
    iy = sy.astype(np.int64)
    dy = (sy - iy.astype(np.float32))[:, None]
    out = (1 - dy) * part[:, iy, :]
    if in_h > 1:  # darknet skips the second term on the last row (whatever its weight)
        below = np.minimum(iy[:-1] + 1, in_h - 1)
        out[:, :-1] += dy[:-1] * part[:, below, :]
    return out


def letterbox_size(image_w: int, image_h: int, net_w: int, net_h: int) -> tuple[int, int]:
    """The size the photo is resized to inside the network input, keeping its aspect (darknet's rule)."""
    if np.float32(net_w) / np.float32(image_w) < np.float32(net_h) / np.float32(image_h):
        return net_w, (image_h * net_w) // image_w
    return (image_w * net_h) // image_h, net_h


def letterbox_image(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """darknet's ``letterbox_image``: resize keeping the aspect, centred on a 0.5 grey canvas."""
    img = np.asarray(img, dtype=np.float32)
    new_w, new_h = letterbox_size(img.shape[2], img.shape[1], w, h)
    canvas = np.full((img.shape[0], h, w), 0.5, dtype=np.float32)
    dx, dy = (w - new_w) // 2, (h - new_h) // 2
    canvas[:, dy : dy + new_h, dx : dx + new_w] = resize_image(img, new_w, new_h)
    return canvas


def network_input(graph: Graph, img: np.ndarray) -> np.ndarray:
    """The photo as the network sees it: letterboxed when ``[net] letter_box=1``, else plainly resized."""
    net = graph.net
    if net.letter_box:
        return letterbox_image(img, net.width, net.height)
    return resize_image(img, net.width, net.height)
