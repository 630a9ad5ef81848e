"""IR (+ weights) → TensorFlow Lite flatbuffer, through the Keras model (``cfgsurgeon.emit.keras``).

The model is converted from a concrete function with one signature: input ``images`` (N×C×H×W float32,
symbolic batch) and one output per detection head, keyed by the heads' names (``yolo_16``), so a runner
reads them by name through the interpreter's signature runner. Quantisation (``quantize``):

* ``none``: float32, the Keras model's numbers;
* ``fp16``: weights stored as float16 (computed in float32);
* ``dynamic``: int8 weights, float activations (dynamic range);
* ``int8``: full-integer: int8 weights and activations, int8 input and outputs, with activation ranges
  calibrated on a representative dataset: real photos prepared exactly as ``detect`` prepares them
  (``images.load_image`` + ``images.network_input``: letterboxed when the cfg says ``letter_box=1``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras as keras

from ..errors import UsageError
from ..files import atomic_output
from ..ir import Graph
from .keras import INPUT_NAME, output_names, to_keras
from .quantization import QUANTIZE


def calibration_batches(graph: Graph, paths: list[Path]) -> Iterator[np.ndarray]:
    """Each photo as the network sees it in ``detect``, as a 1×C×H×W batch (a progress bar on a terminal)."""
    from tqdm import tqdm

    from ..calibration import network_batch

    for path in tqdm(paths, desc="int8 calibration", unit="image", disable=None, leave=False):
        yield network_batch(graph, path)


def convert(
    model: keras.Model,
    names: list[str],
    quantize: str = "none",
    calibration: Callable[[], Iterable[np.ndarray]] | None = None,
) -> bytes:
    """The ``.tflite`` bytes of a Keras model (outputs named ``names``)."""
    if quantize not in QUANTIZE:
        raise UsageError(f"unknown quantization '{quantize}' (choose from {', '.join(QUANTIZE)})")
    if quantize == "int8" and calibration is None:
        raise UsageError("`quantize` int8 needs `calibration`: an image list or a folder of real photos")
    spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name=INPUT_NAME)

    @tf.function(input_signature=[spec])
    def serve(images):
        outputs = model(images, training=False)
        outputs = outputs if isinstance(outputs, list | tuple) else [outputs]
        return dict(zip(names, outputs, strict=True))

    converter = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], model)
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize == "int8":
        converter.representative_dataset = lambda: ([batch] for batch in calibration())
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


def tflite_bytes(
    graph: Graph, quantize: str = "none", calibration: Callable[[], Iterable[np.ndarray]] | None = None
) -> bytes:
    return convert(to_keras(graph), output_names(graph), quantize, calibration)


def write_tflite(
    graph: Graph,
    path: str | Path,
    quantize: str = "none",
    calibration_source: str | Path | None = None,
    count: int = 300,
) -> int:
    """Write the ``.tflite`` file (atomically); returns its size in bytes. ``calibration_source``: an image
    list or a folder of photos (:func:`cfgsurgeon.calibration.calibration_images`), its first ``count``."""
    calibration = None
    if calibration_source is not None:
        from ..calibration import calibration_images

        paths = calibration_images(calibration_source, count)
        calibration = lambda: calibration_batches(graph, paths)  # noqa: E731 - called once per conversion
    data = tflite_bytes(graph, quantize, calibration)
    with atomic_output(path) as out:
        out.write(data)
    return len(data)


# -- running ------------------------------------------------------------------------------------------------


def interpreter(model: str | Path | bytes, threads: int | None = None):
    """A ``tf.lite.Interpreter`` (its deprecation notice silenced: LiteRT is not a dependency)."""
    source = {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tf.lite.Interpreter(**source, num_threads=threads)


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero = detail["quantization"]
    if detail["dtype"] == np.float32 or not scale:
        return x.astype(detail["dtype"])
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(detail["dtype"])


def _dequantize(x: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero = detail["quantization"]
    if x.dtype == np.float32 or not scale:
        return x.astype(np.float32)
    return ((x.astype(np.float32) - zero) * scale).astype(np.float32)


class TFLiteModel:
    """A ``.tflite`` model's signature: float32 batches in, float32 head outputs out (int8 models
    quantise the input and dequantise the outputs with their own scales)."""

    def __init__(self, model: str | Path | bytes, threads: int | None = None):
        self.interpreter = interpreter(model, threads)
        self.runner = self.interpreter.get_signature_runner()
        self.inputs = self.runner.get_input_details()
        self.outputs = self.runner.get_output_details()
        if list(self.inputs) != [INPUT_NAME]:
            raise UsageError(f"the TFLite model's inputs are {list(self.inputs)}, expected ['{INPUT_NAME}']")

    @property
    def output_names(self) -> list[str]:
        return list(self.outputs)

    @property
    def input_shape(self) -> list:
        detail = self.inputs[INPUT_NAME]
        return [None if d < 0 else int(d) for d in detail.get("shape_signature", detail["shape"])]

    @property
    def quantized(self) -> bool:
        return self.inputs[INPUT_NAME]["dtype"] != np.float32

    def __call__(self, batch: np.ndarray, names: list[str] | None = None) -> list[np.ndarray]:
        x = _quantize(np.ascontiguousarray(batch, dtype=np.float32), self.inputs[INPUT_NAME])
        results = self.runner(**{INPUT_NAME: x})
        return [_dequantize(results[name], self.outputs[name]) for name in names or self.output_names]
