"""The README's main job on the embedded default model (``cfg/yolo-nano.cfg``): the core loop a user walks
through first — parse, inspect, make weights, write cfg + weights again and prove the round trip."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .emit.cfg import write_cfg
from .errors import UsageError
from .ir import load_cfg
from .summary import table_lines
from .weights import read_weights, write_weights

DEFAULT_CFG = Path(__file__).resolve().parent.parent / "cfg" / "yolo-nano.cfg"


def run_demo(outdir: Path, echo: Callable[[str], None], cfg: Path = DEFAULT_CFG, seed: int = 0) -> None:
    from .randinit import random_weights

    if not cfg.exists():
        raise UsageError(f"the default model {cfg} is missing (run the demo from a checkout of cfgsurgeon)")
    outdir.mkdir(parents=True, exist_ok=True)
    graph = load_cfg(cfg, warn=echo)
    random_weights(graph, seed=seed, dead_fraction=0.25)
    weights = outdir / f"{cfg.stem}.weights"
    write_weights(graph, weights)
    echo(f"1. random well-conditioned weights (seed {seed}, 25% dead BN channels) -> {weights}")

    reloaded = load_cfg(cfg, warn=echo)
    read_weights(reloaded, weights)
    echo("2. layer table with BN-gamma statistics:")
    for line in table_lines(reloaded, with_gamma=True):
        echo("   " + line)

    write_cfg(reloaded, outdir / "rewritten.cfg")
    write_weights(reloaded, outdir / "rewritten.weights")
    same_cfg = load_cfg(outdir / "rewritten.cfg", warn=echo).signature() == graph.signature()
    same_bytes = (outdir / "rewritten.weights").read_bytes() == weights.read_bytes()
    echo(
        f"3. rewrite: cfg round trip {'identical' if same_cfg else 'DIFFERENT'}, "
        f"weights round trip {'byte-identical' if same_bytes else 'DIFFERENT'}"
    )
    if not (same_cfg and same_bytes):
        raise UsageError("round trip failed: please report this")
