"""The demo: the whole job on the embedded default model."""

from __future__ import annotations

from pathlib import Path

import click

from . import main


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
    from ..api.training import demo as run_demo

    report = run_demo(outdir, seed=seed, json_path=json_path, progress=True, log=click.echo)
    click.echo(str(report))
