"""plan: a rate per prunable unit from a sensitivity analysis, to a BFLOPs, params or latency target."""

from __future__ import annotations

from pathlib import Path

import click

from ..runtimes import BENCH_BACKENDS
from ..surgery.plan import OPTIMIZERS
from . import main
from .common import CFG, FLAGS, WEIGHTS_REQUIRED, load_model
from .prune import NORMALIZE, ROUND_TO

# This command's parameters, as the library's messages name them, shown as its flags.
FLAGS.update({"target_latency": "--target-latency"})


@main.command()
@click.option(
    "--sensitivity",
    "sensitivity_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="sensitivity.json from `cfgsurgeon sensitivity` (each unit pruned alone at each rate).",
)
@CFG
@WEIGHTS_REQUIRED
@click.option("--target-bflops", type=float, help="Share of the original BFLOPs to keep (0-1).")
@click.option("--target-params", type=float, help="Share of the original params to keep (0-1).")
@click.option(
    "--target-latency",
    type=float,
    help="Share of the original latency to keep (0-1), measured with --backend along the greedy path.",
)
@click.option("--backend", type=click.Choice(BENCH_BACKENDS), help="Runtime that measures --target-latency.")
@click.option(
    "--latency-runs", default=20, show_default=True, type=click.IntRange(1), help="Timed runs each."
)
@click.option(
    "--optimizer",
    default="greedy",
    show_default=True,
    type=click.Choice(OPTIMIZERS),
    help="greedy: least predicted mAP loss per FLOPs (or params) removed, plans re-costed exactly after each "
    "step; knapsack: multiple-choice knapsack over the rates per unit; paper: the iterative filter-pruning "
    "paper's selection (k units for params and k for FLOPs, mAP-weighted).",
)
@ROUND_TO
@NORMALIZE
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The plan (JSON), for `cfgsurgeon prune --plan`.",
)
def plan(
    sensitivity_file: Path,
    cfg: Path,
    weights: Path,
    target_bflops: float | None,
    target_params: float | None,
    target_latency: float | None,
    backend: str | None,
    latency_runs: int,
    optimizer: str,
    round_to: int | str | None,
    normalize: str,
    output: Path,
) -> None:
    """Choose a pruning rate for each unit that meets the target with the least predicted mAP loss.

    Costs are computed exactly from the widths of each candidate plan; the predicted mAP loss adds the
    losses measured for each unit alone (interpolated between measured rates).
    """
    model = load_model(cfg, weights)
    report = model.plan(
        sensitivity_file,
        target_bflops=target_bflops,
        target_params=target_params,
        target_latency=target_latency,
        backend=backend,
        latency_runs=latency_runs,
        optimizer=optimizer,
        round_to=round_to,
        normalize=normalize,
    )
    report.save(output)
    click.echo(str(report))
