"""What every exported model takes and returns, in one place (no framework imported): the input ``images``
(float32 N×C×H×W, RGB in [0, 1]) and, as outputs, the raw tensors of the detection heads in layer order (the
last layer's when the cfg has no head), each named ``<kind>_<layer index>`` (e.g. ``yolo_16``).

The torch backend returns these tensors, the ONNX / OpenVINO / TF1 / Keras / TFLite exports name their
outputs after them, and the runtimes check a model file against them before running it.
"""

from __future__ import annotations

from .. import layers as L
from ..ir import Graph

INPUT_NAME = "images"
HEAD_TYPES = (L.Yolo, L.Region, L.Detection)  # [Gaussian_yolo] is a Yolo


def head_layers(graph: Graph) -> list[L.Layer]:
    """The layers whose outputs a model returns: the detection heads, or the last layer."""
    return [layer for layer in graph.layers if isinstance(layer, HEAD_TYPES)] or [graph.layers[-1]]


def output_names(graph: Graph) -> list[str]:
    """The models' output names, one per :func:`head_layers` entry."""
    return [f"{layer.kind}_{layer.index}" for layer in head_layers(graph)]
