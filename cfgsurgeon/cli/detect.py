"""Running a model on images: detect (darknet's detector test) and eval (P, R, mAP on a dataset)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import UsageError
from ..files import refuse_overwrite
from ..runtimes import BACKENDS
from ..train.options import SPLITS
from . import main
from .common import CFG, JSON_TABLE, WEIGHTS_REQUIRED, load, warn


@main.command()
@CFG
@WEIGHTS_REQUIRED
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
@click.option(
    "--backend",
    default="torch",
    show_default=True,
    type=click.Choice(list(BACKENDS)),
    help="Runtime that runs the network. onnxruntime/openvino/tf1/keras/tflite run --model, or export the "
    "cfg+weights in memory when --model is not given.",
)
@click.option(
    "--model",
    type=click.Path(exists=True, path_type=Path),
    help="An exported model (.onnx for onnxruntime, .xml for openvino, the frozen .pb that the `export "
    "--format tf1` file writes for tf1, .keras or a SavedModel directory for keras, .tflite for tflite) "
    "made from this cfg by `export`.",
)
def detect(
    cfg: Path,
    weights: Path,
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
    from ..detect import check_names, detect_image, draw, format_darknet, output_paths, to_json
    from ..images import load_names
    from ..runtimes import make_runner

    outputs = output_paths(images, outdir)
    refuse_overwrite(outputs, [*images, cfg, weights, names])
    graph = load(cfg, weights)
    class_names = check_names(graph, load_names(names), names, warn)
    runner = make_runner(graph, backend, model)
    outdir.mkdir(parents=True, exist_ok=True)
    found: list[dict] = []
    for image, out_png in zip(images, outputs, strict=True):
        result = detect_image(graph, runner, image, class_names, thresh)
        click.echo(f"{image}: Predicted in {result.millis:.3f} ms.", err=as_json)
        if as_json:
            found.extend(to_json(str(image), result.detections))
        else:
            for line in format_darknet(result.detections):
                click.echo(line)
        draw(image, result.detections, out_png, classes=len(class_names))
    if as_json:
        click.echo(json.dumps(found))


@main.command(name="eval")
@CFG
@WEIGHTS_REQUIRED
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
@JSON_TABLE
def eval_command(
    cfg: Path,
    weights: Path,
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
    as_json: bool,
) -> None:
    """Score a model on a darknet dataset: P, R, mAP@0.5 and mAP@0.5:0.95, overall and per class.

    mAP is COCO's (101-point interpolated AP, IoU 0.5 and 0.5:0.95, classes with ground truth averaged)
    over darknet's detections (NMS per class, every class above --thresh). Images are prepared as `detect`
    prepares them: letterboxed when the cfg's [net] has letter_box=1, else resized without keeping the
    aspect ratio; stderr says which, shows a progress bar on a terminal and the time taken (--json puts
    both in the JSON object instead). A split where no image has a label file is an error.
    """
    try:
        from ..train.evaluate import Preparation, evaluate_data, save_coco_json, save_darknet_txt
    except ImportError as exc:
        raise UsageError(f"eval needs the package '{exc.name}': pip install 'cfgsurgeon[torch]'") from None
    if save_json is not None:
        refuse_overwrite([save_json], [cfg, weights, data])
    graph = load(cfg, weights)
    report = (lambda line: None) if as_json else (lambda line: click.echo(line, err=True))
    report(Preparation.of(graph).describe())
    result = evaluate_data(
        graph, data, split, thresh, iou, pr_thresh, batch, warn=warn, classes=classes, progress=True
    )
    report(result.timing_line())
    if save_json is not None:
        report(f"wrote {save_coco_json(result, save_json)}")
    if save_txt is not None:
        report(f"wrote {len(save_darknet_txt(result, save_txt))} files to {save_txt}")
    if as_json:
        click.echo(json.dumps(result.to_dict()))
    else:
        click.echo("\n".join(result.metrics.table_lines(all_classes=all_classes)))
