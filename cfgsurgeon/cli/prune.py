"""prune: channel and residual-unit pruning with its report."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from ..files import atomic_output, refuse_overwrite
from ..surgery.criteria import CRITERIA
from ..surgery.prune import METHODS
from . import main
from .common import CFG, load


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
    type=click.Choice(METHODS),
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
    type=click.Choice(list(CRITERIA)),
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
    from ..emit.cfg import write_cfg
    from ..surgery.prune import prune as run_prune
    from ..surgery.prune import report, report_markdown
    from ..weights import write_weights

    graph = load(cfg, weights)
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
    from ..emit.torch import to_torch

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
