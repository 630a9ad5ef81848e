"""Runtimes that execute a network: each is a function ``(graph, model_path) → runner``, where a runner maps
a float32 ``N×C×H×W`` batch to the detection heads' raw outputs (one array per head, batch first, in layer
order). ``detect`` and ``bench`` use the same runners, so a deployable model is checked with the pipeline that
checks the torch backend.

Without ``model_path`` the model is exported from the graph (its weights must be loaded) in memory.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from .emit.heads import INPUT_NAME, head_layers, output_names
from .errors import UsageError
from .ir import Graph

Runner = Callable[[np.ndarray], list[np.ndarray]]
T = TypeVar("T")


def _open(model: Path, what: str, load: Callable[[], T]) -> T:
    """``load()`` the user's ``model`` file; a file the runtime cannot read is a one-line error."""
    try:
        return load()
    except Exception as exc:  # each runtime raises its own types (protobuf, RuntimeError, ValueError, …)
        # OpenVINO prefixes one "Exception from <source>:" line per C++ frame; the rest is the reason.
        lines = [line.strip() for line in str(exc).splitlines() if not line.startswith("Exception from ")]
        detail = " ".join(line for line in lines if line) or type(exc).__name__
        raise UsageError(f"{model}: not {what} ({detail})") from None


def _torch(graph: Graph, model: Path | None, threads: int | None) -> Runner:
    # OpenMP threads that spin at barriers burn the CPU the working thread needs when the machine is busy:
    # yolov4-tiny on 2 threads under load took 5.8x OpenCV's CPU time spinning, 0.95x passive
    # (benchmarks/README.md). Read once, when torch loads OpenMP: effective if torch is first imported here.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from .emit.torch import channels_last, inference_model

    if model is not None:
        raise UsageError("`backend` torch runs the cfg and weights directly; `model` is for exported models")
    torch.set_num_threads(threads or default_threads())
    net = inference_model(graph)
    keep = [layer.index for layer in head_layers(graph)]

    def run(batch: np.ndarray) -> list[np.ndarray]:
        x = channels_last(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
        with torch.inference_mode():
            return [np.ascontiguousarray(out.numpy()) for out in net(x, keep=keep)]

    return run


def _onnxruntime(graph: Graph, model: Path | None, threads: int | None) -> Runner:
    import onnxruntime as ort

    from .emit.onnx import onnx_bytes

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()

    def session_of(source: str | bytes) -> ort.InferenceSession:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])

    if model is None:
        session = session_of(onnx_bytes(graph))
    else:
        session = _open(model, "an ONNX model ONNX Runtime can load", lambda: session_of(str(model)))
    _check_outputs(graph, [out.name for out in session.get_outputs()], model)
    _check_input(graph, session.get_inputs()[0].shape, model)

    def run(batch: np.ndarray) -> list[np.ndarray]:
        return session.run(None, {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)})

    return run


def _openvino(graph: Graph, model: Path | None, threads: int | None) -> Runner:
    from .emit.openvino import compile_model, write_openvino

    if model is None:
        with tempfile.TemporaryDirectory() as tmp:
            write_openvino(graph, Path(tmp) / "model.xml")
            compiled = compile_model(Path(tmp) / "model.xml", threads or default_threads())
    else:
        compiled = _open(
            model,
            "an OpenVINO IR (.xml) OpenVINO can read",
            lambda: compile_model(model, threads or default_threads()),
        )
    _check_outputs(graph, [_output_name(out, graph) for out in compiled.outputs], model)
    shape = compiled.inputs[0].get_partial_shape()
    _check_input(graph, [dim.get_length() if dim.is_static else None for dim in shape], model)
    request = compiled.create_infer_request()

    def run(batch: np.ndarray) -> list[np.ndarray]:
        results = request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return [np.array(results[out]) for out in compiled.outputs]

    return run


def _tf1(graph: Graph, model: Path | None, threads: int | None) -> Runner:
    from .emit.tf1 import tf1_runner

    return tf1_runner(graph, model, threads or default_threads())


def _keras(graph: Graph, model: Path | None, threads: int | None) -> Runner:
    import tensorflow as tf

    from .emit.keras import load_keras, to_keras, traced_forward

    # TensorFlow sizes its pools once per process: only an explicit count is applied (and refused if late)
    if threads and tf.config.threading.get_intra_op_parallelism_threads() != threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        except RuntimeError:  # TensorFlow fixes its thread pools when it starts
            message = "`threads`: TensorFlow already started in this process with another thread count"
            raise UsageError(message) from None
    net = to_keras(graph) if model is None else load_keras(model)
    expected = output_names(graph)
    if list(net.output_names) != expected:
        raise UsageError(
            f"{model or 'the exported model'} has outputs {list(net.output_names)}, but the cfg's heads are "
            f"{expected}: was it exported from this cfg?"
        )
    _check_input(graph, list(net.input_shape), model)
    return traced_forward(net)


