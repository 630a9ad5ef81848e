"""Model methods that run the model: detect, evaluate, export, bench (and their reports); :func:`bench`
compares several models."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..files import refuse_overwrite
from .report import Report

if TYPE_CHECKING:
    from ..bench import LoadedModel, ModelSpec
    from ..detect import Detection, ImageResult
    from ..ir import Graph
    from ..train.evaluate import ClassMetrics, Metrics
    from ..train.evaluate import Evaluation as EvaluationResult
    from .model import Model

Log = Callable[[str], None]


def _silent(message: str) -> None:
    """The ``log`` of a call that was given none."""


class Running:
    """Mixed into :class:`cfgsurgeon.Model`."""

    graph: Graph
    cfg: Path | None
    weights: Path | None
    has_weights: bool

    def detect(
        self,
        images: str | Path | Sequence[str | Path],
        *,
        names: str | Path | Sequence[str] | None = None,
        thresh: float = 0.25,
        backend: str = "torch",
        model: str | Path | None = None,
        output: str | Path | None = None,
    ) -> Detections:
        """Detect objects in photos as ``darknet detector test -ext_output`` does (``cfgsurgeon detect``).

        ``names``: a darknet ``.names`` file or the class names themselves (default: the class numbers).
        ``backend`` runs the network (``model``: an exported file for a backend other than torch, which
        holds the weights, so a model loaded from its cfg alone will do; else it is exported in memory).
        ``output``: a folder that gets ``<image-stem>.png`` with the boxes drawn (nothing is drawn without
        it). Returns the detections of every photo (:class:`Detections`).

        >>> model.detect("dog.jpg", names="coco.names").detections[0][0].name  # doctest: +SKIP
        'dog'
        """
        from ..detect import check_images, detect_image, draw, output_paths
        from ..runtimes import make_runner

        if model is None and not self.has_weights:
            raise UsageError("detecting needs the model's `weights`, or an exported `model` that holds them")
        paths = [Path(images)] if isinstance(images, str | Path) else [Path(image) for image in images]
        check_images(paths)
        drawn = [] if output is None else output_paths(paths, Path(output))
        names_file = Path(names) if isinstance(names, str | Path) else None
        refuse_overwrite(drawn, [*paths, self.cfg, self.weights, names_file])
        warnings: list[str] = []
        class_names = _class_names(self.graph, names, warnings.append)
        runner = make_runner(self.graph, backend, None if model is None else Path(model))
        if output is not None:
            Path(output).mkdir(parents=True, exist_ok=True)
        results = []
        for index, image in enumerate(paths):
            results.append(detect_image(self.graph, runner, image, class_names, thresh))
            if drawn:
                draw(image, results[-1].detections, drawn[index], classes=len(class_names))
        return Detections(results, drawn, warnings)

    def evaluate(
        self,
        data: str | Path,
        *,
        split: str = "valid",
        thresh: float = 0.001,
        iou: float = 0.45,
        pr_thresh: float = 0.25,
        batch: int = 16,
        classes: str | Sequence[int | str] | None = None,
        all_classes: bool = False,
        save_json: str | Path | None = None,
        save_txt: str | Path | None = None,
        backend: str = "torch",
        model: str | Path | None = None,
        progress: bool = False,
        log: Log | None = None,
    ) -> Evaluation:
        """Score the model on a darknet ``.data`` file's ``split`` (``cfgsurgeon eval``): P and R at
        ``pr_thresh``, COCO mAP@0.5 and mAP@0.5:0.95 over the detections above ``thresh`` after NMS at
        ``iou``, overall and per class. ``classes`` (ids or names) scores only those; ``all_classes`` lists
        every class in the table. ``save_json`` / ``save_txt`` write the detections as COCO results / darknet
        txt files. ``backend`` and ``model`` run the network as in :meth:`detect` (one photo at a time,
        except torch). ``progress``: a bar on stderr (on a terminal); ``log`` gets how the photos are
        prepared, the time taken and what was written. Returns the metrics and the detections
        (:class:`Evaluation`).

        >>> model.evaluate("coco.data", classes="car,bus").mAP50  # doctest: +SKIP
        0.4123
        """
        try:
            from ..train.evaluate import Preparation, evaluate_data, save_coco_json, save_darknet_txt
        except ImportError as exc:
            hint = "pip install 'cfgsurgeon[torch]'"
            raise UsageError(f"eval needs the package '{exc.name}': {hint}") from None
        if model is None and not self.has_weights:
            raise UsageError("evaluating needs the model's `weights`, or an exported `model` that holds them")
        if save_json is not None:
            refuse_overwrite([Path(save_json)], [self.cfg, self.weights, Path(data)])
        runner = None
        if backend != "torch" or model is not None:
            from ..runtimes import make_runner

            runner = make_runner(self.graph, backend, None if model is None else Path(model))
        log = log or _silent
        log(Preparation.of(self.graph).describe())
        if classes is not None and not isinstance(classes, str):
            classes = ",".join(str(chosen) for chosen in classes)
        warnings: list[str] = []
        result = evaluate_data(
            self.graph, data, split, thresh, iou, pr_thresh, batch, warnings.append, classes, progress, runner
        )
        log(result.timing_line())
        txt_files: list[Path] = []
        if save_json is not None:
            log(f"wrote {save_coco_json(result, save_json)}")
        if save_txt is not None:
            txt_files = save_darknet_txt(result, save_txt)
            log(f"wrote {len(txt_files)} files to {save_txt}")
        json_file = None if save_json is None else Path(save_json)
        return Evaluation(result, all_classes, json_file, txt_files, warnings)

    def export(
        self,
        format: str,
        output: str | Path,
        *,
        fp16: bool = False,
        dynamic_batch: bool = False,
        quantize: str = "none",
        calibration: str | Path | None = None,
        num_calibration_images: int = 300,
    ) -> Exported:
        """Write the model in another framework's form (``cfgsurgeon export``): ``format`` is one of
        ``torch-source``, ``onnx``, ``openvino``, ``tf1``, ``keras``, ``tflite``; ``output`` the file (keras:
        or a SavedModel directory, a path without suffix). ``fp16`` (openvino), ``dynamic_batch``
        (onnx/openvino), ``quantize`` with ``calibration`` images (tflite) as the command's options.
        Returns what was written (:class:`Exported`).

        >>> model.export("onnx", "yolov3-tiny.onnx", dynamic_batch=True).paths  # doctest: +SKIP
        [PosixPath('yolov3-tiny.onnx')]
        """
        from ..emit.formats import ExportOptions, check_export
        from ..emit.formats import export as export_graph

        output = Path(output)
        calibration = None if calibration is None else Path(calibration)
        check_export(format, output, with_weights=self.has_weights)
        refuse_overwrite([output], [self.cfg, self.weights, calibration])
        options = ExportOptions(fp16, dynamic_batch, quantize, calibration, num_calibration_images)
        return Exported(format, output, export_graph(self.graph, format, output, options))

    def bench(
        self,
        *,
        backend: str = "torch",
        size: int | None = 416,
        runs: int = 50,
        warmup: int = 5,
        threads: int | None = None,
        batch: int = 1,
        seed: int = 0,
        progress: bool = False,
        log: Log | None = None,
    ) -> BenchReport:
        """Latency of this model alone: :func:`bench` of ``[self]`` (see there).

        >>> model.bench(backend="onnxruntime", runs=20).models[0].median_ms  # doctest: +SKIP
        3.41
        """
        return bench(
            [self],  # type: ignore[list-item]
            backend=backend,
            size=size,
            runs=runs,
            warmup=warmup,
            threads=threads,
            batch=batch,
            seed=seed,
            progress=progress,
            log=log,
        )


def _class_names(graph: Graph, names: str | Path | Sequence[str] | None, warn: Log) -> list[str]:
    """``names`` (a .names file or the names) checked against the model's classes; None: the numbers."""
    from ..detect import check_names, class_count
    from ..images import load_names

    if names is None:
        return [str(k) for k in range(class_count(graph))]
    if isinstance(names, str | Path):
        return check_names(graph, load_names(names), names, warn)
    return check_names(graph, list(names), "`names`", warn)


