"""Post-training static INT8 for OpenVINO (NNCF) and ONNX Runtime (its own quantization tools), calibrated on
real photos prepared exactly as ``detect`` prepares them (``images.load_image`` + ``images.network_input``).

* **OpenVINO**: ``nncf.quantize`` on the ``openvino.Model`` that the OpenVINO export builds, preset ``mixed``:
  symmetric per-channel int8 weights and asymmetric per-tensor int8 activations. NNCF recommends ``mixed`` for
  activations that are not ReLU's; darknet's leaky ReLU outputs are asymmetric (a long positive side, a short
  negative one), so a symmetric activation grid would waste half its codes. NNCF's fast bias correction is on
  (its default), which moves each conv's bias to cancel the mean shift its int8 weights cause.
* **ONNX Runtime**: ``onnxruntime.quantization.quantize_static`` on our ONNX export: QDQ format (what both
  ONNX Runtime and OpenVINO run as int8 kernels), per-channel symmetric int8 weights, int8 activations with
  MinMax ranges, on the convolutions (their inputs, weights and outputs). The runtime's own tool rather than
  NNCF's ONNX path: it ships with onnxruntime (no other package) and writes the QDQ layout the runtime's
  kernels are built for.

``keep_float`` keeps chosen convolutional layers in float (NNCF's ignored scope, onnxruntime's excluded
nodes). ``accuracy`` (OpenVINO) runs NNCF's accuracy-aware quantization instead
(``nncf.quantize_with_accuracy_control``): our evaluator scores mAP@0.5 on a ``.data`` file's valid split
through the compiled model NNCF hands it (the prediction ``eval --backend openvino`` makes), and while int8
loses more than ``max_drop`` (absolute), NNCF reverts the next group of operations its ranking names to float.
The validation function returns each image's raw head outputs as well, so NNCF ranks the groups by how far
reverting each brings those outputs back toward float's (a smooth score; a single photo's mAP is too coarse).

The report measures each convolution's output error, float vs int8, on the calibration photos in the runtime
itself (OpenVINO and ONNX Runtime can both expose intermediate tensors as extra outputs).
"""

from __future__ import annotations

import copy
import gc
import io
import logging
import math
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from . import layers as L
from .calibration import calibration_images, network_batch  # noqa: F401 - calibration_images re-exported
from .emit.heads import INPUT_NAME
from .emit.openvino import compile_model
from .errors import UsageError
from .ir import Graph
from .signal_stack import kept_signal_stack

BACKENDS = ("openvino", "onnxruntime")
SUFFIXES = {"openvino": ".xml", "onnxruntime": ".onnx"}


# -- quantization --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerError:
    """How far one convolution's int8 output is from its float output over the calibration photos."""

    layer: int
    description: str
    sqnr_db: float  # 10·log10(Σ float² / Σ (float − int8)²)
    relative_error: float  # ‖float − int8‖ / ‖float‖
    kept_float: bool
    runs_in: str | None = None  # the precision the runtime executes it in, where it says (OpenVINO)
    kept_reason: str | None = None  # why it stayed in float: `keep_float`, or the accuracy control's step

    def to_dict(self) -> dict:
        return {
            "layer": self.layer,
            "description": self.description,
            "sqnr_db": self.sqnr_db,
            "relative_error": self.relative_error,
            "kept_float": self.kept_float,
            "kept_reason": self.kept_reason,
            "runs_in": self.runs_in,
        }


@dataclass(frozen=True)
class AccuracyControl:
    """NNCF's accuracy-aware quantization: at most ``max_drop`` of mAP@0.5 (absolute) lost on the valid split
    of the ``.data`` file ``data``, scored by our evaluator."""

    data: Path
    max_drop: float = 0.01


@dataclass(frozen=True)
class RevertStep:
    """One step of the accuracy control: the group of operations NNCF's ranking named next, reverted to
    float (``layers``: the cfg layers they belong to), and the mAP@0.5 of the model after it."""

    layers: list[int]
    operations: list[str]
    map50: float

    def to_dict(self) -> dict:
        return {"layers": self.layers, "operations": self.operations, "mAP50": self.map50}


