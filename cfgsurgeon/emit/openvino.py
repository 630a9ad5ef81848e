"""IR → OpenVINO IR (``.xml`` + ``.bin``), converted from our ONNX export.

Why from ONNX: it is the one graph we already verify against onnxruntime, it needs no TensorFlow, and
``openvino.convert_model`` reads it offline with every op the backend emits. FP32 weights by default
(``openvino.save_model`` would compress to FP16 unless told not to); ``fp16=True`` halves the file. At run
time the CPU plugin defaults to bf16 on AMX machines, so :func:`compile_model` pins f32 inference.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..errors import UsageError
from ..ir import Graph
from .onnx import write_onnx


def openvino_model(graph: Graph, dynamic_batch: bool = False):
    """The graph as an in-memory ``openvino.Model``: what ``write_openvino`` saves (weights loaded)."""
    import openvino as ov

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        write_onnx(graph, onnx_path, dynamic_batch)
        return ov.convert_model(str(onnx_path))


def write_openvino(
    graph: Graph, xml_path: str | Path, fp16: bool = False, dynamic_batch: bool = False
) -> None:
    save_openvino(openvino_model(graph, dynamic_batch), xml_path, fp16)


def save_openvino(model, xml_path: str | Path, fp16: bool = False) -> None:
    """Write an ``openvino.Model`` as ``xml_path`` and the ``.bin`` beside it, each replaced atomically."""
    import openvino as ov

    xml_path = Path(xml_path)
    if xml_path.suffix != ".xml":
        raise UsageError(f"OpenVINO output {xml_path} should end in .xml (the .bin is written beside it)")
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    # staged beside the output: a rename from the system temp folder fails across file systems (tmpfs /tmp)
    with tempfile.TemporaryDirectory(prefix=f".{xml_path.stem}.", dir=xml_path.parent) as stage:
        staged = Path(stage) / xml_path.name
        ov.save_model(model, str(staged), compress_to_fp16=fp16)
        staged.with_suffix(".bin").replace(xml_path.with_suffix(".bin"))  # .bin first: the .xml names it
        staged.replace(xml_path)


def compile_model(model, threads: int | None = None):
    """Compile ``model`` (an IR or ONNX file, or an ``openvino.Model``) for the CPU with exact f32 inference,
    leaving the calling thread's alternate signal stack as it was (:mod:`cfgsurgeon.signal_stack`)."""
    import openvino as ov

    from ..signal_stack import kept_signal_stack

    config: dict[str, object] = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    with kept_signal_stack():
        return ov.Core().compile_model(str(model) if isinstance(model, str | Path) else model, "CPU", config)