def bench(
    models: Sequence[Model | ModelSpec | str | Path],
    *,
    backend: str = "torch",
    size: int | None = 416,
    runs: int = 50,
    warmup: int = 5,
    threads: int | None = None,
    batch: int = 1,
    seed: int = 0,
    interleave: bool = False,
    progress: bool = False,
    log: Log | None = None,
) -> BenchReport:
    """Latency (median, p90), throughput, BFLOPs and params of several models side by side, ratios to the
    first (``cfgsurgeon bench``). ``models``: :class:`Model` objects (a model without weights, and a cfg
    path, gets seeded random weights) or ``ModelSpec(cfg, weights, model)`` (``model``: a file exported
    for ``backend``, an int8 one too, which holds its weights: the cfg alone is enough, and ``size`` None
    or the file's). Each runs ``warmup`` untimed and ``runs`` timed passes of one random ``batch`` of
    ``size``² (None: the cfg's size) through ``backend``'s runner with ``threads`` (default:
    ``runtimes.default_threads``); ``interleave`` alternates the models run by run.
    ``progress``: bars on stderr (on a terminal); ``log`` gets each model's input and BFLOPs.

    >>> print(bench([Model.load("a.cfg"), Model.load("b.cfg")], runs=20))  # doctest: +SKIP
    """
    from ..bench import bench as measure_models

    warnings: list[str] = []
    data = measure_models(
        [_bench_spec(model) for model in models],
        backend,
        size=size,
        runs=runs,
        warmup=warmup,
        threads=threads,
        batch=batch,
        seed=seed,
        interleave=interleave,
        progress=None if progress else False,  # None: a bar only on a terminal, as the command shows it
        warn=warnings.append,
        note=log or _silent,
    )
    return BenchReport(data, warnings)


