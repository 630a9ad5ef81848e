"""The ``cfgsurgeon`` command line: parse arguments, call the API, print. User mistakes exit non-zero with
one line naming the file and line; heavy frameworks are imported only by the commands that need them."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .errors import CfgSurgeonError, UsageError
from .files import refuse_overwrite
from .ir import Graph, load_cfg

CFG = click.option(
    "--cfg",
    "cfg",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Darknet model description (.cfg).",
)
WEIGHTS = click.option(
    "--weights",
    "weights",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Darknet weights (.weights) matching the cfg.",
)


class _Cli(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CfgSurgeonError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            raise click.ClickException(f"{exc.filename or ''}: {exc.strerror or exc}") from None


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cfgsurgeon")
@click.option("-q", "--quiet", is_flag=True, help="Hide warnings about suspicious cfg content.")
@click.pass_context
def main(ctx: click.Context, quiet: bool) -> None:
    """Darknet .cfg transpiler and model-surgery tool for YOLO.

    Models are given as --cfg FILE [--weights FILE]; outputs go to -o. Inputs are never modified and
    outputs are written atomically.
    """
    ctx.obj = {"quiet": quiet}


def _warn(message: str) -> None:
    if not click.get_current_context().find_root().obj.get("quiet"):
        click.echo(f"warning: {message}", err=True)


def _load(cfg: Path, weights: Path | None = None) -> Graph:
    from .weights import read_weights

    graph = load_cfg(cfg, warn=_warn)
    if weights is not None:
        read_weights(graph, weights)
    return graph


@main.command()
@CFG
@WEIGHTS
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
def inspect(cfg: Path, weights: Path | None, as_json: bool) -> None:
    """Print the layer table: type, filters, size/stride, input → output shape, BFLOPs, and totals.

    With --weights, also the |γ| statistics of every batch-normalised layer (what channel pruning looks at).
    """
    from .summary import graph_summary, table_lines

    graph = _load(cfg, weights)
    if as_json:
        click.echo(json.dumps(graph_summary(graph)))
    else:
        click.echo("\n".join(table_lines(graph, with_gamma=weights is not None)))


@main.command()
@CFG
@WEIGHTS
@click.option(
    "-o",
    "--output",
    "outdir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the rewritten <name>.cfg (and <name>.weights).",
)
def rewrite(cfg: Path, weights: Path | None, outdir: Path) -> None:
    """Parse and write the model again (the identity surgery): normalises a cfg and checks the writers."""
    from .emit.cfg import write_cfg
    from .weights import write_weights

    graph = _load(cfg, weights)
    outdir.mkdir(parents=True, exist_ok=True)
    out_cfg = outdir / f"{cfg.stem}.cfg"
    out_weights = outdir / f"{(weights or cfg).stem}.weights"
    refuse_overwrite([out_cfg, out_weights], [cfg, weights])
    write_cfg(graph, out_cfg)
    click.echo(f"wrote {out_cfg}")
    if weights is not None:
        size = write_weights(graph, out_weights)
        click.echo(f"wrote {out_weights} ({size:,} bytes)")


@main.command()
@CFG
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The .weights file to write.",
)
@click.option("--seed", default=0, show_default=True, help="Random seed (same seed → identical file).")
@click.option(
    "--dead-fraction",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0.0, 1.0, max_open=True),
    help="Fraction of each batch-norm layer's channels made exactly dead (γ = β = 0).",
)
def init(cfg: Path, output: Path, seed: int, dead_fraction: float) -> None:
    """Write random but well-conditioned weights for a cfg.

    Activations stay O(1) through deep nets and BN running statistics match what the convolutions produce,
    so the model behaves like a trained one numerically: for tests, benchmarks, or trying the tool without
    a trained model.
    """
    from .randinit import random_weights
    from .weights import write_weights

    graph = _load(cfg)
    if output.suffix != ".weights":
        raise UsageError(f"output {output} should end in .weights")
    refuse_overwrite([output], [cfg])
    random_weights(graph, seed=seed, dead_fraction=dead_fraction)
    size = write_weights(graph, output)
    click.echo(f"wrote {output} ({size:,} bytes, {graph.params:,} floats, seed {seed})")


@main.command()
@click.option("-o", "--output", "outdir", default="demo_out", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Directory for the demo's files.")
@click.option("--seed", default=0, show_default=True, help="Random seed.")
def demo(outdir: Path, seed: int) -> None:
    """Run the main job on the embedded default model (cfg/yolo-nano.cfg) and print what happens."""
    from .demo import run_demo

    run_demo(outdir, click.echo, seed=seed)


if __name__ == "__main__":  # pragma: no cover
    main()
