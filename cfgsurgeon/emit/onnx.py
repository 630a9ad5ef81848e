"""IR → ONNX, through the torch backend (``torch.onnx.export`` with the TorchScript exporter, opset 17).

The graph's outputs are the raw detection-head tensors, named ``<type>_<layer index>`` (e.g. ``yolo_30``), the
same tensors the torch backend returns; ``cfgsurgeon.postprocess.decode`` + ``detect`` turn them into boxes
for every runtime. The input is ``images`` (N×C×H×W, RGB in [0, 1]); ``dynamic_batch`` makes N symbolic.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from ..files import atomic_output
from ..ir import Graph
from .heads import INPUT_NAME, output_names

__all__ = ["INPUT_NAME", "OPSET", "onnx_bytes", "output_names", "write_onnx"]

OPSET = 17  # the newest opset the TorchScript exporter writes by default; onnxruntime and OpenVINO read it


def _expm1(g, x):
    # The TorchScript exporter has no rule for aten::expm1 (darknet's elu/selu); exp(x) − 1 differs from it by
    # float32 rounding near 0, within the export tolerance.
    import torch

    return g.op("Sub", g.op("Exp", x), g.op("Constant", value_t=torch.tensor(1.0)))


def onnx_bytes(graph: Graph, dynamic_batch: bool = False) -> bytes:
    """Serialised ONNX model of ``graph`` (weights must be loaded)."""
    import torch

    from .torch import to_torch

    torch.onnx.register_custom_op_symbolic("aten::expm1", _expm1, OPSET)

    model = to_torch(graph)
    c, h, w = graph.input_shape
    example = torch.zeros(1, c, h, w)
    names = output_names(graph)
    axes = {name: {0: "batch"} for name in [INPUT_NAME, *names]} if dynamic_batch else None
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the tracer's notes on Python-side shape arithmetic; shapes are static
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=names,
            dynamic_axes=axes,
        )
    return buffer.getvalue()


def write_onnx(graph: Graph, path: str | Path, dynamic_batch: bool = False) -> None:
    data = onnx_bytes(graph, dynamic_batch)
    with atomic_output(path) as out:
        out.write(data)