def _bench_spec(model: Model | ModelSpec | str | Path) -> ModelSpec | LoadedModel:
    from ..bench import LoadedModel, ModelSpec

    if isinstance(model, str | Path):
        return ModelSpec(Path(model))
    if isinstance(model, ModelSpec):
        return model
    cfg = str(model.cfg) if model.cfg is not None else model.graph.source
    weights = None if model.weights is None or not model.has_weights else str(model.weights)
    return LoadedModel(model.graph, cfg, weights, random_weights=not model.has_weights)


# -- reports -------------------------------------------------------------------------------------------------


class Detections(Report):
    """What :meth:`Model.detect` found: ``results`` (per photo an ``ImageResult``: ``image``, ``size``,
    ``millis`` and ``detections``, each a ``Detection`` with ``class_id``, ``name``, ``prob`` and ``box``
    left, top, width, height in pixels, or ``corners``), the PNGs ``drawn``, and the ``warnings``."""

    def __init__(self, results: list[ImageResult], drawn: list[Path], warnings: list[str]) -> None:
        self.results, self.drawn, self.warnings = results, drawn, warnings

    @property
    def detections(self) -> list[list[Detection]]:
        """Per photo, its detections in darknet's print order."""
        return [result.detections for result in self.results]

    def timing_lines(self) -> list[str]:
        """``IMAGE: Predicted in X ms.`` per photo (with ``--json`` the command prints these on stderr)."""
        return [f"{result.image}: Predicted in {result.millis:.3f} ms." for result in self.results]

    def lines(self) -> list[str]:
        from ..detect import format_darknet

        lines = []
        for timing, result in zip(self.timing_lines(), self.results, strict=True):
            lines += [timing, *format_darknet(result.detections)]
        return lines

    @property
    def data(self) -> list[dict]:
        """``[{"image", "class", "name", "prob", "box": [left, top, width, height]}]`` of every photo."""
        from ..detect import to_json

        return [row for result in self.results for row in to_json(str(result.image), result.detections)]

    def json(self) -> str:
        return json.dumps(self.data)


