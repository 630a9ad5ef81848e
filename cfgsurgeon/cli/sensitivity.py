"""sensitivity: every prunable unit pruned alone at each rate, scored without fine-tuning (for `plan`)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from ..errors import UsageError
from ..files import atomic_output, refuse_overwrite
from ..surgery.criteria import CRITERIA
from . import main
from .common import CFG, FLAGS, WEIGHTS_REQUIRED, load, warn

# This command's parameters, as the library's messages name them (`rates`, ...), shown as its flags.
FLAGS.update({"rates": "--rates", "criterion": "--criterion", "images": "--images", "proxy": "--proxy"})
FLAGS.setdefault("data", "--data")


SHOWN = 5  # units printed, most sensitive first (the .md lists them all)


def _rates(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise UsageError(f"`rates` '{text}': expected rates in [0, 1) separated by commas") from None


class _Progress:
    """A bar with its ETA on a terminal; elsewhere (a log file) a line per unit × rate with the ETA."""

    def __init__(self) -> None:
        self.bar = None
        self.started = time.monotonic()
        self.first: int | None = None

    def __call__(self, done: int, total: int, what: str) -> None:
        if self.first is None:
            self.first, self.started = done, time.monotonic()
            if sys.stderr.isatty():
                from tqdm import tqdm

                self.bar = tqdm(total=total, initial=done, desc="sensitivity", unit="model", file=sys.stderr)
            return
        if self.bar is not None:
            self.bar.set_postfix_str(what, refresh=False)
            self.bar.update(done - self.bar.n)
            return
        from ..train.monitor import format_duration

        eta = (time.monotonic() - self.started) / (done - self.first) * (total - done)
        click.echo(f"sensitivity {done}/{total}: {what}, ETA {format_duration(eta)}", err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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
    try:
        from ..workflow.sensitivity import markdown_table, plot_sensitivity
        from ..workflow.sensitivity import sensitivity as analyse
    except ImportError as exc:
        raise UsageError(
            f"sensitivity needs the package '{exc.name}': pip install 'cfgsurgeon[torch]'"
        ) from None
    outputs = [outdir / f"sensitivity.{ext}" for ext in ("json", "md", "png")]
    refuse_overwrite(outputs, [cfg, weights, data])
    graph = load(cfg, weights)
    outdir.mkdir(parents=True, exist_ok=True)
    progress = _Progress()
    try:
        result = analyse(
            graph, data, _rates(rates), criterion, images, proxy, outputs[0], progress, warn, weights=weights
        )
    finally:
        progress.close()
    table = markdown_table(result)
    with atomic_output(outputs[1], "w") as out:
        out.write(table)
    plot_sensitivity(result, outputs[2])
    lines = table.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| unit |"))
    click.echo("\n".join(lines[start - 2 : start + 2 + SHOWN]))
    click.echo(f"wrote {', '.join(str(path) for path in outputs)}")
