"""Other frameworks: export a model to them, and bench its latency in their runtimes."""

from __future__ import annotations

from pathlib import Path

import click

from ..emit.formats import EXPORT_FORMATS
from ..emit.quantization import QUANTIZE
from ..errors import UsageError
from ..runtimes import BENCH_BACKENDS
from . import main
from .common import CFG, JSON_TABLE, WEIGHTS, load_model, warn


@main.command()
@click.option(
    "--format",
    "fmt",
    required=True,
    type=click.Choice(sorted(EXPORT_FORMATS)),
    help="torch-source: one standalone .py (torch + numpy) defining the network as code, with a .weights "
    "loader; onnx: ONNX (opset 17) with the raw head tensors as outputs; openvino: OpenVINO IR .xml/.bin "
    "converted from that ONNX graph; tf1: one standalone .py of TF1-style graph code (tensorflow + numpy) "
    "whose `python OUT.py MODEL.weights MODEL.pb` writes the frozen graph; keras: a tf_keras functional "
    "model (.keras, or a SavedModel directory for an output without suffix) from standard layers where "
    "possible, for TF Model Optimization; tflite: TensorFlow Lite "
    "from that model (see --quantize).",
)
@CFG
@WEIGHTS
@click.option("--fp16", is_flag=True, help="openvino: store weights as FP16 (default FP32, exact).")
@click.option("--dynamic-batch", is_flag=True, help="onnx/openvino: a symbolic batch dimension.")
@click.option(
    "--quantize",
    type=click.Choice(QUANTIZE),
    default="none",
    show_default=True,
    help="tflite: fp16 weights, dynamic-range int8 weights, or full-integer int8 (weights, activations, "
    "input and outputs; needs --calibration).",
)
@click.option(
    "--calibration",
    type=click.Path(path_type=Path),
    help="tflite int8: real photos to calibrate the activation ranges on, prepared like `detect` prepares "
    "a photo: an image list (one path a line, as darknet's train.txt) or a folder of images.",
)
@click.option(
    "--num-calibration-images",
    default=300,
    show_default=True,
    type=click.IntRange(1),
    help="tflite int8: use the first N images of --calibration (a folder's in name order).",
)
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(path_type=Path),
    help="The file to write (keras: or a SavedModel directory, for a path without suffix).",
)
def export(
    fmt: str,
    cfg: Path,
    weights: Path | None,
    fp16: bool,
    dynamic_batch: bool,
    quantize: str,
    calibration: Path | None,
    num_calibration_images: int,
    output: Path,
) -> None:
    """Export the network described by a cfg (and its weights) to another framework's form.

    The exported models output the raw detection-head tensors; `detect --backend
    onnxruntime|openvino|tf1|keras|tflite --model FILE` decodes them into boxes exactly as for the torch
    backend (for tf1, FILE is the frozen .pb that the generated .py writes).
    """
    from ..emit.formats import check_export

    check_export(fmt, output, with_weights=weights is not None)  # before a slow load
    report = load_model(cfg, weights).export(
        fmt,
        output,
        fp16=fp16,
        dynamic_batch=dynamic_batch,
        quantize=quantize,
        calibration=calibration,
        num_calibration_images=num_calibration_images,
    )
    click.echo(str(report))


@main.command()
@click.option(
    "--cfg",
    "cfgs",
    required=True,
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Darknet model description (.cfg); repeat to compare models (ratios are relative to the first).",
)
@click.option(
    "--weights",
    "weights",
    multiple=True,
    help="Weights for each --cfg in the same order (give none, or one per --cfg; 'random' for a cfg "
    "without). Without weights a model gets seeded well-conditioned random weights (as `init` writes).",
)
@click.option(
    "--model",
    "model_files",
    multiple=True,
    help="An exported model file for each --cfg in the same order (give none, or one per --cfg; '-' for a "
    "cfg exported in memory): .onnx for onnxruntime, .xml for openvino, .tflite for tflite, an int8 one "
    "too. It holds its weights, so its --cfg needs no --weights.",
)
@click.option(
    "--backend",
    default="torch",
    show_default=True,
    type=click.Choice(BENCH_BACKENDS),
    help="Runtime to measure (the runner `detect` uses; onnxruntime/openvino export in memory, f32).",
)
@click.option(
    "--size",
    type=click.IntRange(1),
    help="Square input size [default: 416; with --model, each cfg's own size, the size its file was "
    "exported at].",
)
@click.option("--runs", default=50, show_default=True, type=click.IntRange(1), help="Timed forward passes.")
@click.option("--warmup", default=5, show_default=True, type=click.IntRange(0), help="Untimed passes first.")
@click.option(
    "--threads",
    type=click.IntRange(1),
    help="Threads for the runtime (default: the CPUs this process may use that the load leaves idle, at "
    "least 1); the table states it.",
)
@click.option("--batch", default=1, show_default=True, type=click.IntRange(1), help="Images per pass.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights and input.")
@click.option(
    "--interleave",
    is_flag=True,
    help="Alternate the models run by run (all held in memory): fairer ratios on a busy machine.",
)
@JSON_TABLE
def bench(
    cfgs: tuple[Path, ...],
    weights: tuple[str, ...],
    model_files: tuple[str, ...],
    backend: str,
    size: int | None,
    runs: int,
    warmup: int,
    threads: int | None,
    batch: int,
    seed: int,
    interleave: bool,
    as_json: bool,
) -> None:
    """Latency (median, p90), throughput, BFLOPs and params of one or more models, side by side.

    Each model runs --warmup untimed then --runs timed forward passes of one random batch through the
    runtime's runner (raw head outputs, no pre- or post-processing). Progress and notes go to stderr.
    """
    from ..api.running import bench as run_bench
    from ..bench import ModelSpec

    paths = _one_per_cfg(weights, cfgs, "--weights", "random", "a cfg without weights")
    files = _one_per_cfg(model_files, cfgs, "--model", "-", "a cfg exported in memory")
    report = run_bench(
        [ModelSpec(cfg, path, file) for cfg, path, file in zip(cfgs, paths, files, strict=True)],
        backend=backend,
        size=size or (None if model_files else 416),
        runs=runs,
        warmup=warmup,
        threads=threads,
        batch=batch,
        seed=seed,
        interleave=interleave,
        progress=True,
        log=lambda message: click.echo(message, err=True),
    )
    for message in report.warnings:
        warn(message)
    click.echo(report.json() if as_json else str(report))


def _one_per_cfg(values: tuple[str, ...], cfgs: tuple[Path, ...], flag: str, none: str, what: str):
    """``values`` as paths, one per --cfg in order (``none`` or empty: None), or all None when not given."""
    if values and len(values) != len(cfgs):
        raise UsageError(
            f"{len(values)} {flag} for {len(cfgs)} --cfg: give one per --cfg in order ('{none}' for {what}), "
            "or none"
        )
    return [None if value in ("", none) else Path(value) for value in values] or [None] * len(cfgs)
