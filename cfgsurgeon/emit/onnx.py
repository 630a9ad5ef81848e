"""IR → ONNX, through the torch backend (``torch.onnx.export`` with the TorchScript exporter, opset 17).

The graph's outputs are the raw detection-head tensors, named ``<type>_<layer index>`` (e.g. ``yolo_30``), the
same tensors the torch backend returns; ``cfgsurgeon.postprocess.decode`` + ``detect`` turn them into boxes
for every runtime. The input is ``images`` (N×C×H×W, RGB in [0, 1]); ``dynamic_batch`` makes N symbolic.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import IO

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
    buffer = io.BytesIO()
    _export(graph, buffer, dynamic_batch)
    return buffer.getvalue()


def write_onnx(graph: Graph, path: str | Path, dynamic_batch: bool = False) -> None:
    with atomic_output(path) as out:  # straight into the file: no serialised copy held in Python
        _export(graph, out, dynamic_batch)


def _export(graph: Graph, out: IO[bytes], dynamic_batch: bool) -> None:
    """Trace the torch backend into ``out``. Its batch norms are folded first (as the exporter's own
    eval-mode pass would do, but that pass keeps the unfolded tensors alive beside the folded copies: one
    more copy of the weights at the peak; ``benchmarks/bench_export.py``)."""
    import torch

    from .torch import fold_batch_norms, to_torch

    torch.onnx.register_custom_op_symbolic("aten::expm1", _expm1, OPSET)

    model = fold_batch_norms(to_torch(graph))
    c, h, w = graph.input_shape
    example = torch.zeros(1, c, h, w)
    names = output_names(graph)
    axes = {name: {0: "batch"} for name in [INPUT_NAME, *names]} if dynamic_batch else None
    with warnings.catch_warnings(), torch.no_grad():  # the tracer's notes on Python-side shape arithmetic
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            out,
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=names,
            dynamic_axes=axes,
        )
