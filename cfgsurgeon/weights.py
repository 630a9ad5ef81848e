"""Darknet ``.weights`` files: a small header, then every layer's float32 tensors in cfg order, no names, no
shapes. The cfg (our :class:`~cfgsurgeon.ir.Graph`) says how many floats each layer owns.

Reading memory-maps the file: tensors are read-only views, so opening a 250 MB model costs almost nothing
and the input can never be modified through them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import CfgSurgeonError, WeightsError
from .files import atomic_output
from .ir import Graph
from .layers import Connected, Layer

FLOAT = np.dtype("<f4")


@dataclass(frozen=True)
class WeightsHeader:
    """``major, minor, revision`` (int32) and ``seen`` (uint64 from version 0.2 on, else uint32)."""

    major: int = 0
    minor: int = 2
    revision: int = 5
    seen: int = 0

    @property
    def seen_is_64bit(self) -> bool:
        return self.major * 10 + self.minor >= 2

    @property
    def size(self) -> int:
        return 20 if self.seen_is_64bit else 16

    @property
    def transposed_connected(self) -> bool:
        """Very old files store connected weights as ``[inputs][outputs]``."""
        return self.major > 1000 or self.minor > 1000

    def to_bytes(self) -> bytes:
        seen = np.array([self.seen], dtype="<u8" if self.seen_is_64bit else "<u4")
        return np.array([self.major, self.minor, self.revision], dtype="<i4").tobytes() + seen.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes | np.ndarray, path: str) -> WeightsHeader:
        if len(data) < 16:
            raise WeightsError(
                f"not a darknet .weights file: {len(data)} bytes is shorter than the 16-byte header", path
            )
        major, minor, revision = (int(v) for v in np.frombuffer(bytes(data[:12]), dtype="<i4"))
        if major * 10 + minor >= 2:
            if len(data) < 20:
                raise WeightsError(
                    f"truncated header: version {major}.{minor} needs 20 bytes, file has {len(data)}", path
                )
            seen = int(np.frombuffer(bytes(data[12:20]), dtype="<u8")[0])
        else:
            seen = int(np.frombuffer(bytes(data[12:16]), dtype="<u4")[0])
        return cls(major, minor, revision, seen)


def stored_layout(layer: Layer, header: WeightsHeader) -> list[tuple[str, tuple[int, ...]]]:
    """The layer's tensors as they lie in the file (old connected layers are stored transposed)."""
    layout = layer.weight_layout()
    if header.transposed_connected and isinstance(layer, Connected):
        return [(name, shape[::-1] if name == "weights" else shape) for name, shape in layout]
    return layout


def read_weights(graph: Graph, path: str | Path, upto: int | None = None) -> WeightsHeader:
    """Attach the tensors of ``path`` to the layers of ``graph`` (as ``layer.weights``) and return the header.

    ``upto=N`` loads only layers ``0..N-1`` (e.g. a backbone file such as ``darknet53.conv.74``); the file may
    then hold more. Without it the file must hold exactly what the cfg needs: a short or long file is an error
    that names the expected and actual byte counts.
    """
    path = str(path)
    data = _mapped(path)
    header = WeightsHeader.from_bytes(data[:20], path)
    layers = graph.layers[:upto] if upto is not None else graph.layers
    needed_floats = sum(layer.params for layer in layers)
    expected = header.size + 4 * needed_floats
    actual = len(data)
    what = f"the first {len(layers)} layers of {graph.source}" if upto is not None else graph.source
    needs = f"needs {expected} bytes ({header.size}-byte header + {needed_floats} floats)"
    if actual < expected:
        raise WeightsError(
            f"file too short: {what} {needs}, "
            f"the file has {actual} ({_first_incomplete(layers, header.size, actual)})",
            path,
        )
    if upto is None and actual > expected:
        raise WeightsError(
            f"file too long: {what} {needs}, "
            f"the file has {actual} ({actual - expected} extra bytes; wrong cfg for these weights?)",
            path,
        )
    floats = np.frombuffer(data, dtype=FLOAT, count=needed_floats, offset=header.size)
    offset = 0
    for layer in layers:
        tensors = {}
        for name, shape in stored_layout(layer, header):
            count = math.prod(shape)
            tensors[name] = floats[offset : offset + count].reshape(shape)
            offset += count
        if header.transposed_connected and isinstance(layer, Connected):
            tensors["weights"] = tensors["weights"].T
        layer.weights = tensors if tensors else None
    graph.weights_header = header
    return header


def _mapped(path: str) -> np.memmap:
    try:
        return np.memmap(path, dtype=np.uint8, mode="r")
    except (OSError, ValueError) as exc:
        message = getattr(exc, "strerror", None) or str(exc)
        raise WeightsError(f"cannot read weights: {message}", path) from None