def _tflite(graph: Graph, model: Path | None, threads: int | None) -> Runner:
    from .emit.tflite import TFLiteModel, tflite_bytes

    if model is None:
        net = TFLiteModel(tflite_bytes(graph), threads or default_threads())
    else:
        net = _open(model, "a TFLite model", lambda: TFLiteModel(model, threads or default_threads()))
    expected = output_names(graph)
    if sorted(net.output_names) != sorted(expected):
        raise UsageError(
            f"{model or 'the exported model'} has outputs {sorted(net.output_names)}, but the cfg's heads "
            f"are {expected}: was it exported from this cfg?"
        )
    _check_input(graph, net.input_shape, model)
    return lambda batch: net(batch, expected)


def _output_name(output, graph: Graph) -> str:
    """The exported name of an OpenVINO output: a head that passes its input on unchanged gives the tensor
    a second, internal name as well, and ``get_any_name`` may return either."""
    names = output.get_names()
    return next((name for name in output_names(graph) if name in names), output.get_any_name())


def _check_outputs(graph: Graph, names: list[str], model: Path | None) -> None:
    expected = output_names(graph)
    if names != expected:
        raise UsageError(
            f"{model or 'the exported model'} has outputs {names}, but the cfg's heads are "
            f"{expected}: was it exported from this cfg?"
        )


def _check_input(graph: Graph, dims: list, model: Path | None) -> None:
    """The model's input must be N×C×H×W of the cfg's size (a symbolic dimension matches anything)."""
    expected = (None, *graph.input_shape)
    if len(dims) != 4 or any(isinstance(d, int) and d != e for d, e in zip(dims, expected, strict=True) if e):
        found = "x".join(str(d) if isinstance(d, int) else "?" for d in dims)
        raise UsageError(
            f"{model or 'the exported model'} takes input {found}, but the cfg's network input is "
            f"Nx{'x'.join(map(str, graph.input_shape))}: was it exported from this cfg at this size?"
        )


BACKENDS: dict[str, Callable[[Graph, Path | None, int | None], Runner]] = {
    "torch": _torch,
    "onnxruntime": _onnxruntime,
    "openvino": _openvino,
    "tf1": _tf1,
    "keras": _keras,
    "tflite": _tflite,
}
BENCH_BACKENDS = ("torch", "onnxruntime", "openvino", "tflite")  # the runtimes whose latency `bench` measures


@functools.cache
def default_threads() -> int:
    """The threads a runtime gets unless told otherwise: the CPUs this process may run on (its affinity
    mask, not the machine's count) less those other work keeps busy (the 1-minute load average, our own
    share of it not counted), at least 1; decided once per process. Every backend, ``bench`` and ``detect``
    use this one rule: a runtime with more threads than idle CPUs waits at each barrier for a thread the OS
    has descheduled (torch on 2 threads of a busy 2-core machine: ~10× slower than on one, see
    benchmarks/README.md)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    busy = int(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
    return max(1, min(cpus, cpus + 1 - busy))


def make_runner(
    graph: Graph, backend: str = "torch", model: Path | None = None, threads: int | None = None
) -> Runner:
    """The ``backend``'s runner for ``graph`` (or the exported ``model``) on ``threads`` (default:
    :func:`default_threads`; for keras, TensorFlow's pools as they are)."""
    factory = BACKENDS.get(backend)
    if factory is None:
        raise UsageError(f"unknown backend '{backend}' (choose from {', '.join(sorted(BACKENDS))})")
    try:
        return factory(graph, model, threads)
    except ImportError as exc:
        raise UsageError(
            f"`backend` {backend} needs the package '{exc.name}': {install_hint(exc.name)}"
        ) from None


# The extra of setup.cfg that installs each framework module; tf-keras and TFMOT are no extras (they would
# pull a second TensorFlow over tensorflow-cpu), see the README's Install section.
_EXTRAS = {
    "torch": "torch",
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "onnxscript": "onnx",
    "openvino": "openvino",
    "nncf": "openvino",
}
_NO_DEPS = {"tf_keras": "tf-keras", "tensorflow_model_optimization": "tensorflow-model-optimization"}


def install_hint(module: str | None) -> str:
    """How to install the package that provides ``module`` (the name in an ImportError)."""
    top = (module or "").split(".")[0]
    if top in _NO_DEPS:
        return f"pip install 'cfgsurgeon[tf]' && pip install --no-deps {_NO_DEPS[top]} (see the README)"
    if top.startswith("tensorflow"):
        return "pip install 'cfgsurgeon[tf]'"
    return f"pip install 'cfgsurgeon[{_EXTRAS.get(top, 'torch,onnx,openvino,tf')}]'"
