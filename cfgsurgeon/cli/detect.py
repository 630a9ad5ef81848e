"""Running a model on images: detect (darknet's detector test) and eval (P, R, mAP on a dataset)."""

from __future__ import annotations

from pathlib import Path

import click

from ..runtimes import BACKENDS
from ..train.options import SPLITS
from . import main
from .common import CFG, JSON_TABLE, load_model, warn

WEIGHTS_OR_MODEL = click.option(
    "--weights",
    "weights",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Darknet weights (.weights) matching the cfg; not needed with --model, which holds its own.",
)

BACKEND = click.option(
    "--backend",
    default="torch",
    show_default=True,
    type=click.Choice(list(BACKENDS)),
    help="Runtime that runs the network. onnxruntime/openvino/tf1/keras/tflite run --model, or export the "
    "cfg+weights in memory when --model is not given.",
)
MODEL = click.option(
    "--model",
    type=click.Path(exists=True, path_type=Path),
    help="An exported model (.onnx for onnxruntime, .xml for openvino, the frozen .pb that the `export "
    "--format tf1` file writes for tf1, .keras or a SavedModel directory for keras, .tflite for tflite) "
    "made from this cfg by `export` (or `quantize`); it holds the weights, so --weights is not needed.",
)


@main.command()
@CFG
@WEIGHTS_OR_MODEL
@click.option(
    "--names",
    "names",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Class names, one a line in class order (darknet's .names file, e.g. coco.names).",
)
@click.argument(
    "images", nargs=-1, required=True, metavar="IMAGE...", type=click.Path(dir_okay=False, path_type=Path)
)
@click.option(
    "--thresh",
    default=0.25,
    show_default=True,
    type=click.FloatRange(0.0, 1.0),
    help="Show a class of a box when its probability (objectness × class score) is above this.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON array of {image, class, name, prob, box: [left, top, width, height]} for all "
    "images instead of darknet's lines; the timing lines go to stderr.",
)
@click.option(
    "-o",
    "--output",
    "outdir",
    default="predictions",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the annotated copies, <image-stem>.png (never an input image).",
)
@BACKEND
@MODEL
def detect(
    cfg: Path,
    weights: Path | None,
    names: Path,
    images: tuple[Path, ...],
    thresh: float,
    as_json: bool,
    outdir: Path,
    backend: str,
    model: Path | None,
) -> None:
    """Detect objects in IMAGE... as `darknet detector test -ext_output` does, with its numbers.

    Per image: "IMAGE: Predicted in X ms." then one line per class of each box, `name: prob%` with the box's
    left_x, top_y, width and height in pixels of the photo, sorted by left edge; and OUTDIR/<stem>.png with
    the boxes drawn. The photo is resized to the network size (letterboxed only with [net] letter_box=1),
    NMS is darknet's (IoU 0.45, or the last head's nms_kind).
    """
    from ..detect import check_images

    check_images(images)  # a missing photo is named before the model is loaded
    report = load_model(cfg, weights).detect(
        images, names=names, thresh=thresh, backend=backend, model=model, output=outdir
    )
    for message in report.warnings:
        warn(message)
    if as_json:
        for line in report.timing_lines():
            click.echo(line, err=True)
        click.echo(report.json())
    else:
        click.echo(str(report))


@main.command(name="eval")
@CFG
@WEIGHTS_OR_MODEL
@click.option(
    "--data",
    "data",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Darknet .data file (classes, valid, names).",
)
@click.option(
    "--split",
    default="valid",
    show_default=True,
    type=click.Choice(SPLITS),
    help="Which image list of the .data file to score (without a valid= line, darknet's rule: train=).",
)
@click.option(
    "--thresh",
    default=0.001,
    show_default=True,
    type=click.FloatRange(0.0, 1.0),
    help="Score a class of a box when its probability (objectness × class score) is above this.",
)
@click.option(
    "--iou", default=0.45, show_default=True, type=click.FloatRange(0.0, 1.0), help="NMS IoU threshold."
)
@click.option(
    "--pr-thresh",
    default=0.25,
    show_default=True,
    type=click.FloatRange(0.0, 1.0),
    help="Confidence at which P and R are counted (IoU 0.5).",
)
@click.option("--batch", default=16, show_default=True, type=click.IntRange(1), help="Images per pass.")
@click.option(
    "--classes",
    "classes",
    metavar="LIST",
    help="Score only these classes: ids or names from the names file, comma separated (e.g. 0,2 or "
    "car,bus). mAP, P and R are then over these classes, and the saved files hold only their detections.",
)
@click.option(
    "--all-classes",
    is_flag=True,
    help="List every class in the table; by default only classes with ground truth or detections above "
    "--pr-thresh are listed.",
)
@click.option(
    "--save-json",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help='Write the detections as COCO results: [{"image_id", "category_id", "bbox", "score"}], bbox '
    "[x, y, w, h] in the photo's pixels; image_id is the photo's file name without extension (an int when "
    "every one is all digits), category_id the class's 0-based line in the names file.",
)
@click.option(
    "--save-txt",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Write NAME.txt into DIR for every photo NAME.jpg (empty when nothing was found): a line per "
    "detection, '<class> <cx> <cy> <w> <h> <prob>', normalised to the photo (darknet's label layout plus "
    "the probability).",
)
@BACKEND
@MODEL
@JSON_TABLE
def eval_command(
    cfg: Path,
    weights: Path | None,
    data: Path,
    split: str,
    thresh: float,
    iou: float,
    pr_thresh: float,
    batch: int,
    classes: str | None,
    all_classes: bool,
    save_json: Path | None,
    save_txt: Path | None,
    backend: str,
    model: Path | None,
    as_json: bool,
) -> None:
    """Score a model on a darknet dataset: P, R, mAP@0.5 and mAP@0.5:0.95, overall and per class.

    mAP is COCO's (101-point interpolated AP, IoU 0.5 and 0.5:0.95, classes with ground truth averaged)
    over darknet's detections (NMS per class, every class above --thresh). Images are prepared as `detect`
    prepares them: letterboxed when the cfg's [net] has letter_box=1, else resized without keeping the
    aspect ratio; stderr says which, shows a progress bar on a terminal and the time taken (--json puts
    both in the JSON object instead). A split where no image has a label file is an error.
    """
    report = load_model(cfg, weights).evaluate(
        data,
        split=split,
        thresh=thresh,
        iou=iou,
        pr_thresh=pr_thresh,
        batch=batch,
        classes=classes,
        all_classes=all_classes,
        save_json=save_json,
        save_txt=save_txt,
        backend=backend,
        model=model,
        progress=True,
        log=None if as_json else (lambda line: click.echo(line, err=True)),
    )
    for message in report.warnings:
        warn(message)
    click.echo(report.json() if as_json else str(report))
