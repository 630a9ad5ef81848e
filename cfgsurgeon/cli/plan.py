"""plan: a rate per prunable unit from a sensitivity analysis, to a BFLOPs, params or latency target."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import UsageError
from ..files import atomic_output, refuse_overwrite
from ..runtimes import BENCH_BACKENDS
from ..surgery.plan import OPTIMIZERS
from . import main
from .common import CFG, WEIGHTS_REQUIRED, load
from .prune import NORMALIZE, ROUND_TO


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
    from ..surgery.plan import make_plan

    if (target_latency is None) != (backend is None):
        raise UsageError("--target-latency and --backend go together")
    sensitivity = _read_json(sensitivity_file)
    graph = load(cfg, weights)
    refuse_overwrite([output], [cfg, weights, sensitivity_file])
    measure = _latency(backend, latency_runs) if backend is not None else None
    found = make_plan(
        sensitivity,
        graph,
        target_bflops=target_bflops,
        target_params=target_params,
        target_latency=target_latency,
        optimizer=optimizer,
        measure=measure,
        round_to=round_to if round_to is not None else 1,
        normalize=normalize,
    )
    with atomic_output(output, "w") as out:
        json.dump(found, out, indent=1)
    for line in plan_table(found):
        click.echo(line)
    click.echo(f"wrote {output}")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UsageError(f"{path}:{error.lineno}: not JSON ({error.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("units"), list):
        raise UsageError(f'{path}: not a sensitivity analysis (no "units" list)')
    return data


def _latency(backend: str, runs: int):
    from ..bench import measure

    def milliseconds(graph) -> float:
        return float(measure(graph, backend, runs=runs, warmup=3, progress=False)["latency_ms"]["median"])

    return milliseconds


def plan_table(found: dict) -> list[str]:
    """The pruned units (rate, channels kept, predicted ΔmAP) and the predicted totals."""
    lines = [f"{'unit':<16} {'rate':>6} {'kept':>11} {'ΔmAP@0.5':>9}"]
    for unit in found["units"]:
        if unit["rate"] > 0:
            kept = f"{unit['kept']}/{unit['channels']}"
            lines.append(f"{unit['key']:<16} {unit['rate']:>6.3f} {kept:>11} {unit['loss']:>9.4f}")
    predicted, target = found["predicted"], found["target"]
    lines.append(
        f"predicted: BFLOPs {predicted['bflops']:.3f} ({predicted['bflops_share']:.1%}), params "
        f"{predicted['params']:,} ({predicted['params_share']:.1%}), "
        f"mAP@0.5 loss {predicted['map50_loss']:.4f} (sum over units); "
        f"target {target['measure']} {target['share']:.1%}, optimizer {found['optimizer']}"
    )
    return lines
