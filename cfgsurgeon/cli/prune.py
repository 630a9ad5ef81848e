"""prune: channel and residual-unit pruning with its report."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UsageError
from ..surgery.criteria import CRITERIA, NORMALIZERS
from ..surgery.prune import METHODS
from ..surgery.select import POW2
from . import main
from .common import CFG, load_model


class RoundTo(click.ParamType):
    """``--round-to N`` (a positive integer) or ``--round-to pow2``; a bad value is a one-line error."""

    name = "N|pow2"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value == POW2:
            return value
        try:
            number = int(value)
        except ValueError:
            number = 0
        if number < 1:
            raise UsageError(f"`round_to` expects a positive integer or '{POW2}', found '{value}'")
        return number


ROUND_TO = click.option(
    "--round-to",
    type=RoundTo(),
    help="Width policy for every method: kept widths are multiples of N, or powers of two (pow2); a layer "
    "may always stay whole. Default: 8 for --method regular, none otherwise (a plan: the plan's).",
)
IMPORTANCE_IMAGES = click.option(
    "--importance-images",
    default=64,
    show_default=True,
    type=click.IntRange(1),
    help="--criterion taylor: how many training images (the first of the list) measure importance.",
)
NORMALIZE = click.option(
    "--normalize",
    default="auto",
    show_default=True,
    type=click.Choice(NORMALIZERS),
    help="Per-layer score normalisation so one global ratio means the same in every layer: mean divides "
    "each conv's scores by their mean; auto = mean for l1/l2/bn-gamma-l1, none (raw γ) for bn-gamma.",
)


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
    type=click.Choice(METHODS),
    help="normal: skip shortcut-coupled convs; shortcut: include them; slim: global threshold, "
    "--layer-keep floor and shortcut fusion; regular: shortcut with widths rounded (--round-to 8); layer: "
    "remove --shortcuts residual units; layer-channel: both (slim). Not with --plan.",
)
@click.option(
    "--plan",
    "plan_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help='A per-unit plan (PLAN.json from `cfgsurgeon plan`, or written by hand: {"rates": {unit: rate}}).',
)
@click.option("--percent", type=float, help="Share of candidate channels to remove (0-1).")
@click.option("--threshold", type=float, help="Remove channels whose (group) score is below this.")
@click.option(
    "--target-bflops",
    type=float,
    help="Find the ratio that leaves this share of the original BFLOPs (0-1), within 1 % below it.",
)
@click.option("--target-params", type=float, help="The same for the share of the original params.")
@click.option(
    "--layer-keep",
    default=0.01,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="slim: each layer keeps at least this share of its channels.",
)
@ROUND_TO
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
    help="Channel importance; coupled channels score as their best member. taylor: the loss change each "
    "channel's removal causes to first order, measured on --data's training images (for a model fine-tuned "
    "on your classes, it finds the channels those classes do not use; γ and weight norms cannot).",
)
@click.option(
    "--data",
    type=click.Path(dir_okay=False, path_type=Path),
    help="--criterion taylor: the darknet .data file whose training images measure importance.",
)
@IMPORTANCE_IMAGES
@NORMALIZE
@click.option("--seed", default=0, show_default=True, help="Seed for --criterion random.")
@click.option("--force", is_flag=True, help="Allow a ratio/threshold above the safe upper bound.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print what would be removed per layer and the predicted params/BFLOPs; write nothing.",
)
@click.option(
    "--keep-seen",
    is_flag=True,
    help="Keep the parent's `seen` in the written weights (default: seen=0 once the model changed shape, "
    "so darknet fine-tunes it from iteration 0 with its burn-in).",
)
@click.option(
    "--verify/--no-verify",
    default=True,
    show_default=True,
    help="Check the pruned model against the original with the removed parts switched off (numpy, one "
    "random image at the smallest size the cfg accepts); a mismatch is an error and nothing is written.",
)
@click.option(
    "-o",
    "--output",
    "outdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for pruned.cfg, pruned.weights, report.md and report.json (not with --dry-run).",
)
def prune(
    cfg: Path,
    weights: Path,
    method: str | None,
    plan_file: Path | None,
    percent: float | None,
    threshold: float | None,
    target_bflops: float | None,
    target_params: float | None,
    layer_keep: float,
    round_to: int | str | None,
    shortcuts: int,
    criterion: str,
    data: Path | None,
    importance_images: int,
    normalize: str,
    seed: int,
    force: bool,
    dry_run: bool,
    keep_seen: bool,
    verify: bool,
    outdir: Path | None,
) -> None:
    """Prune channels and/or residual units; write the compact model and a report.

    The upper bound of the global ratio (the largest that empties no layer) is always printed; a larger
    request is refused unless --force. Removed channels' constant outputs are folded into their consumers.
    """
    if outdir is None and not dry_run:
        raise UsageError("give -o DIR for the pruned model (or --dry-run to write nothing)")
    model = load_model(cfg, weights)
    request = {
        "plan": plan_file,
        "percent": percent,
        "threshold": threshold,
        "target_bflops": target_bflops,
        "target_params": target_params,
        "layer_keep": layer_keep,
        "round_to": round_to,
        "shortcuts": shortcuts,
        "criterion": criterion,
        "normalize": normalize,
        "seed": seed,
        "force": force,
        "data": data,
        "importance_images": importance_images,
    }
    if dry_run:
        click.echo(model.prune_preview(method, **request))
    else:
        click.echo(model.prune(method, **request, verify=verify).save(outdir, keep_seen=keep_seen))
