"""INT8: post-training static quantization for OpenVINO (NNCF) and ONNX Runtime (QDQ)."""

from __future__ import annotations

from pathlib import Path

import click

from ..int8 import BACKENDS
from . import main
from .common import CFG, JSON_TABLE, WEIGHTS_REQUIRED, load_model


def _layer_list(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...]:
    if not value:
        return ()
    try:
        return tuple(int(part) for part in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected layer numbers separated by commas, got '{value}'") from None


@main.command()
@CFG
@WEIGHTS_REQUIRED
@click.option(
    "--backend",
    required=True,
    type=click.Choice(BACKENDS),
    help="openvino: NNCF post-training quantization of the OpenVINO export (-o a .xml, the .bin beside it); "
    "onnxruntime: static QDQ quantization of the ONNX export with onnxruntime's tools (-o a .onnx).",
)
@click.option(
    "--calibration",
    required=True,
    type=click.Path(path_type=Path),
    help="Real photos to calibrate the activation ranges on: an image list (one path a line, relative to "
    "the list's folder, as darknet's train.txt) or a folder of images, prepared as `detect` prepares them.",
)
@click.option(
    "--subset",
    default=300,
    show_default=True,
    type=click.IntRange(1),
    help="Calibrate on the first N photos of --calibration (a folder's in name order).",
)
@click.option(
    "--keep-float",
    "keep_float",
    metavar="LAYERS",
    callback=_layer_list,
    help="Convolutional layers (numbers, comma separated, as `inspect` lists them) to leave in float.",
)
@click.option(
    "--accuracy-control",
    "accuracy_control",
    is_flag=True,
    help="openvino: NNCF's accuracy-aware quantization: our evaluator scores mAP@0.5 on the valid split of "
    "--data, and the groups of operations NNCF ranks as costliest go back to float until int8 loses at "
    "most --max-drop; the report lists them and why.",
)
@click.option(
    "--data",
    type=click.Path(dir_okay=False, path_type=Path),
    help="--accuracy-control: the darknet .data file whose valid split scores the model.",
)
@click.option(
    "--max-drop",
    "max_drop",
    default=0.01,
    show_default=True,
    type=float,
    help="--accuracy-control: the most mAP@0.5 (absolute, 0.01 = one point) int8 may lose against float.",
)
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The int8 model: .xml (openvino) or .onnx (onnxruntime); `detect --backend B --model OUT` runs it.",
)
@JSON_TABLE
def quantize(
    cfg: Path,
    weights: Path,
    backend: str,
    calibration: Path,
    subset: int,
    keep_float: tuple[int, ...],
    accuracy_control: bool,
    data: Path | None,
    max_drop: float,
    output: Path,
    as_json: bool,
) -> None:
    """Write an INT8 model for OpenVINO or ONNX Runtime (post-training static quantization).

    Weights are int8 per output channel, activations int8 per tensor with ranges measured on the
    calibration photos. Prints what was written, the float and int8 sizes, and per convolution how far its
    int8 output is from the float one on the calibration photos (SQNR in dB: higher is closer; relative
    error = |float - int8| / |float|) and, for OpenVINO, the precision its CPU plugin runs it in (u8/i8:
    int8 kernels; f32: a fallback). With --accuracy-control: mAP@0.5 of float, int8 and the file written,
    and each group NNCF reverted to float, in its ranking's order.
    """
    report = load_model(cfg, weights).quantize(
        output,
        backend=backend,
        calibration=calibration,
        subset=subset,
        keep_float=keep_float,
        accuracy_control=accuracy_control,
        data=data,
        max_drop=max_drop,
        progress=True,
    )
    click.echo(report.json() if as_json else str(report))
