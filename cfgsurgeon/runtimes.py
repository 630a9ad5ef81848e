"""Runtimes that execute a network: each is a function ``(graph, model_path) → runner``, where a runner maps
a float32 ``N×C×H×W`` batch to the detection heads' raw outputs (one array per head, batch first, in layer
order). ``detect`` and ``bench`` use the same runners, so a deployable model is checked with the pipeline that
checks the torch backend.

Without ``model_path`` the model is exported from the graph (its weights must be loaded) in memory.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import layers as L
from .errors import UsageError
from .ir import Graph

Runner = Callable[[np.ndarray], list[np.ndarray]]
HEAD_TYPES = (L.Yolo, L.Region, L.Detection)


def head_layers(graph: Graph) -> list[L.Layer]:
    """The layers whose outputs the runners return: the detection heads, or the last layer."""
    return [layer for layer in graph.layers if isinstance(layer, HEAD_TYPES)] or [graph.layers[-1]]


def _torch(graph: Graph, model: Path | None, threads: int | None) -> Runner:
    import torch

    from .emit.torch import to_torch

    if model is not None:
        raise UsageError("--backend torch runs the cfg and weights directly; --model is for exported models")
    if threads:
        torch.set_num_threads(threads)
    net = to_torch(graph)
    keep = [layer.index for layer in head_layers(graph)]

    def run(batch: np.ndarray) -> list[np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        with torch.inference_mode():
            return [out.numpy() for out in net(x, keep=keep)]

    return run


def _onnxruntime(graph: Graph, model: Path | None, threads: int | None) -> Runner:
    import onnxruntime as ort

    from .emit.onnx import INPUT_NAME, onnx_bytes

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    source = str(model) if model is not None else onnx_bytes(graph)
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    _check_outputs(graph, [out.name for out in session.get_outputs()], model)

    def run(batch: np.ndarray) -> list[np.ndarray]:
        return session.run(None, {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)})

    return run


def _openvino(graph: Graph, model: Path | None, threads: int | None) -> Runner:
    from .emit.openvino import compile_model, write_openvino

    if model is None:
        with tempfile.TemporaryDirectory() as tmp:
            write_openvino(graph, Path(tmp) / "model.xml")
            compiled = compile_model(Path(tmp) / "model.xml", threads)
    else:
        compiled = compile_model(model, threads)
    _check_outputs(graph, [out.get_any_name() for out in compiled.outputs], model)
    request = compiled.create_infer_request()

    def run(batch: np.ndarray) -> list[np.ndarray]:
        results = request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return [np.array(results[out]) for out in compiled.outputs]

    return run


def _check_outputs(graph: Graph, names: list[str], model: Path | None) -> None:
    from .emit.onnx import output_names

    expected = output_names(graph)
    if names != expected:
        raise UsageError(
            f"{model or 'the exported model'} has outputs {names}, but the cfg's heads are "
            f"{expected}: was it exported from this cfg?"
        )


BACKENDS: dict[str, Callable[[Graph, Path | None, int | None], Runner]] = {
    "torch": _torch,
    "onnxruntime": _onnxruntime,
    "openvino": _openvino,
}


def make_runner(
    graph: Graph, backend: str = "torch", model: Path | None = None, threads: int | None = None
) -> Runner:
    factory = BACKENDS.get(backend)
    if factory is None:
        raise UsageError(f"unknown backend '{backend}' (choose from {', '.join(sorted(BACKENDS))})")
    try:
        return factory(graph, model, threads)
    except ImportError as exc:
        raise UsageError(
            f"--backend {backend} needs the package '{exc.name}': pip install 'cfgsurgeon[{_extra(backend)}]'"
        ) from None


def _extra(backend: str) -> str:
    return {"onnxruntime": "onnx", "openvino": "openvino,onnx"}.get(backend, backend)
