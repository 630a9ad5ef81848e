"""The ``cfgsurgeon`` command line: parse arguments, call the API, print. User mistakes exit non-zero with
one line naming the file and line; heavy frameworks are imported only by the commands that need them."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from .errors import CfgSurgeonError, UsageError
from .files import atomic_output, refuse_overwrite
from .ir import Graph, load_cfg

CFG = click.option(
    "--cfg",
    "cfg",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Darknet model description (.cfg).",
)
WEIGHTS = click.option(
    "--weights",
    "weights",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Darknet weights (.weights) matching the cfg.",
)
WEIGHTS_REQUIRED = click.option(
    "--weights",
    "weights",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Darknet weights (.weights) matching the cfg.",
)
JSON_TABLE = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object instead of the table."
)


class _Cli(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CfgSurgeonError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            raise click.ClickException(f"{exc.filename or ''}: {exc.strerror or exc}") from None


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cfgsurgeon")
@click.option("-q", "--quiet", is_flag=True, help="Hide warnings about suspicious cfg content.")
@click.option(
    "--tree",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Softmax-tree file for a cfg whose [region]/[softmax] has tree= (YOLO9000's 9k.tree). Default: the "
    "name the cfg gives, looked up in the working directory, the cfg's folder and its parent folder.",
)
@click.pass_context
def main(ctx: click.Context, quiet: bool, tree: Path | None) -> None:
    """Darknet .cfg transpiler and model-surgery tool for YOLO.

    Models are given as --cfg FILE [--weights FILE]; outputs go to -o. Inputs are never modified and
    outputs are written atomically.
    """
    ctx.obj = {"quiet": quiet, "tree": tree}


def _warn(message: str) -> None:
    if not click.get_current_context().find_root().obj.get("quiet"):
        click.echo(f"warning: {message}", err=True)


def _load(cfg: Path, weights: Path | None = None) -> Graph:
    from .weights import read_weights

    graph = _with_tree(load_cfg(cfg, warn=_warn))
    if weights is not None:
        read_weights(graph, weights)
    return graph


def _with_tree(graph: Graph) -> Graph:
    tree = click.get_current_context().find_root().obj.get("tree")
    graph.tree_file = None if tree is None else str(tree)
    return graph


@main.command()
@CFG
@WEIGHTS
@JSON_TABLE
def inspect(cfg: Path, weights: Path | None, as_json: bool) -> None:
    """Print the layer table: type, filters, size/stride, input → output shape, BFLOPs, and totals.

    With --weights, also the |γ| statistics of every batch-normalised layer (what channel pruning looks at).
    """
    from .summary import graph_summary, table_lines

    graph = _load(cfg, weights)
    if as_json:
        click.echo(json.dumps(graph_summary(graph)))
    else:
        click.echo("\n".join(table_lines(graph, with_gamma=weights is not None)))


@main.command()
@CFG
@WEIGHTS
@click.option(
    "-o",
    "--output",
    "outdir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the rewritten <name>.cfg (and <name>.weights).",
)
def rewrite(cfg: Path, weights: Path | None, outdir: Path) -> None:
    """Parse and write the model again (the identity surgery): normalises a cfg and checks the writers."""
    from .emit.cfg import write_cfg
    from .weights import write_weights

    graph = _load(cfg, weights)
    outdir.mkdir(parents=True, exist_ok=True)
    out_cfg = outdir / f"{cfg.stem}.cfg"
    out_weights = outdir / f"{(weights or cfg).stem}.weights"
    refuse_overwrite([out_cfg, out_weights], [cfg, weights])
    write_cfg(graph, out_cfg)
    click.echo(f"wrote {out_cfg}")
    if weights is not None:
        size = write_weights(graph, out_weights)
        click.echo(f"wrote {out_weights} ({size:,} bytes)")


@main.command()
@CFG
@WEIGHTS
@click.option("--classes", type=click.IntRange(1), help="Number of classes. Default: the lines of --names.")
@click.option(
    "--names",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The new class names (one a line, as darknet's .names). With --old-names, a new class whose name "
    "the model already knows keeps that class's trained weights.",
)
@click.option(
    "--old-names",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The names of the model's current classes (e.g. coco.names).",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the new classes' initial weights.")
@click.option(
    "-o",
    "--output",
    "outdir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for <name>.cfg (and <name>.weights).",
)
def retarget(
    cfg: Path,
    weights: Path | None,
    classes: int | None,
    names: Path | None,
    old_names: Path | None,
    seed: int,
    outdir: Path,
) -> None:
    """Retarget a detector to another set of classes (darknet's custom-dataset recipe): every [yolo]/[region]
    head gets classes=N and the convolution feeding it filters = anchors × (5 + N); every other tensor is
    kept. New classes that match an old one by name inherit its weights, so the model scores them as before
    (e.g. COCO's yolov3-tiny → bus/car/motorbike/truck); the others start from small random weights. The
    written .weights count seen=0, so darknet fine-tunes them with its burn-in."""
    from .emit.cfg import write_cfg
    from .images import load_names
    from .surgery.retarget import match_classes
    from .surgery.retarget import retarget as retarget_graph
    from .weights import WeightsHeader, write_weights

    new_names = load_names(names) if names is not None else None
    classes = classes if classes is not None else len(new_names) if new_names else None
    if classes is None:
        raise UsageError("give --classes N or --names FILE")
    if old_names is not None and new_names is None:
        raise UsageError("--old-names needs --names (the new classes are matched by name)")
    sources = match_classes(new_names[:classes], load_names(old_names)) if old_names and new_names else None
    if sources is not None:
        sources += [None] * (classes - len(sources))
    graph = retarget_graph(_load(cfg, weights), classes, sources, seed)
    outdir.mkdir(parents=True, exist_ok=True)
    out_cfg, out_weights = outdir / f"{cfg.stem}.cfg", outdir / f"{(weights or cfg).stem}.weights"
    refuse_overwrite([out_cfg, out_weights], [cfg, weights, names, old_names])
    write_cfg(graph, out_cfg)
    click.echo(f"wrote {out_cfg} ({classes} classes)")
    if sources is not None and new_names is not None:
        kept = [f"{new_names[k]} <- {s}" for k, s in enumerate(sources) if s is not None]
        click.echo(f"inherited: {', '.join(kept) or 'none'}; initialised afresh: {sources.count(None)}")
    if weights is not None:
        old = graph.weights_header or WeightsHeader()
        size = write_weights(graph, out_weights, WeightsHeader(old.major, old.minor, old.revision, 0))
        click.echo(f"wrote {out_weights} ({size:,} bytes, seen=0)")


@main.command()
@CFG
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The .weights file to write.",
)
@click.option("--seed", default=0, show_default=True, help="Random seed (same seed → identical file).")
@click.option(
    "--dead-fraction",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0.0, 1.0, max_open=True),
    help="Fraction of each batch-norm layer's channels made exactly dead (γ = β = 0).",
)
def init(cfg: Path, output: Path, seed: int, dead_fraction: float) -> None:
    """Write random but well-conditioned weights for a cfg.

    Activations stay O(1) through deep nets and BN running statistics match what the convolutions produce,
    so the model behaves like a trained one numerically: for tests, benchmarks, or trying the tool without
    a trained model.
    """
    from .randinit import random_weights
    from .weights import write_weights

    graph = _load(cfg)
    if output.suffix != ".weights":
        raise UsageError(f"output {output} should end in .weights")
    refuse_overwrite([output], [cfg])
    random_weights(graph, seed=seed, dead_fraction=dead_fraction)
    size = write_weights(graph, output)
    click.echo(f"wrote {output} ({size:,} bytes, {graph.params:,} floats, seed {seed})")


@main.command()
@click.option(
    "-o",
    "--output",
    "outdir",
    default="demo_out",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the demo's files.",
)
@click.option("--seed", default=0, show_default=True, help="Random seed (same seed → same numbers).")
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help='Also write the table to this file as {"rows": [{"model", "P", "R", "mAP50", ...}]}.',
)
def demo(outdir: Path, seed: int, json_path: Path | None) -> None:
    """The main job on the embedded default model (cfg/yolo-nano.cfg), on a CPU: synthetic dataset, training
    from scratch, sparse training, slim pruning, fine-tuning; a table of P, R, mAP@0.5, params, size, BFLOPs
    and latency per stage, and |γ| histograms before and after sparse training."""
    from .demo import run_demo

    run_demo(outdir, click.echo, seed=seed, json_path=json_path)


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
    type=click.Choice(["valid", "train"]),
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
        from .train.evaluate import Preparation, evaluate_data, save_coco_json, save_darknet_txt
    except ImportError as exc:
        raise UsageError(f"eval needs the package '{exc.name}': pip install 'cfgsurgeon[torch]'") from None
    if save_json is not None:
        refuse_overwrite([save_json], [cfg, weights, data])
    graph = _load(cfg, weights)
    report = (lambda line: None) if as_json else (lambda line: click.echo(line, err=True))
    report(Preparation.of(graph).describe())
    result = evaluate_data(
        graph, data, split, thresh, iou, pr_thresh, batch, warn=_warn, classes=classes, progress=True
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


@main.command()
@click.option(
    "-o",
    "--output",
    "outdir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the dataset (created; an earlier synthetic dataset there is replaced).",
)
@click.option("--classes", default=3, show_default=True, type=click.IntRange(1, 6), help="Shape classes.")
@click.option("--train", "train_images", default=512, show_default=True, type=click.IntRange(0))
@click.option("--valid", "valid_images", default=128, show_default=True, type=click.IntRange(0))
@click.option("--size", default=128, show_default=True, type=click.IntRange(32), help="Square image size.")
@click.option("--seed", default=0, show_default=True, help="Random seed (same options → identical files).")
def synth(outdir: Path, classes: int, train_images: int, valid_images: int, size: int, seed: int) -> None:
    """Write the synthetic shapes dataset (circle, square, triangle, ...) in darknet format."""
    from .train.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(outdir, classes, train_images, valid_images, size, seed)
    click.echo(f"wrote {train_images} train and {valid_images} valid images; dataset file {data}")


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
    type=click.Choice(["torch", "onnxruntime", "openvino", "tf1", "keras", "tflite"]),
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
    from .detect import check_names, detect_image, draw, format_darknet, output_paths, to_json
    from .images import load_names
    from .runtimes import make_runner

    outputs = output_paths(images, outdir)
    refuse_overwrite(outputs, [*images, cfg, weights, names])
    graph = _load(cfg, weights)
    class_names = check_names(graph, load_names(names), names, _warn)
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


@main.command()
@click.option(
    "--cfg",
    "cfg",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Darknet model description (.cfg). Needed with --weights and with module_list checkpoints; "
    "optional for cfgsurgeon .pt files, which embed theirs (given, it replaces the embedded one).",
)
@WEIGHTS
@click.option(
    "--checkpoint",
    "checkpoint",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A PyTorch .pt file: cfgsurgeon's own, or a module_list state_dict (see below).",
)
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The file to write; its suffix (.pt or .weights) chooses the format.",
)
def convert(cfg: Path | None, weights: Path | None, checkpoint: Path | None, output: Path) -> None:
    """Convert a model between darknet .weights and PyTorch .pt checkpoints.

    \b
    Input, exactly one of:
      --weights W      darknet .weights (with --cfg)
      --checkpoint P   cfgsurgeon .pt: {"format": "cfgsurgeon", "version": 1, "cfg",
                       "header", "state_dict"} (cfg embedded), or a state_dict of the
                       ultralytics/yolov3 archive family (module_list.N.Conv2d.weight,
                       module_list.N.BatchNorm2d.*, also conv_N/batch_norm_N; bare, inside
                       "model" or "state_dict", with or without DataParallel's "module."),
                       which needs --cfg
    \b
    Output, by the suffix of -o:
      .weights         darknet weights (header and `seen` kept when the input has them)
      .pt              cfgsurgeon checkpoint (loads in DarknetModel via its state_dict)

    Checkpoints are read with torch.load(weights_only=True): files that pickle Python objects (a whole
    model, a custom class) are refused with instructions to re-save the state_dict; no code from a file runs.
    """
    from .convert import check_output_suffix, load_checkpoint, write_model

    if (weights is None) == (checkpoint is None):
        raise UsageError("give exactly one input: --weights (with --cfg) or --checkpoint")
    check_output_suffix(output)
    refuse_overwrite([output], [cfg, weights, checkpoint])
    if weights is not None:
        if cfg is None:
            raise UsageError("--weights needs --cfg (a .weights file does not describe its network)")
        graph = _load(cfg, weights)
    else:
        graph = _with_tree(load_checkpoint(checkpoint, cfg, warn=_warn))
    size = write_model(graph, output)
    click.echo(f"wrote {output} ({size:,} bytes, {graph.params:,} floats)")


def _export_torch_source(graph: Graph, output: Path, options: dict) -> str:
    from .emit.torch_source import write_torch_source

    write_torch_source(graph, output)
    return f"run it: python {output} MODEL.weights INPUT.npy OUTPUT.npz"


def _export_onnx(graph: Graph, output: Path, options: dict) -> str:
    from .emit.onnx import OPSET, output_names, write_onnx

    write_onnx(graph, output, dynamic_batch=options["dynamic_batch"])
    batch = "dynamic" if options["dynamic_batch"] else "1"
    return f"opset {OPSET}, input 'images' (batch {batch}), outputs {output_names(graph)}"


def _export_openvino(graph: Graph, output: Path, options: dict) -> str:
    from .emit.openvino import write_openvino

    write_openvino(graph, output, fp16=options["fp16"], dynamic_batch=options["dynamic_batch"])
    return f"{'FP16' if options['fp16'] else 'FP32'} weights in {output.with_suffix('.bin')}"


def _export_tf1(graph: Graph, output: Path, options: dict) -> str:
    from .emit.tf1 import output_names, write_tf1

    write_tf1(graph, output)
    return f"run it: python {output} MODEL.weights MODEL.pb (frozen graph, outputs {output_names(graph)})"


def _export_keras(graph: Graph, output: Path, options: dict) -> str:
    from .emit.keras import output_names, write_keras

    write_keras(graph, output)
    return f"tf_keras functional model, input 'images' (batch dynamic), outputs {output_names(graph)}"


def _export_tflite(graph: Graph, output: Path, options: dict) -> str:
    from .emit.keras import output_names
    from .emit.tflite import write_tflite

    quantize = options["quantize"]
    write_tflite(graph, output, quantize, options["calibration"], options["num_calibration_images"])
    return f"quantization {quantize}, input 'images' (batch dynamic), outputs {output_names(graph)}"


# `export --format` choices: name → (output suffixes, needs weights, writer(graph, output, options) → note).
# "" is a path without suffix: for keras, a SavedModel directory.
EXPORT_FORMATS = {
    "torch-source": ((".py",), False, _export_torch_source),
    "onnx": ((".onnx",), True, _export_onnx),
    "openvino": ((".xml",), True, _export_openvino),
    "tf1": ((".py",), True, _export_tf1),
    "keras": ((".keras", ""), True, _export_keras),
    "tflite": ((".tflite",), True, _export_tflite),
}


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
    type=click.Choice(["none", "fp16", "dynamic", "int8"]),
    default="none",
    show_default=True,
    help="tflite: fp16 weights, dynamic-range int8 weights, or full-integer int8 (weights, activations, "
    "input and outputs; needs --calibration).",
)
@click.option(
    "--calibration",
    type=click.Path(dir_okay=False, path_type=Path),
    help="tflite int8: a list of real images (one path a line, as darknet's train.txt), prepared like "
    "`detect` prepares a photo, to calibrate the activation ranges.",
)
@click.option(
    "--num-calibration-images",
    default=300,
    show_default=True,
    type=click.IntRange(1),
    help="tflite int8: use the first N images of --calibration.",
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
    suffixes, needs_weights, writer = EXPORT_FORMATS[fmt]
    if output.suffix not in suffixes:
        expected = f"end in {suffixes[0]}" + (
            " (or have no suffix: a SavedModel directory)" if "" in suffixes else ""
        )
        raise UsageError(f"--format {fmt}: output {output} should {expected}")
    if output.suffix and output.is_dir():
        raise UsageError(f"output {output} is a directory; name the file to write")
    if needs_weights and weights is None:
        raise UsageError(f"--format {fmt} needs --weights")
    refuse_overwrite([output], [cfg, weights, calibration])
    graph = _load(cfg, weights)
    if (quantize != "none" or calibration) and fmt != "tflite":
        raise UsageError("--quantize and --calibration are options of --format tflite")
    options = {
        "fp16": fp16,
        "dynamic_batch": dynamic_batch,
        "quantize": quantize,
        "calibration": calibration,
        "num_calibration_images": num_calibration_images,
    }
    try:
        note = writer(graph, output, options)
    except ImportError as exc:
        from .runtimes import install_hint

        raise UsageError(f"--format {fmt} needs the package '{exc.name}': {install_hint(exc.name)}") from None
    click.echo(f"wrote {output} ({fmt}); {note}")


@main.command()
@CFG
@click.option(
    "--weights",
    "weights",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Darknet weights (.weights) matching the cfg; BN γ drive the selection.",
)
@click.option(
    "--method",
    required=True,
    type=click.Choice(["normal", "shortcut", "slim", "regular", "layer", "layer-channel"]),
    help="normal: skip shortcut-coupled convs; shortcut: include them; slim: global threshold, "
    "--layer-keep floor and shortcut fusion; regular: widths rounded to --round-to; layer: "
    "remove --shortcuts residual units; layer-channel: both (slim).",
)
@click.option("--percent", type=float, help="Share of candidate channels to remove (0-1).")
@click.option("--threshold", type=float, help="Remove channels whose (group) score is below this.")
@click.option(
    "--layer-keep",
    default=0.01,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="slim: each layer keeps at least this share of its channels.",
)
@click.option(
    "--round-to",
    default=8,
    show_default=True,
    type=click.IntRange(1),
    help="regular: kept widths are multiples of this (or the full width).",
)
@click.option(
    "--shortcuts",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    help="layer, layer-channel: how many residual units to remove.",
)
@click.option(
    "--criterion",
    default="bn-gamma",
    show_default=True,
    type=click.Choice(["bn-gamma", "l1", "l2", "bn-gamma-l1", "random"]),
    help="Channel importance; coupled channels score as their best member.",
)
@click.option("--seed", default=0, show_default=True, help="Seed for --criterion random.")
@click.option("--force", is_flag=True, help="Allow a ratio/threshold above the safe upper bound.")
@click.option(
    "--verify/--no-verify",
    default=True,
    show_default=True,
    help="Measure the pruned model against the masked original with torch (if installed).",
)
@click.option(
    "-o",
    "--output",
    "outdir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for pruned.cfg, pruned.weights, report.md and report.json.",
)
def prune(
    cfg: Path,
    weights: Path,
    method: str,
    percent: float | None,
    threshold: float | None,
    layer_keep: float,
    round_to: int,
    shortcuts: int,
    criterion: str,
    seed: int,
    force: bool,
    verify: bool,
    outdir: Path,
) -> None:
    """Prune channels and/or residual units; write the compact model and a report.

    The upper bound of the global ratio (the largest that empties no layer) is always printed; a larger
    request is refused unless --force. Removed channels' constant outputs are folded into their consumers.
    """
    from .emit.cfg import write_cfg
    from .surgery.prune import prune as run_prune
    from .surgery.prune import report, report_markdown
    from .weights import write_weights

    graph = _load(cfg, weights)
    result = run_prune(
        graph,
        method,
        percent=percent,
        threshold=threshold,
        layer_keep=layer_keep,
        round_to=round_to,
        shortcuts=shortcuts,
        criterion=criterion,
        seed=seed,
        force=force,
    )
    error = _compensation_error(result) if verify else None
    data = report(result, error)
    outdir.mkdir(parents=True, exist_ok=True)
    outputs = {name: outdir / name for name in ("pruned.cfg", "pruned.weights", "report.md", "report.json")}
    refuse_overwrite(list(outputs.values()), [cfg, weights])
    write_cfg(result.pruned, outputs["pruned.cfg"])
    write_weights(result.pruned, outputs["pruned.weights"])
    with atomic_output(outputs["report.json"], "w") as out:
        json.dump(data, out, indent=1)
    with atomic_output(outputs["report.md"], "w") as out:
        out.write(report_markdown(data, str(cfg)))
    _print_prune_summary(data, outdir)


def _compensation_error(result) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    from .emit.torch import to_torch

    if result.analysis is None or result.removed_shortcuts:
        return None
    c, h, w = result.original.input_shape
    x = torch.from_numpy(np.random.default_rng(0).random((1, c, h, w), dtype=np.float32))
    with torch.inference_mode():
        ours, reference = to_torch(result.pruned)(x), to_torch(result.masked())(x)
    pairs = zip(ours, reference, strict=True)
    return max(float((a - b).abs().max() / b.abs().max().clamp(min=1e-12)) for a, b in pairs)


def _print_prune_summary(data: dict, outdir: Path) -> None:
    totals = data["totals"]
    if data["achieved_ratio"] is not None:
        click.echo(
            f"upper bound of the global ratio: {data['ratio_bound']:.4f} "
            f"(threshold {data['threshold_bound']:.6g})"
        )
        click.echo(f"achieved ratio: {data['achieved_ratio']:.4f} of {data['candidate_channels']} channels")
    if data["removed_shortcuts"]:
        click.echo(f"removed residual units at shortcut layers {data['removed_shortcuts']}")
    click.echo(
        f"params {totals['params_before']:,} -> {totals['params_after']:,}, "
        f"BFLOPs {totals['bflops_before']:.3f} -> {totals['bflops_after']:.3f}"
    )
    comp = data["compensation"]
    if comp["inexact_at_borders"]:
        measured = comp["measured_relative_error"]
        click.echo(
            f"compensation inexact at feature-map borders in {len(comp['inexact_at_borders'])} layers"
            + (f" (measured max relative error {measured:.3g})" if measured is not None else "")
        )
    click.echo(f"wrote {outdir}/pruned.cfg, pruned.weights, report.md, report.json")


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
    "--backend",
    default="torch",
    show_default=True,
    type=click.Choice(["torch", "onnxruntime", "openvino", "tflite"]),
    help="Runtime to measure (the runner `detect` uses; onnxruntime/openvino export in memory, f32).",
)
@click.option("--size", default=416, show_default=True, type=click.IntRange(1), help="Square input size.")
@click.option("--runs", default=50, show_default=True, type=click.IntRange(1), help="Timed forward passes.")
@click.option("--warmup", default=5, show_default=True, type=click.IntRange(0), help="Untimed passes first.")
@click.option(
    "--threads",
    type=click.IntRange(1),
    help="Threads for the runtime (default: every CPU this process may use); the table states it.",
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
    backend: str,
    size: int,
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
    from .bench import ModelSpec, table_lines
    from .bench import bench as run_bench

    if weights and len(weights) != len(cfgs):
        raise UsageError(
            f"{len(weights)} --weights for {len(cfgs)} --cfg: give one per --cfg in order ('random' for a "
            "cfg without weights), or none"
        )
    paths = [None if w in ("", "random") else Path(w) for w in weights] or [None] * len(cfgs)
    specs = [ModelSpec(cfg, path) for cfg, path in zip(cfgs, paths, strict=True)]
    report = run_bench(
        specs,
        backend,
        size=size,
        runs=runs,
        warmup=warmup,
        threads=threads,
        batch=batch,
        seed=seed,
        interleave=interleave,
        warn=_warn,
        note=lambda message: click.echo(message, err=True),
    )
    click.echo(json.dumps(report) if as_json else "\n".join(table_lines(report)))


@main.command()
@CFG
@WEIGHTS_REQUIRED
@click.option("--final-sparsity", default=0.5, show_default=True, type=click.FloatRange(0, 1, max_open=True))
@click.option(
    "--initial-sparsity", default=0.0, show_default=True, type=click.FloatRange(0, 1, max_open=True)
)
@click.option("--begin-step", default=0, show_default=True, type=click.IntRange(0))
@click.option(
    "--end-step",
    default=1000,
    show_default=True,
    type=click.IntRange(1),
    help="PolynomialDecay reaches --final-sparsity here (end - begin must be a multiple of --frequency).",
)
@click.option(
    "--frequency", default=100, show_default=True, type=click.IntRange(1), help="Steps between masks."
)
@click.option(
    "--block-size",
    default="1,1",
    show_default=True,
    help="Zeros in whole rows×cols blocks of each kernel's (in × out) matrix, per tap for convolutions "
    "(e.g. 1,16 or 4,4); layers that are no whole number of blocks stay dense.",
)
@click.option(
    "--skip-layers",
    default="",
    help="Layer indices (comma-separated) to keep dense, besides the protected first/last convolutions "
    "and those feeding detection heads.",
)
@click.option("--prune-whole-model", is_flag=True, help="Do not protect first/last/head convolutions.")
@click.option("--fine-tune", is_flag=True, help="Run the schedule while fine-tuning on --data (YOLO loss).")
@click.option(
    "--data", type=click.Path(dir_okay=False, path_type=Path), help="Darknet .data file (--fine-tune)."
)
@click.option("--epochs", default=1, show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1))
@click.option("--lr", default=1e-4, show_default=True, type=click.FloatRange(0, min_open=True))
@click.option("--max-steps", type=click.IntRange(1), help="Stop fine-tuning after this many steps.")
@click.option(
    "--tflite/--no-tflite",
    default=True,
    show_default=True,
    help="Also write sparse.tflite and report its sizes, error and latency against the dense model.",
)
@click.option(
    "--quantize",
    type=click.Choice(["none", "fp16", "dynamic", "int8"]),
    default="none",
    show_default=True,
    help="Quantization of the .tflite files (int8 needs --calibration).",
)
@click.option(
    "--calibration",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A list of real images for int8 calibration (its first image also measures the TFLite error).",
)
@click.option("--num-calibration-images", default=300, show_default=True, type=click.IntRange(1))
@click.option(
    "--runs", default=20, show_default=True, type=click.IntRange(0), help="Timed TFLite runs (0: none)."
)
@click.option(
    "--warmup", default=3, show_default=True, type=click.IntRange(0), help="Untimed TFLite runs first."
)
@click.option("--threads", type=click.IntRange(1), help="TFLite threads for the latency (default: all CPUs).")
@click.option(
    "-o",
    "--output",
    "outdir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for sparse.weights, sparse.keras, sparse.tflite, report.json and report.md.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def sparsify(cfg: Path, weights: Path, outdir: Path, as_json: bool, **settings) -> None:
    """Magnitude pruning with TF Model Optimization, written back as darknet .weights.

    Without --fine-tune the kernels are pruned once to --final-sparsity (no data needed); with it, the
    PolynomialDecay schedule runs while the model trains on --data. Prints the compression report.
    """
    from .sparsify.pipeline import FineTune, Options, outputs
    from .sparsify.pipeline import sparsify as run_sparsify
    from .sparsify.selection import parse_block, parse_indices

    tune = {
        key: settings.pop(key) for key in ("fine_tune", "data", "epochs", "batch_size", "lr", "max_steps")
    }
    if tune["fine_tune"] and tune["data"] is None:
        raise UsageError("--fine-tune needs --data (a darknet .data file)")
    if tune["data"] is not None and not tune["fine_tune"]:
        raise UsageError("--data is for --fine-tune")
    fine_tune = FineTune(**{k: v for k, v in tune.items() if k != "fine_tune"}) if tune["fine_tune"] else None
    settings["block"] = parse_block(settings.pop("block_size"))
    settings["skip"] = parse_indices(settings.pop("skip_layers"))
    settings["whole_model"] = settings.pop("prune_whole_model")
    options = Options(**settings, fine_tune=fine_tune)
    refuse_overwrite(outputs(outdir), [cfg, weights, options.calibration, tune["data"]])
    graph = _load(cfg, weights)
    report = run_sparsify(graph, weights, outdir, options, note=lambda m: click.echo(m, err=True))
    if as_json:
        click.echo(json.dumps(report))
    else:
        from .sparsify.report import lines

        click.echo("\n".join(lines(report)))
        click.echo(f"wrote {', '.join(str(p) for p in outputs(outdir) if p.exists())}")


@main.command()
@click.option(
    "--cfg",
    "cfg",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Darknet model description (.cfg) to train; its [net] gives the defaults below. Not needed with "
    "--resume or a .pt --weights (they carry their cfg).",
)
@click.option(
    "--data",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Darknet .data file: its train= image list is trained on (labels as darknet finds them).",
)
@click.option(
    "--weights",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Start from these weights (.weights or a .pt checkpoint). Default: from scratch (seeded init).",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for last.pt (resumable), NAME.weights + NAME.cfg (final), gamma/*.png and history.json.",
)
@click.option("--resume", type=click.Path(dir_okay=False, path_type=Path), help="Continue from a last.pt.")
@click.option("--epochs", default=10, show_default=True, type=click.IntRange(1), help="Passes over the data.")
@click.option("--max-steps", type=click.IntRange(1), help="Stop after this many optimizer steps in all.")
@click.option("--batch", type=click.IntRange(1), help="Images per optimizer step, all ranks ([net] batch).")
@click.option("--subdivisions", type=click.IntRange(1), help="Micro-batches per step ([net] subdivisions).")
@click.option(
    "--optimizer", type=click.Choice(["sgd", "adam"]), help="Default: adam if [net] adam=1, else sgd."
)
@click.option("--lr", type=float, help="Base learning rate ([net] learning_rate).")
@click.option("--momentum", type=float, help="SGD momentum / Adam beta1 ([net] momentum / B1).")
@click.option("--weight-decay", type=float, help="L2 decay of conv/fc weights ([net] decay).")
@click.option("--warmup", type=click.IntRange(0), help="Burn-in steps, lr·(step/N)^power ([net] burn_in).")
@click.option(
    "--lr-policy",
    type=click.Choice(["constant", "steps", "step", "poly", "cosine"]),
    help="Learning-rate policy after burn-in ([net] policy; its steps= are rescaled from max_batches to the "
    "run's length).",
)
@click.option(
    "--sparsity",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0),
    help="s of the L1 penalty on BN γ (network slimming): s·sign(γ) is added to γ's gradient every step.",
)
@click.option(
    "--sparsity-schedule",
    default="constant",
    show_default=True,
    type=click.Choice(["constant", "global-decay", "local-decay", "layer-decay"]),
    help="constant: s throughout; global-decay: s/100 from --sparsity-decay-start on; local-decay: from "
    "then on, s/100 for the --sparsity-protect share of largest |γ| (the channels pruning keeps, chosen "
    "again every epoch), s for the rest; layer-decay: the same share within each layer.",
)
@click.option(
    "--sparsity-decay-start",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Share of the run after which global-/local-decay apply (0: from the start).",
)
@click.option(
    "--sparsity-protect",
    default=0.3,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="local-decay: share of the penalised channels, largest |γ| first, whose penalty decays to s/100.",
)
@click.option(
    "--sparsity-scope",
    default="slim",
    show_default=True,
    type=click.Choice(["normal", "shortcut", "slim", "all"]),
    help="Which BN channels are penalised: those the prune --method of that name may remove (normal leaves "
    "shortcut-coupled layers alone), or all BN layers.",
)
@click.option("--teacher-cfg", type=click.Path(dir_okay=False, path_type=Path), help="Distillation teacher.")
@click.option(
    "--teacher-weights",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Teacher weights (.weights or .pt); the teacher needs the same [yolo] heads as the student.",
)
@click.option(
    "--distill",
    default="soft",
    show_default=True,
    type=click.Choice(["soft", "detection"]),
    help="soft: soft labels on objectness and class logits; detection: also boxes, and class/box terms "
    "weighted by the teacher's objectness.",
)
@click.option(
    "--distill-weight",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Factor of the distillation term added to the detection loss.",
)
@click.option(
    "--distill-temperature",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0, min_open=True),
    help="Logits are divided by T (and the term multiplied by T²) before comparing student and teacher.",
)
@click.option("--amp", is_flag=True, help="Mixed precision: bf16 autocast on CPU, fp16 + GradScaler on CUDA.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--seed", default=0, show_default=True, help="Seed of the init, shuffling and augmentation.")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(0), help="DataLoader workers.")
@click.option("--no-augment", is_flag=True, help="Train on the plain resized images.")
@click.option(
    "--multiscale/--no-multiscale",
    default=None,
    help="darknet's random=1: a new input size (multiples of 32, ×1/1.4…×1.4) every 10 steps. Default: as "
    "the cfg's last [yolo]/[region] random= says.",
)
@click.option(
    "--eval-every",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    help="Score the --data file's valid= images every N epochs (P, R, mAP) and keep the best as best.pt and "
    "NAME_best.weights; 0: never.",
)
@click.option(
    "--patience",
    type=click.IntRange(1),
    help="With --eval-every: stop after this many evaluations without a better mAP@0.5.",
)
@click.option(
    "--max-map-drop",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="With --eval-every: a valid mAP@0.5 below (1 - this) × its best stops the run as diverged.",
)
@click.option(
    "--diverge-factor",
    default=3.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Stop as diverged when the smoothed loss stays above this × its lowest level for 10 steps (0: off).",
)
@click.option(
    "--log-every",
    default=30.0,
    show_default=True,
    type=click.FloatRange(1),
    help="Seconds between progress lines when stderr is not a terminal (a log file, nohup).",
)
@click.option("--no-progress", is_flag=True, help="No progress bar or lines (one line per epoch still).")
def train(output: Path, no_augment: bool, no_progress: bool, **settings) -> None:
    """Train a darknet cfg on a darknet dataset: SGD/Adam with darknet's burn-in and lr policy, optional
    sparse training (BN-L1) and distillation; resumable. Under torchrun it runs DDP (gloo on CPU, nccl on
    CUDA) with the same command line.

    The cfg's [net] gives the defaults, fitted to the run: steps= and burn_in are rescaled from max_batches
    to the run's length (burn-in at most a tenth of it), and a test cfg's batch=1 becomes batch 16. The
    start-up lines print the schedule this run uses. A run whose loss (or valid mAP) runs away stops with a
    non-zero exit, keeping last.pt of the last healthy epoch.

    Recipes measured on real photos (benchmarks/bench_vehicles.py; README "Training on real data"): to
    fine-tune a pretrained or retargeted model, or recover a pruned one, --optimizer sgd --lr 0.001
    --warmup 20 --lr-policy cosine --batch 16 --eval-every 1, 4-6 epochs for a few hundred images. Sparse
    training from a pretrained model at that lr: --sparsity 2 --sparsity-schedule layer-decay
    --sparsity-decay-start 0 --sparsity-protect 0.9 drives about a tenth of the γ toward 0; expect a mAP
    cost (measured there) and let the pruned model's fine-tuning recover it. Plain --sparsity without a
    decay schedule shrinks every γ of a pretrained model (darknet's are about 1) and its mAP collapses: the
    guard stops it."""
    from .train.trainer import TrainConfig
    from .train.trainer import train as run_training

    if settings["cfg"] is None and settings["resume"] is None and settings["weights"] is None:
        raise UsageError("give --cfg (or --resume / a .pt --weights)")
    inputs = [settings[key] for key in ("cfg", "weights", "resume", "teacher_cfg", "teacher_weights", "data")]
    refuse_overwrite([output / "last.pt"] + [output / f"{p.stem}.weights" for p in inputs if p], inputs)
    config = TrainConfig(output=output, augment=not no_augment, progress=not no_progress, **settings)
    result = run_training(config, log=lambda message: click.echo(message, err=True))
    if result.weights is not None:
        last = result.epochs[-1] if result.epochs else None
        summary = f", final loss {last.loss:.4f}" if last else ""
        best = f"; best valid mAP@0.5 in {result.best}" if result.best else ""
        click.echo(f"wrote {result.weights} and {result.checkpoint}{summary}{best}")


if __name__ == "__main__":  # pragma: no cover
    main()
