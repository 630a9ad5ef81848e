"""iterate: analyse → plan → prune → fine-tune → evaluate, one BFLOPs step at a time, to a target."""

from __future__ import annotations

from pathlib import Path

import click

from ..surgery.criteria import CRITERIA
from ..surgery.plan import OPTIMIZERS
from . import main
from .common import CFG, FLAGS, WEIGHTS_REQUIRED, load_model
from .prune import RoundTo
from .sensitivity import _rates

# This command's parameters, as the library's messages name them (`step`, ...), shown as its flags.
FLAGS.update(
    {
        "target_bflops": "--target-bflops",
        "step": "--step",
        "epochs_per_step": "--epochs-per-step",
        "max_drop": "--max-drop",
        "round_to": "--round-to",
    }
)


@main.command()
@CFG
@WEIGHTS_REQUIRED
@click.option(
    "--data",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Darknet .data file: fine-tuning on its train= images, every score on its valid= images.",
)
@click.option(
    "--target-bflops",
    default=0.5,
    show_default=True,
    type=float,
    help="Share of the starting model's BFLOPs to reach.",
)
@click.option(
    "--step",
    default=0.1,
    show_default=True,
    type=float,
    help="Share of the starting model's BFLOPs removed per step (the last step lands on the target).",
)
@click.option(
    "--epochs-per-step",
    default=2,
    show_default=True,
    type=click.IntRange(0),
    help="Fine-tuning epochs after each prune (the best valid epoch is kept).",
)
@click.option(
    "--max-drop",
    default=0.05,
    show_default=True,
    type=float,
    help="Stop when valid mAP@0.5 falls more than this share below the starting model's.",
)
@click.option(
    "--criterion",
    default="bn-gamma",
    show_default=True,
    type=click.Choice(list(CRITERIA)),
    help="Which channels of a unit go first.",
)
@click.option(
    "--rates",
    default="0.1,0.2,0.3",
    show_default=True,
    help="Rates each unit is analysed at, comma separated; the largest is the most a step cuts from a unit.",
)
@click.option(
    "--map-analysis",
    is_flag=True,
    help="Analyse each step with valid mAP (slow) instead of the label-free proxy (relative change of the "
    "detection scores).",
)
@click.option(
    "--images",
    default=64,
    show_default=True,
    type=click.IntRange(1),
    help="Images per analysis (the first N valid images).",
)
@click.option(
    "--planner",
    default="greedy",
    show_default=True,
    type=click.Choice(OPTIMIZERS),
    help="How a step's plan chooses the rates (see `plan --help`).",
)
@click.option(
    "--round-to", type=RoundTo(), default=1, show_default=True, help="Kept widths: multiples of N, or pow2."
)
@click.option("--batch", type=click.IntRange(1), help="Fine-tuning: images per step (default: the cfg's).")
@click.option("--lr", type=float, help="Fine-tuning: base learning rate (default: the cfg's).")
@click.option("--device", default="auto", show_default=True, help="Fine-tuning device: auto, cpu, cuda[:N].")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for iterate.json (the state: run again to continue), iterate.md, iterate.png and step-N/.",
)
def iterate(
    cfg: Path,
    weights: Path,
    data: Path,
    target_bflops: float,
    step: float,
    epochs_per_step: int,
    max_drop: float,
    criterion: str,
    rates: str,
    map_analysis: bool,
    images: int,
    planner: str,
    round_to: int | str,
    batch: int | None,
    lr: float | None,
    device: str,
    seed: int,
    output: Path,
) -> None:
    """Prune step by step to --target-bflops of the model's BFLOPs: each step analyses every prunable unit's
    sensitivity, plans a rate per unit for the step's share with the least predicted loss, prunes, fine-tunes
    --epochs-per-step epochs and scores on the valid split. Stops early, and says so, when valid mAP@0.5
    falls more than --max-drop below the start.

    Every step's analysis, plan, cfg/weights and fine-tuning run are kept in step-N/; the table is printed
    and written to iterate.md, iterate.png plots mAP, BFLOPs and params per step. Run the same command
    again to continue a killed run.
    """
    model = load_model(cfg, weights)
    report = model.iterate(
        data,
        output,
        target_bflops=target_bflops,
        step=step,
        epochs_per_step=epochs_per_step,
        max_drop=max_drop,
        criterion=criterion,
        rates=_rates(rates),
        proxy=not map_analysis,
        images=images,
        optimizer=planner,
        round_to=round_to,
        batch=batch,
        lr=lr,
        device=device,
        seed=seed,
        progress=True,
    )
    click.echo(str(report))
