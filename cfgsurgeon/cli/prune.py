"""prune: channel and residual-unit pruning with its report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click
import numpy as np

from ..errors import UsageError
from ..files import atomic_output, refuse_overwrite
from ..ir import Graph
from ..surgery.criteria import CRITERIA, NORMALIZERS
from ..surgery.prune import METHODS, PruneResult
from ..surgery.prune import prune as run_prune
from ..surgery.select import POW2
from . import main
from .common import CFG, load

if TYPE_CHECKING:
    from ..weights import WeightsHeader


class RoundTo(click.ParamType):
    """``--round-to N`` (a positive integer) or ``--round-to pow2``."""

    name = "N|pow2"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value == POW2:
            return value
        try:
            number = int(value)
        except ValueError:
            number = 0
        if number < 1:
            self.fail(f"expected a positive integer or '{POW2}', found '{value}'", param, ctx)
        return number


ROUND_TO = click.option(
    "--round-to",
    type=RoundTo(),
    help="Width policy for every method: kept widths are multiples of N, or powers of two (pow2); a layer "
    "may always stay whole. Default: 8 for --method regular, none otherwise (a plan: the plan's).",
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
    help="Channel importance; coupled channels score as their best member.",
)
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
    help="Measure the pruned model against the masked original with torch (if installed).",
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
    if (method is None) == (plan_file is None):
        raise UsageError("give exactly one of --method and --plan")
    if outdir is None and not dry_run:
        raise UsageError("give -o DIR for the pruned model (or --dry-run to write nothing)")
    graph = load(cfg, weights)
    options = {"criterion": criterion, "seed": seed, "normalize": normalize}
    if plan_file is not None:
        result = _by_plan(graph, plan_file, round_to, options, dry_run)
    else:
        channel = {"layer_keep": layer_keep, "round_to": round_to, "shortcuts": shortcuts, "force": force}
        targets = {"target_bflops": target_bflops, "target_params": target_params}
        if target_bflops is not None or target_params is not None:
            if percent is not None or threshold is not None:
                raise UsageError("a target sets the ratio itself: give no --percent or --threshold")
            result = _to_target(graph, method, targets, channel, options, dry_run)
        else:
            request = {"percent": percent, "threshold": threshold, **channel, **options}
            result = _dry_run(graph, method, request) if dry_run else run_prune(graph, method, **request)
    if result is None:
        return
    _write(result, cfg, weights, outdir, verify, keep_seen)


def _by_plan(graph: Graph, plan_file: Path, round_to, options: dict, dry_run: bool) -> PruneResult | None:
    from ..surgery.plan import Planner, prune_units
    from ..surgery.target import preview

    plan = _read_plan(plan_file)
    settings = {
        "criterion": plan.get("criterion", options["criterion"]),
        "round_to": round_to if round_to is not None else plan.get("round_to", 1),
        "seed": options["seed"],
        "normalize": plan.get("normalize", options["normalize"]),
    }
    if dry_run:
        planner = Planner(graph, **settings)
        _print_preview(preview(graph, planner.analysis, planner.scores, planner.keep(plan["rates"])))
        return None
    return prune_units(graph, plan["rates"], **settings)


def _read_plan(path: Path) -> dict:
    try:
        plan = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UsageError(f"{path}:{error.lineno}: not JSON ({error.msg})") from None
    rates = plan.get("rates") if isinstance(plan, dict) else None
    if not isinstance(rates, dict) or not all(isinstance(r, int | float) for r in rates.values()):
        raise UsageError(f'{path}: a plan needs "rates": {{unit key: rate, ...}}')
    return plan


def _to_target(
    graph: Graph, method: str, targets: dict, channel: dict, options: dict, dry_run: bool
) -> PruneResult | None:
    from ..surgery.target import prune_to_target

    if method == "layer":
        channel = {}
    elif method != "layer-channel":
        channel = {k: v for k, v in channel.items() if k != "shortcuts"}
    result = prune_to_target(graph, method, **targets, **channel, **options)
    reached = result.target
    click.echo(f"target {reached['measure']} {reached['target']:.2%}: reached {reached['reached']:.2%}")
    for warning in result.warnings:
        click.echo(f"warning: {warning}")
    if dry_run:
        if method == "layer":
            click.echo(f"would remove residual units at shortcut layers {result.removed_shortcuts}")
            return None
        request = {**channel, **options, "percent": reached["percent"], "force": True}
        return _dry_run(graph, method, request)
    return result


def _dry_run(graph: Graph, method: str, request: dict) -> None:
    from ..surgery.target import dry_run

    _print_preview(dry_run(graph, method, **request))


def _print_preview(data: dict) -> None:
    if data.get("refused"):
        click.echo(f"prune would refuse this: {data['refused']}")
    if data.get("requested_ratio"):
        click.echo(
            f"requested ratio {data['requested_ratio']:.4f}; safe bound {data['ratio_bound']:.4f}: "
            f"{data['share_below_bound']:.1%} of the request lies below it"
        )
    for warning in data.get("warnings", []):
        click.echo(f"warning: {warning}")
    click.echo(
        f"{'layer':>5} {'channels':>8} {'kept':>6} {'removed':>7} {'>bound':>6} {'γ removed':>9} "
        f"{'params after':>13} {'BFLOPs after':>12}"
    )
    for row in data["layers"]:
        above = "" if row["removed_below_bound"] is None else row["removed"] - row["removed_below_bound"]
        gamma = "" if row["gamma_removed"] is None else f"{row['gamma_removed']:.1%}"
        click.echo(
            f"{row['index']:>5} {row['channels']:>8} {row['kept']:>6} {row['removed']:>7} {above:>6} "
            f"{gamma:>9} {row['params_after']:>13,} {row['bflops_after']:>12.4f}"
        )
    totals = data["totals"]
    p0, p1, f0, f1 = (totals[k] for k in ("params_before", "params_after", "bflops_before", "bflops_after"))
    click.echo(
        f"predicted: params {p0:,} -> {p1:,} ({p1 / p0:.1%}), BFLOPs {f0:.3f} -> {f1:.3f} ({f1 / f0:.1%}); "
        "nothing written (--dry-run)"
    )


def _write(
    result: PruneResult, cfg: Path, weights: Path, outdir: Path, verify: bool, keep_seen: bool
) -> None:
    from ..emit.cfg import write_cfg
    from ..surgery.prune import report, report_markdown
    from ..weights import write_weights

    error = _compensation_error(result) if verify else None
    data = report(result, error)
    outdir.mkdir(parents=True, exist_ok=True)
    outputs = {name: outdir / name for name in ("pruned.cfg", "pruned.weights", "report.md", "report.json")}
    refuse_overwrite(list(outputs.values()), [cfg, weights])
    write_cfg(result.pruned, outputs["pruned.cfg"])
    header = written_header(result, keep_seen)
    write_weights(result.pruned, outputs["pruned.weights"], header)
    with atomic_output(outputs["report.json"], "w") as out:
        json.dump(data, out, indent=1)
    with atomic_output(outputs["report.md"], "w") as out:
        out.write(report_markdown(data, str(cfg)))
    seen = f"pruned.weights: seen={header.seen}" + ("" if keep_seen else " (--keep-seen keeps the parent's)")
    _print_prune_summary(data, outdir, seen)


def written_header(result: PruneResult, keep_seen: bool) -> WeightsHeader:
    """The parent's header; ``seen`` set to 0 when the model changed shape, unless ``keep_seen``."""
    from ..weights import WeightsHeader

    parent = result.original.weights_header or WeightsHeader()
    changed = result.pruned.signature() != result.original.signature()
    seen = parent.seen if keep_seen or not changed else 0
    return WeightsHeader(parent.major, parent.minor, parent.revision, seen)


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


def _print_prune_summary(data: dict, outdir: Path, seen: str) -> None:
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
            f"note: in {len(comp['inexact_at_borders'])} layers the removed channels' constants are folded "
            "exactly except in the border pixels that zero padding reaches"
            + (
                f" (largest deviation from the masked original on a random input: {measured:.3g} of its "
                "largest output, at those pixels; not a predicted accuracy loss)"
                if measured is not None
                else ""
            )
        )
    click.echo(seen)
    click.echo(f"wrote {outdir}/pruned.cfg, pruned.weights, report.md, report.json")