class Evaluation(Report):
    """What :meth:`Model.evaluate` measured: ``P``, ``R``, ``mAP50``, ``mAP50_95`` (floats, NaN where
    undefined), ``per_class``, the ``detections`` per photo in its pixels, the files written, the
    ``warnings``; ``result`` is the library's record (``result.metrics``, ``result.seconds``, …)."""

    def __init__(
        self,
        result: EvaluationResult,
        all_classes: bool,
        json_file: Path | None,
        txt_files: list[Path],
        warnings: list[str],
    ) -> None:
        self.result, self.all_classes = result, all_classes
        self.json_file, self.txt_files, self.warnings = json_file, txt_files, warnings

    @property
    def metrics(self) -> Metrics:
        return self.result.metrics

    @property
    def P(self) -> float:  # noqa: N802 - the metric's name
        return self.metrics.P

    @property
    def R(self) -> float:  # noqa: N802 - the metric's name
        return self.metrics.R

    @property
    def mAP50(self) -> float:  # noqa: N802 - the metric's name
        return self.metrics.mAP50

    @property
    def mAP50_95(self) -> float:  # noqa: N802 - the metric's name
        return self.metrics.mAP50_95

    @property
    def per_class(self) -> list[ClassMetrics]:
        return self.metrics.per_class

    @property
    def images(self) -> list[Path]:
        return self.result.images

    @property
    def detections(self) -> list[list[Detection]]:
        """Per photo (``images`` order), what was scored: a ``Detection`` per (box, class) above the
        threshold, box in the photo's pixels (not clipped), in ``detect``'s order."""
        from ..detect import Detection

        names = {metrics.class_id: metrics.name for metrics in self.metrics.per_class}
        return [
            [
                Detection(int(k), names[int(k)], prob, (x0, y0, x1 - x0, y1 - y0))
                for k, prob, x0, y0, x1, y1 in rows.tolist()
            ]
            for rows in self.result.detections
        ]

    def coco_results(self) -> list[dict]:
        """The detections as COCO results (what ``save_json`` writes)."""
        from ..train.evaluate import coco_results

        return coco_results(self.result)

    @property
    def data(self) -> dict:
        """The ``--json`` object: metrics, per class, timing, preparation, missing labels, classes."""
        return self.result.to_dict()

    def json(self) -> str:
        return json.dumps(self.data)

    def lines(self) -> list[str]:
        return self.metrics.table_lines(all_classes=self.all_classes)


class Exported(Report):
    """What :meth:`Model.export` wrote: ``path`` in ``format`` (``paths``: with OpenVINO's ``.bin``), and
    ``note``, the line describing it."""

    def __init__(self, format: str, path: Path, note: str) -> None:
        self.format, self.path, self.note = format, path, note

    @property
    def paths(self) -> list[Path]:
        return [self.path, self.path.with_suffix(".bin")] if self.format == "openvino" else [self.path]

    def lines(self) -> list[str]:
        return [f"wrote {self.path} ({self.format}); {self.note}"]


@dataclass(frozen=True)
class Benched:
    """One model's row of a :class:`BenchReport` (times in ms, throughput in images per second)."""

    cfg: str
    weights: str | None
    random_weights: bool
    input: tuple[int, ...]
    bflops: float
    params: int
    median_ms: float
    p90_ms: float
    throughput: float
    latency_ratio: float  # median latency relative to the first model's


class BenchReport(Report):
    """What :func:`bench` measured: ``models`` (a :class:`Benched` per model), ``data`` (the ``--json``
    object, with every figure), the table as ``lines()``, and the cfgs' ``warnings``."""

    def __init__(self, data: dict[str, Any], warnings: list[str]) -> None:
        self.data, self.warnings = data, warnings

    @property
    def models(self) -> list[Benched]:
        return [
            Benched(
                cfg=row["cfg"],
                weights=row["weights"],
                random_weights=row["random_weights"],
                input=tuple(row["input"]),
                bflops=row["bflops"],
                params=row["params"],
                median_ms=row["latency_ms"]["median"],
                p90_ms=row["latency_ms"]["p90"],
                throughput=row["throughput"],
                latency_ratio=row["ratios"]["latency_median"],
            )
            for row in self.data["models"]
        ]

    def json(self) -> str:
        return json.dumps(self.data)

    def lines(self) -> list[str]:
        from ..bench import table_lines

        return table_lines(self.data)
