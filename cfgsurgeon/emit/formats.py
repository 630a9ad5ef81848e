"""The export formats: per format, the output suffixes it accepts, whether it needs weights, and its writer.

Importing this module imports no framework: each writer imports its emitter when it runs, so the command
line can list the formats without loading torch or TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..ir import Graph


@dataclass(frozen=True)
class ExportOptions:
    """What the writers besides the model need; each format reads only its own."""

    fp16: bool = False  # openvino
    dynamic_batch: bool = False  # onnx, openvino
    quantize: str = "none"  # tflite
    calibration: Path | None = None  # tflite int8
    num_calibration_images: int = 300  # tflite int8


Writer = Callable[[Graph, Path, ExportOptions], str]  # writes the file, returns a line describing it


@dataclass(frozen=True)
class ExportFormat:
    suffixes: tuple[str, ...]  # "" is a path without suffix: for keras, a SavedModel directory
    needs_weights: bool
    write: Writer


def _torch_source(graph: Graph, output: Path, options: ExportOptions) -> str:
    from .torch_source import write_torch_source

    write_torch_source(graph, output)
    return f"run it: python {output} MODEL.weights INPUT.npy OUTPUT.npz"


def _onnx(graph: Graph, output: Path, options: ExportOptions) -> str:
    from .onnx import OPSET, output_names, write_onnx

    write_onnx(graph, output, dynamic_batch=options.dynamic_batch)
    batch = "dynamic" if options.dynamic_batch else "1"
    return f"opset {OPSET}, input 'images' (batch {batch}), outputs {output_names(graph)}"


def _openvino(graph: Graph, output: Path, options: ExportOptions) -> str:
    from .openvino import write_openvino

    write_openvino(graph, output, fp16=options.fp16, dynamic_batch=options.dynamic_batch)
    return f"{'FP16' if options.fp16 else 'FP32'} weights in {output.with_suffix('.bin')}"


def _tf1(graph: Graph, output: Path, options: ExportOptions) -> str:
    from .tf1 import output_names, write_tf1

    write_tf1(graph, output)
    return f"run it: python {output} MODEL.weights MODEL.pb (frozen graph, outputs {output_names(graph)})"


def _keras(graph: Graph, output: Path, options: ExportOptions) -> str:
    from .keras import output_names, write_keras

    write_keras(graph, output)
    return f"tf_keras functional model, input 'images' (batch dynamic), outputs {output_names(graph)}"


def _tflite(graph: Graph, output: Path, options: ExportOptions) -> str:
    from .keras import output_names
    from .tflite import write_tflite

    write_tflite(graph, output, options.quantize, options.calibration, options.num_calibration_images)
    return f"quantization {options.quantize}, input 'images' (batch dynamic), outputs {output_names(graph)}"


EXPORT_FORMATS: dict[str, ExportFormat] = {
    "torch-source": ExportFormat((".py",), False, _torch_source),
    "onnx": ExportFormat((".onnx",), True, _onnx),
    "openvino": ExportFormat((".xml",), True, _openvino),
    "tf1": ExportFormat((".py",), True, _tf1),
    "keras": ExportFormat((".keras", ""), True, _keras),
    "tflite": ExportFormat((".tflite",), True, _tflite),
}


def export_format(format: str) -> ExportFormat:
    found = EXPORT_FORMATS.get(format)
    if found is None:
        raise UsageError(f"unknown `format` '{format}' (one of: {', '.join(sorted(EXPORT_FORMATS))})")
    return found


def check_export(format: str, output: Path, with_weights: bool) -> None:
    """Refuse, before the model is loaded, an output that ``format`` cannot write, or a missing weights file
    that it needs."""
    suffixes = export_format(format).suffixes
    if output.suffix not in suffixes:
        expected = f"end in {suffixes[0]}" + (
            " (or have no suffix: a SavedModel directory)" if "" in suffixes else ""
        )
        raise UsageError(f"`format` {format}: output {output} should {expected}")
    if output.suffix and output.is_dir():
        raise UsageError(f"output {output} is a directory; name the file to write")
    if export_format(format).needs_weights and not with_weights:
        raise UsageError(f"`format` {format} needs `weights`")


def export(graph: Graph, format: str, output: Path, options: ExportOptions | None = None) -> str:
    """Write ``graph`` to ``output`` in ``format`` (see :func:`check_export`, to call before loading the
    model); returns a line describing what was written.

    >>> export(graph, "onnx", Path("yolov3-tiny.onnx"), ExportOptions(dynamic_batch=True))  # doctest: +SKIP
    """
    options = options or ExportOptions()
    if (options.quantize != "none" or options.calibration) and format != "tflite":
        raise UsageError("`quantize` and `calibration` are options of `format` tflite")
    try:
        return export_format(format).write(graph, output, options)
    except ImportError as exc:
        from ..runtimes import install_hint

        hint = install_hint(exc.name)
        raise UsageError(f"`format` {format} needs the package '{exc.name}': {hint}") from None