@dataclass(frozen=True)
class AccuracyReport:
    """What the accuracy control measured and did: mAP@0.5 of float, of int8 before any reversion and of
    the model written; its ``steps`` in NNCF's order; the layers ``kept`` in float; NNCF's last word."""

    data: Path
    images: int
    max_drop: float
    float_map50: float
    int8_map50: float
    final_map50: float
    steps: list[RevertStep]
    kept: list[int]
    outcome: str

    def to_dict(self) -> dict:
        return {
            "data": str(self.data),
            "images": self.images,
            "max_drop": self.max_drop,
            "float_mAP50": self.float_map50,
            "int8_mAP50": self.int8_map50,
            "final_mAP50": self.final_map50,
            "steps": [step.to_dict() for step in self.steps],
            "kept_float": self.kept,
            "outcome": self.outcome,
        }


@dataclass(frozen=True)
class QuantizedFile:
    """What :func:`quantize` wrote and measured."""

    backend: str
    paths: list[Path]
    images: int
    float_bytes: int
    int8_bytes: int
    layers: list[LayerError]
    method: str
    accuracy: AccuracyReport | None = None  # with accuracy control


def conv_layers(graph: Graph) -> list[L.Layer]:
    return [layer for layer in graph.layers if isinstance(layer, L.Convolutional)]


def _conv_node(index: int) -> str:
    """The name of layer ``index``'s convolution (with its bias, BN folded) in our ONNX export and in the
    OpenVINO model converted from it: the torch backend's module path ``blocks.<index>.conv``."""
    return f"/blocks.{index}/conv/Conv"


def check_keep_float(graph: Graph, keep_float: Sequence[int]) -> list[int]:
    convs = {layer.index for layer in conv_layers(graph)}
    wrong = [index for index in keep_float if index not in convs]
    if wrong:
        raise UsageError(f"`keep_float`: layer {wrong[0]} is not a convolutional layer of the model")
    return sorted(set(keep_float))


def check_backend(backend: str, output: Path, accuracy: AccuracyControl | None = None) -> None:
    if backend not in BACKENDS:
        raise UsageError(f"`backend` must be one of {', '.join(BACKENDS)} for int8, got '{backend}'")
    if output.suffix != SUFFIXES[backend]:
        raise UsageError(f"the {backend} int8 output {output} should end in {SUFFIXES[backend]}")
    if accuracy is not None and backend != "openvino":
        raise UsageError("`accuracy_control` is NNCF's, for `backend` openvino")
    if accuracy is not None and not 0 < accuracy.max_drop < 1:
        raise UsageError(f"`max_drop` is a drop of mAP@0.5, between 0 and 1: got {accuracy.max_drop}")


def quantize(
    graph: Graph,
    backend: str,
    images: list[Path],
    output: Path,
    keep_float: Sequence[int] = (),
    progress: bool = False,
    accuracy: AccuracyControl | None = None,
) -> QuantizedFile:
    """Quantize ``graph`` (weights loaded) for ``backend``, calibrated on ``images``, into ``output``
    (``.xml`` + ``.bin`` for openvino, ``.onnx`` for onnxruntime), and measure each conv's output error.
    ``progress``: NNCF's progress bars on stderr. ``accuracy``: NNCF's accuracy control (openvino)."""
    check_backend(backend, output, accuracy)
    kept = check_keep_float(graph, keep_float)
    batches = [network_batch(graph, path) for path in images]  # every photo checked before the slow part
    validation = None if accuracy is None else _Validation(graph, accuracy.data)  # the data set checked too
    output.parent.mkdir(parents=True, exist_ok=True)
    if backend == "onnxruntime":
        return _onnxruntime(graph, batches, output, kept, progress)
    return _openvino(graph, batches, output, kept, progress, accuracy, validation)


