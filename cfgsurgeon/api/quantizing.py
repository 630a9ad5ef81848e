"""Model method that writes an INT8 model for OpenVINO or ONNX Runtime (``cfgsurgeon quantize``), and its
report."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UsageError
from ..files import refuse_overwrite
from .report import Report

if TYPE_CHECKING:
    from ..int8 import AccuracyControl, AccuracyReport, LayerError, QuantizedFile
    from ..ir import Graph


class Quantizing:
    """Mixed into :class:`cfgsurgeon.Model`."""

    graph: Graph
    cfg: Path | None
    weights: Path | None
    has_weights: bool

    def quantize(
        self,
        output: str | Path,
        *,
        backend: str = "openvino",
        calibration: str | Path,
        subset: int | None = 300,
        keep_float: Sequence[int] = (),
        accuracy_control: bool = False,
        data: str | Path | None = None,
        max_drop: float = 0.01,
        progress: bool = False,
    ) -> Quantized:
        """Post-training static INT8 (``cfgsurgeon quantize``): ``backend`` openvino (NNCF, ``output`` a
        ``.xml``, its ``.bin`` beside it) or onnxruntime (QDQ, ``output`` a ``.onnx``), activation ranges
        calibrated on the first ``subset`` photos of ``calibration`` (an image list or a folder), prepared as
        :meth:`detect` prepares them. ``keep_float``: conv layer indices left in float. ``accuracy_control``
        (openvino): NNCF's accuracy-aware quantization, scored by our evaluator (mAP@0.5) on the valid split
        of the ``.data`` file ``data``; groups of operations go back to float, in NNCF's ranking order, until
        int8 loses at most ``max_drop`` (absolute). ``progress``: NNCF's bars on stderr. Returns what was
        written and each conv's error, float vs int8 (:class:`Quantized`); ``cfgsurgeon.int8`` says which
        options are used and why.

        >>> model.quantize("int8.xml", calibration="valid.txt", subset=100).paths  # doctest: +SKIP
        [PosixPath('int8.xml'), PosixPath('int8.bin')]
        """
        from ..calibration import calibration_images
        from ..int8 import check_backend
        from ..int8 import quantize as quantize_graph

        output = Path(output)
        accuracy = _accuracy_control(accuracy_control, data, max_drop)
        check_backend(backend, output, accuracy)
        if not self.has_weights:
            raise UsageError("int8 quantization needs trained weights (`weights`)")
        images = calibration_images(calibration, subset)
        outputs = [output, output.with_suffix(".bin")] if backend == "openvino" else [output]
        inputs = [self.cfg, self.weights, Path(calibration), *images, accuracy and accuracy.data]
        refuse_overwrite(outputs, inputs)
        try:
            written = quantize_graph(self.graph, backend, images, output, keep_float, progress, accuracy)
        except ImportError as exc:
            from ..runtimes import install_hint

            message = f"`backend` {backend} int8 needs the package '{exc.name}': {install_hint(exc.name)}"
            raise UsageError(message) from None
        return Quantized(written)


def _accuracy_control(enabled: bool, data: str | Path | None, max_drop: float) -> AccuracyControl | None:
    from ..int8 import AccuracyControl

    if not enabled:
        if data is not None:
            raise UsageError("`data` scores the accuracy control: give `accuracy_control` too")
        return None
    if data is None:
        raise UsageError("`accuracy_control` needs `data`: a .data file whose valid split scores mAP@0.5")
    return AccuracyControl(Path(data), max_drop)


class Quantized(Report):
    """What :meth:`Model.quantize` wrote: ``paths``, ``backend``, the ``method`` (library and options), the
    calibration ``images`` count, ``float_bytes`` / ``int8_bytes`` (the float export's size and the int8
    files'), and ``layers``: per convolution its ``sqnr_db`` and ``relative_error`` (float vs int8 output on
    the calibration photos), whether it was kept in float, and (OpenVINO) the precision the CPU plugin runs
    it in, ``runs_in``: u8/i8 for int8 kernels, f32 where it fell back."""

    def __init__(self, written: QuantizedFile) -> None:
        self.written = written

    @property
    def paths(self) -> list[Path]:
        return list(self.written.paths)

    @property
    def backend(self) -> str:
        return self.written.backend

    @property
    def method(self) -> str:
        return self.written.method

    @property
    def images(self) -> int:
        return self.written.images

    @property
    def float_bytes(self) -> int:
        return self.written.float_bytes

    @property
    def int8_bytes(self) -> int:
        return self.written.int8_bytes

    @property
    def layers(self) -> list[LayerError]:
        return list(self.written.layers)

    @property
    def accuracy(self) -> AccuracyReport | None:
        """With accuracy control: mAP@0.5 float / int8 / written, NNCF's steps and the layers kept."""
        return self.written.accuracy

    @property
    def data(self) -> dict:
        """The ``--json`` object (an infinite SQNR, an exact layer, is null); ``kept_float`` lists the
        layers left in float with the reason of each."""
        return {
            "backend": self.backend,
            "paths": [str(path) for path in self.paths],
            "method": self.method,
            "calibration_images": self.images,
            "float_bytes": self.float_bytes,
            "int8_bytes": self.int8_bytes,
            "kept_float": [{"layer": e.layer, "reason": e.kept_reason} for e in self.layers if e.kept_float],
            "accuracy_control": None if self.accuracy is None else self.accuracy.to_dict(),
            "layers": [
                {key: None if isinstance(v, float) and math.isinf(v) else v for key, v in e.to_dict().items()}
                for e in self.layers
            ],
        }

    def json(self) -> str:
        return json.dumps(self.data)

    def lines(self) -> list[str]:
        ratio = self.int8_bytes / self.float_bytes
        lines = [
            f"wrote {', '.join(map(str, self.paths))} ({self.backend} int8; {self.method}; "
            f"{self.images} calibration images)",
            f"size: float {self.float_bytes:,} bytes, int8 {self.int8_bytes:,} bytes ({ratio:.3f}x)",
            "conv output error, float vs int8, on the calibration images:",
            f"{'layer':>5}  {'conv':<12} {'SQNR dB':>8} {'rel. error':>10}  runs in",
        ]
        for error in self.layers:
            runs_in = "float (kept)" if error.kept_float else error.runs_in or "int8"
            lines.append(
                f"{error.layer:>5}  {error.description:<12} {error.sqnr_db:>8.2f} "
                f"{error.relative_error:>10.4f}  {runs_in}"
            )
        return lines + self._accuracy_lines()

    def _accuracy_lines(self) -> list[str]:
        report = self.accuracy
        if report is None:
            return []
        lines = [
            f"accuracy control on {report.data} (valid split, {report.images} images, max drop "
            f"{report.max_drop:g} mAP@0.5): float {report.float_map50:.4f}, int8 {report.int8_map50:.4f}, "
            f"written {report.final_map50:.4f}",
        ]
        for number, step in enumerate(report.steps, 1):
            layers = ", ".join(map(str, step.layers)) or ", ".join(step.operations)
            lines.append(f"  step {number}: NNCF reverted layers {layers} to float: mAP@0.5 {step.map50:.4f}")
        kept = ", ".join(map(str, report.kept)) or "none"
        lines.append(f"  kept in float: {kept} ({report.outcome})")
        return lines
