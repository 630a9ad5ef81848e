"""sensitivity: every prunable unit pruned alone at each rate, scored without fine-tuning (for `plan`)."""

from __future__ import annotations

from pathlib import Path

import click

from ..api.workflows import AnalysisProgress as _Progress  # noqa: F401  (the bar's name in its tests)
from ..errors import UsageError
from ..surgery.criteria import CRITERIA
from . import main
from .common import CFG, FLAGS, WEIGHTS_REQUIRED, load_model, warn
from .prune import IMPORTANCE_IMAGES

# This command's parameters, as the library's messages name them (`rates`, ...), shown as its flags.
FLAGS.update({"rates": "--rates", "criterion": "--criterion", "images": "--images", "proxy": "--proxy"})


def _rates(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise UsageError(f"`rates` '{text}': expected rates in [0, 1) separated by commas") from None


@main.command()
@CFG
@WEIGHTS_REQUIRED
@click.option(
    "--data",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Darknet .data file: its valid= images are scored (labels needed, except with --proxy).",
)
@click.option(
    "--rates",
    default="0.25,0.5,0.75",
    show_default=True,
    help="Shares of each unit's channels to remove, comma separated, each in [0, 1).",
)
@click.option(
    "--criterion",
    default="bn-gamma",
    show_default=True,
    help=f"Which channels of a unit go first: {', '.join(CRITERIA)}.",
)
@click.option("--images", type=click.IntRange(1), help="Only the first N valid images (default: all).")
@IMPORTANCE_IMAGES
@click.option(
    "--proxy",
    is_flag=True,
    help="No mAP: only the relative change of the detection scores against the unpruned model (no labels "
    "needed, one forward pass per image and unit × rate).",
)
@click.option(
    "-o",
    "--output",
    "outdir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for sensitivity.json (the state: a killed run continues from it), .md and .png.",
)
def sensitivity(
    cfg: Path,
    weights: Path,
    data: Path,
    rates: str,
    criterion: str,
    images: int | None,
    importance_images: int,
    proxy: bool,
    outdir: Path,
) -> None:
    """Prune each prunable unit (a coupled channel group, named by its conv layers) alone at each rate and
    score the result on the valid images without fine-tuning: mAP@0.5, mAP@0.5:0.95, P, R (as `eval`),
    params, BFLOPs, and the label-free proxy (relative change of the detection scores).

    Writes sensitivity.json into the -o folder (what `plan --sensitivity` reads), sensitivity.md (units
    most sensitive first) and sensitivity.png (the measure per rate, one curve per unit). The JSON is
    rewritten after every unit × rate: run the same command again to continue a killed run; other inputs
    or settings are refused until the file is deleted.
    """
    model = load_model(cfg, weights)
    report = model.sensitivity(
        data,
        outdir,
        rates=_rates(rates),
        criterion=criterion,
        images=images,
        importance_images=importance_images,
        proxy=proxy,
        progress=True,
    )
    for message in report.warnings:
        warn(message)
    click.echo(str(report))