@dataclass(frozen=True)
class SourceLayout:
    """What :func:`read_weights_inferred` found in a file."""

    header: WeightsHeader
    source: Graph  # the cfg variant the file was written for, its weights loaded
    value: int | None  # the variant's parameter (e.g. the class count); None: the file fits the cfg itself
    unmatched: list[Layer]  # layers of the target graph the file has no tensors for (their weights are None)


def read_weights_inferred(
    graph: Graph, path: str | Path, variant: Callable[[int], Graph], parameter: str = "classes"
) -> SourceLayout:
    """Read ``path`` into ``graph`` even when it was written for another variant of the cfg: every layer
    whose tensors have the same shapes in both takes the file's (see :func:`take_matching`).

    ``variant(n)`` is the cfg with its free ``parameter`` set to ``n`` (no weights needed). What darknet
    users change is the class count of the heads (``variant``: :func:`cfgsurgeon.surgery.retarget.retarget`
    of the bare cfg); a layout's float count is linear in it, so ``n`` is solved from the file's size and
    checked. A file that neither the cfg nor any variant fits is an error naming its size and both layouts.
    """
    try:
        header = read_weights(graph, path)
        return SourceLayout(header, graph, None, [])
    except WeightsError as strict:
        refusal = strict
    path = str(path)
    data = _mapped(path)
    header = WeightsHeader.from_bytes(data[:20], path)
    try:
        one, step = variant(1).params, variant(2).params - variant(1).params
    except CfgSurgeonError:  # the cfg has no such parameter: the plain mismatch is the whole story
        raise refusal from None
    floats, odd = divmod(len(data) - header.size, 4)
    value = 1 + (floats - one) // step if step > 0 and not odd and floats >= one else None
    if value is None or variant(value).params != floats:
        raise WeightsError(
            f"{len(data)} bytes fit neither {graph.source} ({header.size}-byte header + {graph.params} "
            f"floats) nor it with other {parameter} ({header.size}-byte header + {one} + {step}·({parameter} "
            f"- 1) floats)",
            path,
        )
    source = variant(value)
    read_weights(source, path)
    graph.weights_header = header
    return SourceLayout(header, source, value, take_matching(graph, source))


def take_matching(graph: Graph, source: Graph) -> list[Layer]:
    """Give every layer of ``graph`` the tensors of ``source``'s layer at the same index when that is of the
    same type with the same tensor shapes; return the layers that own tensors and got none (weights None)."""
    unmatched = []
    for index, layer in enumerate(graph.layers):
        layout = layer.weight_layout()
        if not layout:
            continue
        twin = source.layers[index] if index < len(source.layers) else None
        if twin is None or twin.weights is None or twin.kind != layer.kind or twin.weight_layout() != layout:
            layer.weights = None
            unmatched.append(layer)
        else:
            layer.weights = dict(twin.weights)
    return unmatched


def write_weights(graph: Graph, path: str | Path, header: WeightsHeader | None = None) -> int:
    """Write every layer's tensors (atomically: a temp file renamed over ``path``). Returns bytes written."""
    header = header or graph.weights_header or WeightsHeader()
    with atomic_output(path) as out:
        out.write(header.to_bytes())
        written = header.size
        for layer in graph.layers:
            for array in _stored_tensors(layer, header):
                out.write(memoryview(array).cast("B"))
                written += array.nbytes
    return written


def stored_floats(graph: Graph, header: WeightsHeader | None = None) -> np.ndarray:
    """What :func:`write_weights` writes after the header, as one float32 array (for in-memory exports)."""
    header = header or graph.weights_header or WeightsHeader()
    tensors = [array.ravel() for layer in graph.layers for array in _stored_tensors(layer, header)]
    return np.concatenate(tensors).astype(FLOAT, copy=False) if tensors else np.zeros(0, FLOAT)


def _stored_tensors(layer: Layer, header: WeightsHeader) -> Iterator[np.ndarray]:
    layout = stored_layout(layer, header)
    if not layout:
        return
    if layer.weights is None:
        raise WeightsError(f"layer {layer.index} [{layer.header}] has no weights loaded", layer.where())
    for name, shape in layout:
        array = layer.weights.get(name)
        if array is None:
            raise WeightsError(f"layer {layer.index} [{layer.header}] has no '{name}' tensor", layer.where())
        if header.transposed_connected and isinstance(layer, Connected) and name == "weights":
            array = array.T
        if array.shape != shape:
            raise WeightsError(
                f"layer {layer.index} [{layer.header}] '{name}' has shape {array.shape}, "
                f"the cfg needs {shape}",
                layer.where(),
            )
        yield np.ascontiguousarray(array, dtype=FLOAT)


def _first_incomplete(layers: list[Layer], header_size: int, actual: int) -> str:
    end = header_size
    for layer in layers:
        end += 4 * layer.params
        if end > actual:
            return f"layer {layer.index} [{layer.header}] at line {layer.line} is the first that does not fit"
    return "no layer fits"  # pragma: no cover - only reached when nothing is missing
