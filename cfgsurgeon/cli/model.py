"""Commands on a model's description and weights: inspect, rewrite, retarget, init, convert."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import UsageError
from ..files import refuse_overwrite
from . import main
from .common import CFG, JSON_TABLE, WEIGHTS, load, warn, with_tree


@main.command()
@CFG
@WEIGHTS
@JSON_TABLE
def inspect(cfg: Path, weights: Path | None, as_json: bool) -> None:
    """Print the layer table: type, filters, size/stride, input → output shape, BFLOPs, and totals.

    With --weights, also the |γ| statistics of every batch-normalised layer (what channel pruning looks at).
    """
    from ..summary import graph_summary, table_lines

    graph = load(cfg, weights)
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
    from ..emit.cfg import write_cfg
    from ..weights import write_weights

    graph = load(cfg, weights)
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
@WEIGHTS
@click.option("--classes", type=click.IntRange(1), help="Number of classes. Default: the lines of --names.")
@click.option(
    "--names",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The new class names (one a line, as darknet's .names). With --old-names, a new class whose name "
    "the model already knows keeps that class's trained weights.",
)
@click.option(
    "--old-names",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The names of the model's current classes (e.g. coco.names).",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the new classes' initial weights.")
@click.option(
    "-o",
    "--output",
    "outdir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for <name>.cfg (and <name>.weights).",
)
def retarget(
    cfg: Path,
    weights: Path | None,
    classes: int | None,
    names: Path | None,
    old_names: Path | None,
    seed: int,
    outdir: Path,
) -> None:
    """Retarget a detector to another set of classes (darknet's custom-dataset recipe): every [yolo]/[region]
    head gets classes=N and the convolution feeding it filters = anchors × (5 + N); every other tensor is
    kept. New classes that match an old one by name inherit its weights, so the model scores them as before
    (e.g. COCO's yolov3-tiny → bus/car/motorbike/truck); the others start from small random weights. The
    written .weights count seen=0, so darknet fine-tunes them with its burn-in."""
    from ..emit.cfg import write_cfg
    from ..images import load_names
    from ..surgery.retarget import match_classes
    from ..surgery.retarget import retarget as retarget_graph
    from ..weights import WeightsHeader, write_weights

    new_names = load_names(names) if names is not None else None
    classes = classes if classes is not None else len(new_names) if new_names else None
    if classes is None:
        raise UsageError("give --classes N or --names FILE")
    if old_names is not None and new_names is None:
        raise UsageError("--old-names needs --names (the new classes are matched by name)")
    sources = match_classes(new_names[:classes], load_names(old_names)) if old_names and new_names else None
    if sources is not None:
        sources += [None] * (classes - len(sources))
    graph = retarget_graph(load(cfg, weights), classes, sources, seed)
    outdir.mkdir(parents=True, exist_ok=True)
    out_cfg, out_weights = outdir / f"{cfg.stem}.cfg", outdir / f"{(weights or cfg).stem}.weights"
    refuse_overwrite([out_cfg, out_weights], [cfg, weights, names, old_names])
    write_cfg(graph, out_cfg)
    click.echo(f"wrote {out_cfg} ({classes} classes)")
    if sources is not None and new_names is not None:
        kept = [f"{new_names[k]} <- {s}" for k, s in enumerate(sources) if s is not None]
        click.echo(f"inherited: {', '.join(kept) or 'none'}; initialised afresh: {sources.count(None)}")
    if weights is not None:
        old = graph.weights_header or WeightsHeader()
        size = write_weights(graph, out_weights, WeightsHeader(old.major, old.minor, old.revision, 0))
        click.echo(f"wrote {out_weights} ({size:,} bytes, seen=0)")


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
    from ..randinit import random_weights
    from ..weights import write_weights

    graph = load(cfg)
    if output.suffix != ".weights":
        raise UsageError(f"output {output} should end in .weights")
    refuse_overwrite([output], [cfg])
    random_weights(graph, seed=seed, dead_fraction=dead_fraction)
    size = write_weights(graph, output)
    click.echo(f"wrote {output} ({size:,} bytes, {graph.params:,} floats, seed {seed})")


@main.command()
@click.option(
    "--cfg",
    "cfg",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Darknet model description (.cfg). Needed with --weights and with module_list checkpoints; "
    "optional for cfgsurgeon .pt files, which embed theirs (given, it replaces the embedded one).",
)
@WEIGHTS
@click.option(
    "--checkpoint",
    "checkpoint",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A PyTorch .pt file: cfgsurgeon's own, or a module_list state_dict (see below).",
)
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The file to write; its suffix (.pt or .weights) chooses the format.",
)
def convert(cfg: Path | None, weights: Path | None, checkpoint: Path | None, output: Path) -> None:
    """Convert a model between darknet .weights and PyTorch .pt checkpoints.

    \b
    Input, exactly one of:
      --weights W      darknet .weights (with --cfg)
      --checkpoint P   cfgsurgeon .pt: {"format": "cfgsurgeon", "version": 1, "cfg",
                       "header", "state_dict"} (cfg embedded), or a state_dict of the
                       ultralytics/yolov3 archive family (module_list.N.Conv2d.weight,
                       module_list.N.BatchNorm2d.*, also conv_N/batch_norm_N; bare, inside
                       "model" or "state_dict", with or without DataParallel's "module."),
                       which needs --cfg
    \b
    Output, by the suffix of -o:
      .weights         darknet weights (header and `seen` kept when the input has them)
      .pt              cfgsurgeon checkpoint (loads in DarknetModel via its state_dict)

    Checkpoints are read with torch.load(weights_only=True): files that pickle Python objects (a whole
    model, a custom class) are refused with instructions to re-save the state_dict; no code from a file runs.
    """
    from ..convert import check_output_suffix, load_checkpoint, write_model

    if (weights is None) == (checkpoint is None):
        raise UsageError("give exactly one input: --weights (with --cfg) or --checkpoint")
    check_output_suffix(output)
    refuse_overwrite([output], [cfg, weights, checkpoint])
    if weights is not None:
        if cfg is None:
            raise UsageError("--weights needs --cfg (a .weights file does not describe its network)")
        graph = load(cfg, weights)
    else:
        graph = with_tree(load_checkpoint(checkpoint, cfg, warn=warn))
    size = write_model(graph, output)
    click.echo(f"wrote {output} ({size:,} bytes, {graph.params:,} floats)")
