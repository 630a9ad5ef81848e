"""``cfgsurgeon sparsify``: plan → prune (one-shot, or the schedule while fine-tuning) → write the sparse
``.weights``, ``.keras`` and ``.tflite`` → compression report. Every output goes to one directory:

``sparse.weights`` (darknet; for darknet, OpenVINO, … users too), ``sparse.keras`` (standard tf_keras
layers, zeros in the kernels), ``sparse.tflite`` (quantised as asked), ``report.json`` and ``report.md``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from ..files import atomic_output
from ..ir import Graph
from . import report as R
from .selection import Plan, plan

Note = Callable[[str], None]


@dataclass
class FineTune:
    """Fine-tuning with the YOLO loss on a darknet dataset while the schedule runs."""

    data: Path
    epochs: int = 1
    batch_size: int = 8
    lr: float = 1e-4
    max_steps: int | None = None  # stop after this many optimizer steps (tests, quick runs)
    seed: int = 0


@dataclass
class Options:
    final_sparsity: float = 0.5
    initial_sparsity: float = 0.0
    begin_step: int = 0
    end_step: int = 1000
    frequency: int = 100
    block: tuple[int, int] = (1, 1)
    skip: list[int] = field(default_factory=list)
    whole_model: bool = False
    fine_tune: FineTune | None = None
    tflite: bool = True
    quantize: str = "none"
    calibration: Path | None = None
    num_calibration_images: int = 300
    runs: int = 20
    warmup: int = 3
    threads: int | None = None
    progress: bool = True  # a bar while timing TFLite, on a terminal


OUTPUTS = ("sparse.weights", "sparse.keras", "sparse.tflite", "report.json", "report.md")


def outputs(outdir: Path) -> list[Path]:
    return [outdir / name for name in OUTPUTS]


def schedule_of(options: Options):
    from .magnitude import Schedule

    schedule = Schedule(
        final_sparsity=options.final_sparsity,
        initial_sparsity=options.initial_sparsity,
        begin_step=options.begin_step,
        end_step=options.end_step,
        frequency=options.frequency,
    )
    schedule.check()
    return schedule


def prune_graph(graph: Graph, options: Options, note: Note = lambda _: None) -> tuple[Graph, Plan, dict]:
    """A copy of ``graph`` with the planned kernels pruned; the plan; what fine-tuning did (if it ran)."""
    from .magnitude import one_shot

    schedule = schedule_of(options)
    pruned = graph.clone()
    layers = plan(pruned, options.skip, options.whole_model, options.block)
    if not layers.pruned:
        raise UsageError("no layer left to prune (every prunable layer is protected or skipped)")
    note(f"pruning {len(layers.pruned)} layers, {len(layers.dense)} kept dense")
    history: dict = {}
    if options.fine_tune is None:
        one_shot(pruned, layers, schedule, options.block)
    else:
        from .finetune import fine_tune

        history = fine_tune(pruned, layers, schedule, options.block, options.fine_tune, note)
    return pruned, layers, history


def _sample(graph: Graph, options: Options) -> tuple[np.ndarray, str]:
    """The input the TFLite error is measured on: the first calibration photo, else seeded noise."""
    if options.calibration is not None:
        from ..calibration import calibration_images
        from ..emit.tflite import calibration_batches

        path = calibration_images(options.calibration, 1)[0]
        return next(calibration_batches(graph, [path])), str(path)
    rng = np.random.default_rng(0)
    return rng.random((1, *graph.input_shape), dtype=np.float32), "a uniform random image (seed 0)"


def tflite_section(
    original: Graph, pruned: Graph, options: Options, target: Path, note: Note
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write the sparse ``.tflite``; its error vs float Keras, dense/sparse latency; dense/sparse sizes."""
    from ..bench import default_threads, measure
    from ..calibration import calibration_images
    from ..emit.keras import run_keras, to_keras
    from ..emit.tflite import TFLiteModel, calibration_batches, tflite_bytes

    calibration = None
    if options.calibration is not None:
        paths = calibration_images(options.calibration, options.num_calibration_images)
        note(f"calibrating on {len(paths)} images")
        calibration = lambda: calibration_batches(original, paths)  # noqa: E731 - one call per conversion
    note(f"converting the dense and the sparse model to TFLite ({options.quantize})")
    dense, sparse = (tflite_bytes(g, options.quantize, calibration) for g in (original, pruned))
    with atomic_output(target) as out:
        out.write(sparse)
    x, described = _sample(pruned, options)
    error = R.relative_error(TFLiteModel(sparse)(x), run_keras(to_keras(pruned), x))
    threads = options.threads or default_threads()
    section = {
        "quantize": options.quantize,
        "relative_error": error,
        "error_input": described,
        "threads": threads,
        "runs": options.runs,
        "input": "x".join(map(str, pruned.input_shape)),
        "latency": {},
    }
    if options.runs:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "dense.tflite").write_bytes(dense)
            for name, graph, path in (
                ("dense", original, Path(tmp) / "dense.tflite"),
                ("sparse", pruned, target),
            ):
                figures = measure(
                    graph,
                    "tflite",
                    options.runs,
                    options.warmup,
                    threads,
                    progress=None if options.progress else False,  # None: a bar only on a terminal
                    model=path,
                    label=name,
                )
                section["latency"][name] = figures
    return section, R.sizes(dense, sparse)


def sparsify(
    graph: Graph, weights: Path | None, outdir: Path, options: Options, note: Note = lambda _: None
) -> tuple[dict[str, Any], Graph]:
    """Run the whole command on ``graph`` (weights loaded from the file ``weights``, None: set in memory);
    returns the report and the sparse graph."""
    from ..emit.keras import write_keras
    from ..weights import write_weights

    if options.tflite and options.quantize == "int8" and options.calibration is None:
        raise UsageError("`quantize` int8 needs `calibration` IMAGES_LIST (real images to calibrate on)")
    pruned, layers, history = prune_graph(graph, options, note)
    outdir.mkdir(parents=True, exist_ok=True)
    write_weights(pruned, outdir / "sparse.weights", graph.weights_header)
    write_keras(pruned, outdir / "sparse.keras")
    rows = R.layer_rows(graph, pruned, layers, options.final_sparsity)
    report: dict[str, Any] = {
        "mode": "fine-tuned" if options.fine_tune else "one-shot",
        "schedule": asdict(schedule_of(options)),
        "block": list(options.block),
        "layers": rows,
        "overall": R.overall(rows),
        "sizes": {
            ".weights": R.sizes(_dense_bytes(graph, weights), (outdir / "sparse.weights").read_bytes())
        },
    }
    if history:
        report["fine_tune"] = history
    if options.tflite:
        report["tflite"], report["sizes"][".tflite"] = tflite_section(
            graph, pruned, options, outdir / "sparse.tflite", note
        )
    elif (outdir / "sparse.tflite").exists():
        # An earlier run's file would sit beside a report that does not describe it.
        (outdir / "sparse.tflite").unlink()
        note(f"removed {outdir / 'sparse.tflite'} (from an earlier run; --no-tflite)")
    with atomic_output(outdir / "report.json", "w") as out:
        json.dump(report, out, indent=1)
    with atomic_output(outdir / "report.md", "w") as out:
        out.write(R.markdown(report))
    return report, pruned


def _dense_bytes(graph: Graph, weights: Path | None) -> bytes:
    """The dense model's file: ``weights`` as given, or ``graph`` written as darknet ``.weights``."""
    from ..weights import write_weights

    if weights is not None:
        return weights.read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        write_weights(graph, Path(tmp) / "dense.weights")
        return (Path(tmp) / "dense.weights").read_bytes()
