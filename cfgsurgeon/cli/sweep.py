"""sweep: one pruning method at a range of global ratios, each point scored on the valid split."""

from __future__ import annotations

from pathlib import Path

import click

from ..runtimes import BENCH_BACKENDS
from ..surgery.criteria import CRITERIA
from ..surgery.select import STRATEGIES
from . import main
from .common import CFG, FLAGS, WEIGHTS_REQUIRED, load_model

# This command's parameters, as the library's messages name them (`ratios`, ...), shown as its flags.
FLAGS.update(
    {
        "ratios": "--ratios",
        "method": "--method",
        "criterion": "--criterion",
        "finetune_epochs": "--finetune-epochs",
        "max_drop": "--max-drop",
        "latency_runs": "--latency-runs",
        "images": "--images",
        "backend": "--backend",
        "seed": "--seed",
        "force": "--force",
    }
)


@main.command()
@CFG
@WEIGHTS_REQUIRED
@click.option(
    "--data",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Darknet .data file: its valid= images score every ratio (its train= images fine-tune).",
)
@click.option(
    "--method",
    default="slim",
    show_default=True,
    help=f"The channel-pruning method swept: {', '.join(STRATEGIES)} (see prune --help).",
)
@click.option(
    "--ratios",
    default="0.1:0.9:0.1",
    show_default=True,
    help="START:STOP:STEP (STOP included) or a comma-separated list: shares of the candidate channels.",
)
@click.option(
    "--criterion",
    default="bn-gamma",
    show_default=True,
    help=f"Channel importance: {', '.join(CRITERIA)} (see prune --help).",
)
@click.option(
    "--finetune-epochs",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    help="Fine-tune each pruned model this many epochs before scoring it (0: none).",
)
@click.option("--batch", type=click.IntRange(1), help="Fine-tuning: images per step (default 16).")
@click.option("--lr", type=float, help="Fine-tuning: base learning rate, cosine decay (default 0.001).")
@click.option(
    "--max-drop",
    default=0.03,
    show_default=True,
    type=click.FloatRange(0, 1, max_open=True),
    help="The chosen ratio is the largest whose valid mAP@0.5 is at least (1 - this) × the baseline's "
    "(a relative drop, as train's --max-map-drop).",
)
@click.option(
    "--backend",
    default="torch",
    show_default=True,
    help=f"Runtime the batch-1 latency is measured in: {', '.join(BENCH_BACKENDS)} (one that is not "
    "installed leaves the column empty, with a note).",
)
@click.option(
    "--latency-runs",
    default=20,
    show_default=True,
    type=click.IntRange(0),
    help="Timed forward passes per model, after 3 untimed (0: no latency column).",
)
@click.option("--images", type=click.IntRange(1), help="Score on the first N valid images (default: all).")
@click.option("--force", is_flag=True, help="Prune ratios above the safe bound too (instead of refusing).")
@click.option("--seed", default=0, show_default=True, help="Seed of fine-tuning and of --criterion random.")
@click.option("-v", "--verbose", is_flag=True, help="Show the fine-tuning runs' own lines and bars.")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for sweep.json, sweep.md, sweep.png and ratio-R/ (each ratio's cfg and weights).",
)
def sweep(
    cfg: Path,
    weights: Path,
    data: Path,
    method: str,
    ratios: str,
    criterion: str,
    finetune_epochs: int,
    batch: int | None,
    lr: float | None,
    max_drop: float,
    backend: str,
    latency_runs: int,
    images: int | None,
    force: bool,
    seed: int,
    verbose: bool,
    output: Path,
) -> None:
    """Prune at each of --ratios (optionally fine-tune), score on the valid split, and choose the largest
    ratio within --max-drop.

    Prints the table (also in sweep.md; sweep.png plots mAP and BFLOPs against the ratio). Ratios above the
    method's safe bound are recorded as refused. Run again with the same options, a killed sweep continues
    where it stopped; more ratios can be added to a finished one.
    """
    model = load_model(cfg, weights)
    report = model.sweep(
        data,
        output,
        method=method,
        ratios=ratios,
        criterion=criterion,
        finetune_epochs=finetune_epochs,
        batch=batch,
        lr=lr,
        max_drop=max_drop,
        backend=backend,
        latency_runs=latency_runs,
        images=images,
        force=force,
        seed=seed,
        verbose=verbose,
        progress=True,
    )
    click.echo(str(report))  # its warnings were logged on stderr as they happened