@contextmanager
def _quiet_libraries(progress: bool = False) -> Iterator[None]:
    """Library code prints nothing: NNCF draws its progress bars on stdout (sent to stderr with
    ``progress``, else dropped), and NNCF and ONNX Runtime give advice through logging (errors only)."""
    loggers = [logging.getLogger(name) for name in ("nncf", "root")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with redirect_stdout(sys.stderr if progress else io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _openvino(
    graph: Graph,
    batches: list[np.ndarray],
    output: Path,
    kept: list[int],
    progress: bool,
    accuracy: AccuracyControl | None = None,
    validation: _Validation | None = None,
) -> QuantizedFile:
    import nncf
    import openvino as ov

    from .emit.openvino import openvino_model, save_openvino

    float_model = openvino_model(graph)
    options = dict(
        preset=nncf.QuantizationPreset.MIXED,
        subset_size=len(batches),
        ignored_scope=nncf.IgnoredScope(names=[f"{_conv_node(i)}/WithoutBiases" for i in kept]),
    )
    report = None
    with kept_signal_stack():  # NNCF compiles with OpenVINO Cores of its own
        if accuracy is None or validation is None:
            with _quiet_libraries(progress):
                int8_model = nncf.quantize(float_model, nncf.Dataset(batches), **options)
        else:
            int8_model, report = _with_accuracy_control(
                nncf, ov, float_model, batches, accuracy, validation, options, progress
            )
        gc.collect()  # those Cores go while the stack they found is still put back after them
    save_openvino(int8_model, output)
    with tempfile.TemporaryDirectory() as tmp:
        save_openvino(float_model, Path(tmp) / "float.xml")
        float_bytes = sum(p.stat().st_size for p in Path(tmp).iterdir())
    paths = [output, output.with_suffix(".bin")]
    errors = _layer_errors(
        graph,
        kept,
        _openvino_outputs(ov, float_model, graph, batches),
        _openvino_outputs(ov, int8_model, graph, batches),
    )
    precisions = _openvino_precisions(ov, int8_model)
    reasons = {index: "`keep_float`" for index in kept} | _kept_reasons(report)
    errors = [
        replace(
            error,
            runs_in=precisions.get(error.layer),
            kept_float=error.layer in reasons,
            kept_reason=reasons.get(error.layer),
        )
        for error in errors
    ]
    method = f"NNCF {nncf.__version__}, preset mixed, fast bias correction"
    if report is not None:
        method += f", accuracy control (max drop {report.max_drop:g} mAP@0.5)"
    int8_bytes = sum(p.stat().st_size for p in paths)
    return QuantizedFile("openvino", paths, len(batches), float_bytes, int8_bytes, errors, method, report)


# -- accuracy control ----------------------------------------------------------------------------------------


class _Validation:
    """NNCF's validation function: mAP@0.5 of the compiled model NNCF passes, on the items (image indices)
    it asks for of ``data``'s valid split, by our evaluator (``predict`` with a runner, then ``score``: what
    ``eval --backend openvino --model`` computes), plus each image's raw head outputs."""

    def __init__(self, graph: Graph, data: Path) -> None:
        from .detect import _common_classes, head_layers
        from .train.dataset import DetectionDataset, read_data_file

        spec = read_data_file(data)
        classes = _common_classes(head_layers(graph))
        if classes != spec.classes:
            raise UsageError(f"classes={spec.classes}, but the model has {classes} classes", str(spec.source))
        self.graph, self.names = graph, spec.names
        self.dataset = DetectionDataset.from_data(spec, "valid", graph, augment=False)
        if self.dataset.missing_labels == len(self.dataset):
            raise UsageError("no image of the valid split has a label file to score against", str(data))

    def network_input(self, index: int) -> np.ndarray:
        """NNCF's transform of an item: the image as the evaluator feeds it, a 1×C×H×W batch."""
        return self.dataset.sample(index)[0][None]

    def __call__(self, compiled, items) -> tuple[float, list[list[np.ndarray]]]:
        from .train.evaluate import predict, score

        indices = list(items)
        subset = copy.copy(self.dataset)  # the same preparation, on the chosen photos
        subset.images = [self.dataset.images[i] for i in indices]
        subset.labels = [self.dataset.labels[i] for i in indices]
        request = compiled.create_infer_request()
        outputs: list[list[np.ndarray]] = []

        def run(batch: np.ndarray) -> list[np.ndarray]:
            heads = [np.array(value) for value in request.infer({0: batch}).to_tuple()]
            outputs.append(heads)
            return heads

        found, truths = predict(self.graph, subset, runner=run)
        return float(score(found, truths, self.names).mAP50), outputs


def _with_accuracy_control(
    nncf,
    ov,
    float_model,
    batches: list[np.ndarray],
    accuracy: AccuracyControl,
    validation: _Validation,
    options: dict,
    progress: bool,
) -> tuple[object, AccuracyReport]:
    """``nncf.quantize_with_accuracy_control``; NNCF logs what it reverts (at INFO), read back here."""
    items = list(range(len(validation.dataset)))
    scores: list[float] = []

    def validate(compiled, chosen) -> tuple[float, list[list[np.ndarray]]]:
        chosen = list(chosen)
        map50, outputs = validation(compiled, chosen)
        if len(chosen) == len(items):
            scores.append(map50)  # float, int8, then one per step, in NNCF's order
        return map50, outputs

    restorer = nncf.AdvancedAccuracyRestorerParameters(num_ranking_workers=1)  # no extra processes
    with _quiet_libraries(progress), _nncf_messages() as messages:
        int8_model = nncf.quantize_with_accuracy_control(
            float_model,
            nncf.Dataset(batches),
            nncf.Dataset(items, validation.network_input),
            validate,
            max_drop=accuracy.max_drop,
            drop_type=nncf.DropType.ABSOLUTE,
            advanced_accuracy_restorer_parameters=restorer,
            **options,
        )
    compiled = compile_model(int8_model)
    final = validation(compiled, items)[0]
    return int8_model, _accuracy_report(accuracy, len(items), scores, messages, final)


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _nncf_messages() -> Iterator[list[str]]:
    """NNCF's INFO messages, kept instead of printed (its own handler writes to the real stdout)."""
    logger = logging.getLogger("nncf")
    handlers = [(handler, handler.level) for handler in logger.handlers]
    level, capture = logger.level, _Messages()
    for handler, _ in handlers:
        handler.setLevel(logging.ERROR)
    logger.setLevel(logging.INFO)
    logger.addHandler(capture)
    try:
        yield capture.messages
    finally:
        logger.removeHandler(capture)
        logger.setLevel(level)
        for handler, handler_level in handlers:
            handler.setLevel(handler_level)


_REVERTED = re.compile(r"Reverted \d+ operations to the floating-point precision:")
_FINAL = re.compile(r"\d+ out of \d+ were reverted back to the floating-point precision:")
_OUTCOME = ("Algorithm completed", "The algorithm could not achieve", "All layers have been checked")


def _layers_of(operations: list[str]) -> list[int]:
    return sorted({int(m.group(1)) for op in operations if (m := re.search(r"/blocks\.(\d+)/", op))})


def _accuracy_report(
    accuracy: AccuracyControl, images: int, scores: list[float], messages: list[str], final: float
) -> AccuracyReport:
    """The steps NNCF logged (each followed by one full validation), the operations it left in float."""
    reverted = [m.split("\n")[1:] for m in messages if _REVERTED.match(m)]
    ops = [[op.strip() for op in group if op.strip()] for group in reverted]
    steps = [
        RevertStep(_layers_of(group), group, score) for group, score in zip(ops, scores[2:], strict=False)
    ]
    finals = [m.split("\n")[1:] for m in messages if _FINAL.match(m)]
    kept_ops = [op.strip() for op in finals[-1] if op.strip()] if finals else [op for g in ops for op in g]
    said = [m.splitlines()[0] for m in messages if m.startswith(_OUTCOME)]
    outcome = said[-1] if said else f"int8 was within {accuracy.max_drop:g} of float: nothing to revert"
    return AccuracyReport(
        accuracy.data, images, accuracy.max_drop, scores[0], scores[1], final, steps, _layers_of(kept_ops),
        outcome,
    )  # fmt: skip


def _kept_reasons(report: AccuracyReport | None) -> dict[int, str]:
    """Per layer the accuracy control left in float: the step of NNCF's ranking that reverted it."""
    if report is None:
        return {}
    reasons = {}
    for number, step in enumerate(report.steps, 1):
        for layer in step.layers:
            if layer in report.kept and layer not in reasons:
                reasons[layer] = (
                    f"accuracy control step {number} (NNCF's ranking): mAP@0.5 then {step.map50:.4f}"
                )
    return reasons


def _openvino_outputs(ov, model, graph: Graph, batches: list[np.ndarray]) -> list[dict[int, np.ndarray]]:
    """Per photo, each conv layer's output (by layer index), read through extra outputs of a copy of
    ``model``, compiled as ``detect`` compiles it (CPU, f32 inference where not int8)."""
    model = model.clone()
    ops = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
    taps = {
        layer.index: ops[_conv_node(layer.index)]
        for layer in conv_layers(graph)
        if _conv_node(layer.index) in ops
    }
    outputs = model.add_outputs([op.output(0) for op in taps.values()])
    compiled = compile_model(model)
    first = len(compiled.outputs) - len(outputs)  # the extra outputs come after the model's own
    request = compiled.create_infer_request()
    results = []
    for batch in batches:
        values = request.infer({0: batch}).to_tuple()
        results.append({index: np.array(values[first + k]) for k, index in enumerate(taps)})
    return results


def _openvino_precisions(ov, model) -> dict[int, str]:
    """Per conv layer, the precision OpenVINO's CPU plugin runs it in (u8/i8: int8 kernels; f32: it fell
    back, e.g. where a concat joins tensors quantized differently)."""
    compiled = compile_model(model)
    found = {}
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        match = re.fullmatch(r"/blocks\.(\d+)/conv/Conv/WithoutBiases", op.get_friendly_name())
        if match and info["layerType"].astype(str) == "Convolution":
            found[int(match.group(1))] = info["runtimePrecision"].astype(str)
    return found


def _onnxruntime(
    graph: Graph, batches: list[np.ndarray], output: Path, kept: list[int], progress: bool
) -> QuantizedFile:
    import onnx
    import onnxruntime
    from onnxruntime import quantization as q

    from .emit.onnx import onnx_bytes
    from .files import atomic_output

    float_bytes = onnx_bytes(graph)

    class Photos(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.remaining = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.remaining, None)
            return None if batch is None else {INPUT_NAME: batch}

    with tempfile.TemporaryDirectory() as tmp, _quiet_libraries(progress):
        int8_path = Path(tmp) / "int8.onnx"
        q.quantize_static(
            onnx.load_from_string(float_bytes),
            str(int8_path),
            Photos(),
            quant_format=q.QuantFormat.QDQ,
            per_channel=True,
            activation_type=q.QuantType.QInt8,
            weight_type=q.QuantType.QInt8,
            calibrate_method=q.CalibrationMethod.MinMax,
            # convolutions only (NNCF's choice too): the export pads max pools with -inf, whose range
            # would give the pad's tensor a NaN zero point
            op_types_to_quantize=["Conv"],
            nodes_to_exclude=[_conv_node(i) for i in kept],
        )
        int8_bytes = int8_path.read_bytes()
    with atomic_output(output) as out:
        out.write(int8_bytes)
    errors = _layer_errors(
        graph,
        kept,
        _onnx_outputs(onnx, onnxruntime, float_bytes, graph, batches),
        _onnx_outputs(onnx, onnxruntime, int8_bytes, graph, batches),
    )
    method = f"onnxruntime {onnxruntime.__version__} quantize_static, QDQ, per-channel weights, MinMax"
    return QuantizedFile(
        "onnxruntime", [output], len(batches), len(float_bytes), len(int8_bytes), errors, method
    )


def _onnx_outputs(onnx, onnxruntime, data: bytes, graph: Graph, batches: list[np.ndarray]):
    """Per photo, each conv layer's output, read by making its tensor a graph output of a copy."""
    model = onnx.load_from_string(data)
    produced = {out for node in model.graph.node for out in node.output}
    taps = {
        layer.index: f"{_conv_node(layer.index)}_output_0"
        for layer in conv_layers(graph)
        if f"{_conv_node(layer.index)}_output_0" in produced
    }
    present = {out.name for out in model.graph.output}
    for name in taps.values():
        if name not in present:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    results = []
    for batch in batches:
        values = session.run(list(taps.values()), {INPUT_NAME: batch})
        results.append(dict(zip(taps, values, strict=True)))
    return results


def _layer_errors(
    graph: Graph,
    kept: list[int],
    floats: list[dict[int, np.ndarray]],
    int8s: list[dict[int, np.ndarray]],
) -> list[LayerError]:
    errors = []
    for layer in conv_layers(graph):
        if layer.index not in floats[0] or layer.index not in int8s[0]:
            continue
        signal = sum(float(np.sum(np.square(f[layer.index], dtype=np.float64))) for f in floats)
        noise = sum(
            float(np.sum(np.square(f[layer.index] - q[layer.index], dtype=np.float64)))
            for f, q in zip(floats, int8s, strict=True)
        )
        sqnr = math.inf if noise == 0 else 10 * math.log10(signal / noise) if signal else -math.inf
        relative = math.sqrt(noise / signal) if signal else math.inf
        errors.append(
            LayerError(
                layer.index, f"{layer.filters} {layer.describe()}", sqnr, relative, layer.index in kept
            )
        )
    return errors
