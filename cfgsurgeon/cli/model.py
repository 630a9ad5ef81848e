"""Commands on a model's description and weights: inspect, rewrite, retarget, init, convert."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..errors import UsageError
from . import main
from .common import CFG, JSON_TABLE, WEIGHTS, load_model

if TYPE_CHECKING:
    pass


@main.command()
@CFG
@WEIGHTS
@JSON_TABLE
def inspect(cfg: Path, weights: Path | None, as_json: bool) -> None:
    """Print the layer table: type, filters, size/stride, input → output shape, BFLOPs, and totals.

    With --weights, also the |γ| statistics of every batch-normalised layer (what channel pruning looks at).
    """
    summary = load_model(cfg, weights).summary()
    click.echo(summary.json() if as_json else summary)


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
    click.echo(load_model(cfg, weights).save(outdir))


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
    model = load_model(cfg, weights)
    click.echo(model.retarget(classes, names=names, old_names=old_names, seed=seed).save(outdir))


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
    click.echo(load_model(cfg).init_weights(seed=seed, dead_fraction=dead_fraction).save(output))


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
    from ..convert import check_output_suffix

    if (weights is None) == (checkpoint is None):
        raise UsageError("give exactly one input: --weights (with --cfg) or --checkpoint")
    check_output_suffix(output)
    if weights is not None and cfg is None:
        raise UsageError("--weights needs --cfg (a .weights file does not describe its network)")
    model = load_model(cfg, weights or checkpoint, checkpoint=weights is None)
    click.echo(model.write(output))
