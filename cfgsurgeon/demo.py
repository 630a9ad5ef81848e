"""``cfgsurgeon demo``: the README's main job on the embedded default model (``cfg/yolo-nano.cfg``), on a CPU.

Network slimming end to end: generate the synthetic shapes dataset, train the cfg from scratch (baseline),
sparse-train it (L1 on the BN γ of the channels ``slim`` may remove), slim-prune it, fine-tune the pruned
model, and evaluate every stage on the validation images: P, R, mAP@0.5, params, ``.weights`` size, BFLOPs and
CPU latency, as a table (and JSON), plus the |γ| histograms before and after sparse training.

The prune ratio comes from the sparse γ: the share of candidate channels whose |γ| sparse training drove
below ``prune_gamma``, raised if needed until the pruned model has at most ``bflops_target`` of the
baseline's BFLOPs, and never above the highest ratio that leaves every layer a channel.

Everything is seeded and runs on ``threads`` intra-op threads (1: on a small shared CPU the tiny
convolutions of this model run several times faster on one thread than on two spinning ones, and the
results are bit-for-bit repeatable); the same run gives the same numbers, latency aside.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UsageError
from .files import atomic_output
from .ir import Graph

DEFAULT_CFG = Path(__file__).resolve().parent.parent / "cfg" / "yolo-nano.cfg"
STAGES = ("baseline", "sparse", "pruned", "finetuned")
Echo = Callable[[str], None]


@dataclass(frozen=True)
class DemoPlan:
    """Sizes and settings of the demo; :data:`FULL` is what ``cfgsurgeon demo`` runs."""

    train_images: int = 1024
    valid_images: int = 128
    batch: int = 16
    baseline_epochs: int = 10
    sparse_epochs: int = 5
    finetune_epochs: int = 3
    lr: float = 0.002  # Adam with a short warm-up, then cosine decay
    warmup: int = 30
    # SGD with momentum for sparse training: Adam would normalise the penalty's step to about lr whatever s
    # is, too slow to take γ from ~1 to 0 in a few hundred steps
    sparse_lr: float = 0.005
    sparsity: float = 0.1  # s of the L1 penalty on the slim-prunable γ
    sparsity_schedule: str = "constant"
    finetune_lr: float = 0.001  # Adam
    prune_gamma: float = 0.01  # |γ| below this: a channel sparse training has switched off
    bflops_target: float = 0.5  # the pruned model has at most this share of the baseline's BFLOPs
    latency_runs: int = 40
    latency_warmup: int = 5
    threads: int = 1
    progress: bool = True


FULL = DemoPlan()


@dataclass
class Row:
    model: str
    P: float
    R: float
    mAP50: float
    params: int
    size_bytes: int
    bflops: float
    latency_ms: float


@dataclass
class Stage:
    """A trained or pruned model on disk and in memory."""

    name: str
    graph: Graph
    cfg: Path
    weights: Path


@dataclass
class PruneChoice:
    ratio: float  # the requested share of candidate channels
    achieved: float  # the share removed (slim's per-layer floors may keep a few more)
    bound: float  # the largest ratio that leaves every layer a channel
    gamma_share: float  # share of candidates with |γ| < prune_gamma after sparse training
    rule: str  # what decided the ratio


@dataclass
class DemoResult:
    rows: list[Row]
    prune: PruneChoice
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage
    cpu_seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": [_json_row(row) for row in self.rows],
            "prune": asdict(self.prune),
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
        }


def _json_row(row: Row) -> dict[str, Any]:
    return {key: (None if isinstance(v, float) and np.isnan(v) else v) for key, v in asdict(row).items()}


# -- timing and threads --------------------------------------------------------------------------------------


class _Clock:
    """Wall and CPU time per stage, echoed as each stage ends."""

    def __init__(self, echo: Echo):
        self.echo = echo
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.echo(f"== {name}")
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.wall[name] = time.perf_counter() - wall
        self.cpu[name] = time.process_time() - cpu
        self.echo(f"== {name}: {self.wall[name]:.1f} s (CPU {self.cpu[name]:.1f} s)")


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# -- data ----------------------------------------------------------------------------------------------------


class InMemoryDataset:
    """The un-augmented training samples decoded once and kept as bytes, flipped left-right at random (seeded
    by seed, epoch and index): the demo's shapes need no more augmentation, and darknet's HSV distortion
    would cost more CPU than the training step."""

    def __init__(self, base, seed: int = 0):
        samples = [base.sample(i) for i in range(len(base))]  # pixels k/255: bytes are exact
        self.images = [np.round(image * 255).astype(np.uint8) for image, _ in samples]
        self.targets = [targets for _, targets in samples]
        self.paths = [str(path) for path in base.images]
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        import torch

        image, targets = self.images[index], self.targets[index]
        if np.random.default_rng((self.seed, self.epoch, index)).random() < 0.5:
            image = image[:, :, ::-1]
            targets = targets.copy()
            targets[:, 1] = 1.0 - targets[:, 1]
        pixels = torch.from_numpy(np.ascontiguousarray(image)).float() / 255
        return pixels, torch.from_numpy(targets), self.paths[index]


# -- stages --------------------------------------------------------------------------------------------------


@dataclass
class _Context:
    plan: DemoPlan
    seed: int
    echo: Echo
    outdir: Path
    train_set: Any = None
    valid_set: Any = None
    names: list[str] = field(default_factory=list)


def _load_data(context: _Context, cfg: Path) -> None:
    from .ir import load_cfg
    from .train.dataset import DetectionDataset, read_data_file
    from .train.synthetic import make_synthetic_dataset

    plan = context.plan
    graph = load_cfg(cfg, warn=context.echo)
    data = make_synthetic_dataset(
        context.outdir / "data",
        classes=_classes(graph),
        train=plan.train_images,
        valid=plan.valid_images,
        size=graph.net.width,
        seed=context.seed,
    )
    spec = read_data_file(data)
    context.names = spec.names
    train_images = DetectionDataset.from_data(spec, "train", graph, augment=False)
    context.train_set = InMemoryDataset(train_images, context.seed)
    context.valid_set = DetectionDataset.from_data(spec, "valid", graph, augment=False)
    context.echo(f"{data}: {len(context.train_set)} training and {len(context.valid_set)} validation images")


def _classes(graph: Graph) -> int:
    from .detect import _common_classes, head_layers

    return _common_classes(head_layers(graph))


def _train(
    context: _Context,
    name: str,
    start: Stage | Path,
    epochs: int,
    lr: float,
    optimizer: str = "adam",
    **extra,
) -> Stage:
    """Train from ``start`` (a stage's weights, or a cfg from scratch) into ``outdir/name``."""
    from .train.trainer import TrainConfig, train

    plan = context.plan
    scratch = isinstance(start, Path)
    config = TrainConfig(
        cfg=start if isinstance(start, Path) else start.cfg,
        weights=None if isinstance(start, Path) else start.weights,
        output=context.outdir / name,
        epochs=epochs,
        batch=plan.batch,
        optimizer=optimizer,
        lr=lr,
        warmup=plan.warmup if scratch else 0,
        lr_policy="cosine",
        seed=context.seed,
        progress=plan.progress,
        gamma_plots=False,
        checkpoint_every=1_000_000,  # last.pt at the end only
        **extra,
    )
    result = train(config, dataset=context.train_set, log=context.echo)
    assert result.weights is not None  # one process: rank 0
    return Stage(name, result.graph, result.weights.with_suffix(".cfg"), result.weights)


def _prune(context: _Context, sparse: Stage, baseline_bflops: float) -> tuple[Stage, PruneChoice]:
    from .emit.cfg import write_cfg
    from .surgery.prune import report, report_markdown
    from .weights import write_weights

    result, choice = choose_prune(sparse.graph, context.plan, baseline_bflops)
    folder = context.outdir / "pruned"
    folder.mkdir(parents=True, exist_ok=True)
    cfg, weights = folder / "pruned.cfg", folder / "pruned.weights"
    write_cfg(result.pruned, cfg)
    write_weights(result.pruned, weights)
    with atomic_output(folder / "report.md", "w") as out:
        out.write(report_markdown(report(result), str(sparse.cfg)))
    context.echo(
        f"slim: ratio {choice.ratio:.3f} ({choice.rule}); removed {choice.achieved:.1%} of the candidate "
        f"channels (safe bound {choice.bound:.3f}); {result.pruned.bflops / baseline_bflops:.1%} of the "
        f"baseline's BFLOPs -> {cfg}"
    )
    return Stage("pruned", result.pruned, cfg, weights), choice


def choose_prune(graph: Graph, plan: DemoPlan, baseline_bflops: float):
    """Slim-prune ``graph`` at the ratio the module's documentation describes: (PruneResult, PruneChoice)."""
    from .surgery.prune import prune
    from .train.sparsity import slim_gammas

    bound = prune(graph, "slim", percent=0.0).selection.ratio_bound
    share = float(np.mean(slim_gammas(graph) < plan.prune_gamma))
    ratio, rule = min(share, bound), f"share of |γ| < {plan.prune_gamma:g}"
    budget = plan.bflops_target * baseline_bflops
    if prune(graph, "slim", percent=ratio).pruned.bflops > budget:
        ratio, rule = _ratio_for_budget(graph, ratio, bound, budget)
    result = prune(graph, "slim", percent=ratio)
    if result.pruned.bflops > budget:
        rule += f"; the BFLOPs target {plan.bflops_target:.0%} is out of reach below the bound"
    choice = PruneChoice(ratio, result.selection.achieved_ratio, bound, share, rule)
    return result, choice


def _ratio_for_budget(graph: Graph, low: float, high: float, budget: float) -> tuple[float, str]:
    """The smallest ratio in (low, high] (to 1e-3) whose pruned model fits ``budget`` BFLOPs, by bisection."""
    from .surgery.prune import prune

    if prune(graph, "slim", percent=high).pruned.bflops > budget:
        return high, "the safe bound"
    while high - low > 1e-3:
        middle = (low + high) / 2
        if prune(graph, "slim", percent=middle).pruned.bflops > budget:
            low = middle
        else:
            high = middle
    return high, "raised to meet the BFLOPs target"


def _plot_gammas(graph: Graph, path: Path, title: str) -> None:
    from .train.sparsity import plot_gamma_histogram, slim_gammas

    plot_gamma_histogram(slim_gammas(graph), path, title)


def _evaluate(context: _Context, stage: Stage):
    from .train.evaluate import evaluate

    metrics = evaluate(stage.graph, context.valid_set, names=context.names)
    context.echo(f"{stage.name}: P {metrics.P:.4f}, R {metrics.R:.4f}, mAP@0.5 {metrics.mAP50:.4f}")
    return metrics


def _latencies(context: _Context, stages: list[Stage]) -> list[float]:
    """Median batch-1 latency (ms) of each stage's model in torch, interleaved run by run."""
    from .bench import ModelSpec, bench

    plan = context.plan
    specs = [ModelSpec(stage.cfg, stage.weights) for stage in stages]
    report = bench(
        specs,
        backend="torch",
        size=None,
        runs=plan.latency_runs,
        warmup=plan.latency_warmup,
        threads=plan.threads,
        interleave=True,
        progress=None if plan.progress else False,  # None: a bar only on a terminal
        seed=context.seed,
    )
    return [model["latency_ms"]["median"] for model in report["models"]]


# -- the demo ------------------------------------------------------------------------------------------------


def run_demo(
    outdir: Path,
    echo: Echo,
    cfg: Path = DEFAULT_CFG,
    seed: int = 0,
    plan: DemoPlan = FULL,
    json_path: Path | None = None,
) -> DemoResult:
    """Run every stage into ``outdir``, echo the table and return it (also as ``outdir/results.json``)."""
    result = run_stages(outdir, echo, cfg, seed, plan, json_path)
    for line in result_lines(result, plan, outdir):
        echo(line)
    return result


def run_stages(
    outdir: Path,
    echo: Echo,
    cfg: Path = DEFAULT_CFG,
    seed: int = 0,
    plan: DemoPlan = FULL,
    json_path: Path | None = None,
) -> DemoResult:
    """Run every stage into ``outdir`` (``echo`` gets their progress) and return the table's data, also
    written as ``outdir/results.json`` (and to ``json_path``)."""
    if not cfg.exists():
        raise UsageError(f"the model {cfg} is missing (run the demo from a checkout of cfgsurgeon)")
    outdir.mkdir(parents=True, exist_ok=True)
    context = _Context(plan, seed, echo, outdir)
    clock = _Clock(echo)
    started = time.perf_counter(), time.process_time()
    with _torch_threads(plan.threads):
        with clock.stage("data"):
            _load_data(context, cfg)
        with clock.stage("baseline: training from scratch"):
            baseline = _train(context, "baseline", cfg, plan.baseline_epochs, plan.lr)
            _plot_gammas(baseline.graph, outdir / "gamma_before.png", "baseline (before sparse training)")
        with clock.stage("sparse training"):
            sparse = _train(
                context,
                "sparse",
                baseline,
                plan.sparse_epochs,
                plan.sparse_lr,
                optimizer="sgd",
                sparsity=plan.sparsity,
                sparsity_schedule=plan.sparsity_schedule,
                sparsity_scope="slim",
            )
            _plot_gammas(sparse.graph, outdir / "gamma_after.png", "after sparse training")
        with clock.stage("slim pruning"):
            pruned, choice = _prune(context, sparse, baseline.graph.bflops)
        with clock.stage("fine-tuning"):
            finetuned = _train(context, "finetuned", pruned, plan.finetune_epochs, plan.finetune_lr)
        stages = [baseline, sparse, pruned, finetuned]
        with clock.stage("evaluation"):
            metrics = [_evaluate(context, stage) for stage in stages]
        with clock.stage("latency"):
            latencies = _latencies(context, stages)
    rows = [
        Row(
            stage.name,
            m.P,
            m.R,
            m.mAP50,
            stage.graph.params,
            stage.weights.stat().st_size,
            stage.graph.bflops,
            latency,
        )
        for stage, m, latency in zip(stages, metrics, latencies, strict=True)
    ]
    result = DemoResult(rows, choice, clock.wall, clock.cpu)
    result.seconds["total"] = time.perf_counter() - started[0]
    result.cpu_seconds["total"] = time.process_time() - started[1]
    _write_json(result, outdir / "results.json")
    if json_path is not None:
        _write_json(result, json_path)
    return result


def result_lines(result: DemoResult, plan: DemoPlan, outdir: Path) -> list[str]:
    """What the demo prints at the end: the table, the summary and the files it wrote."""
    wrote = f"wrote {outdir / 'results.json'}, {outdir / 'gamma_before.png'}, {outdir / 'gamma_after.png'}"
    return [*table_lines(result, plan), wrote]


def _write_json(result: DemoResult, path: Path) -> None:
    with atomic_output(path, "w") as out:
        json.dump(result.to_dict(), out, indent=1)
        out.write("\n")


def table_lines(result: DemoResult, plan: DemoPlan = FULL) -> list[str]:
    """The results table (markdown), then the pruning and timing summary."""
    lines = [
        "| model | P | R | mAP@0.5 | params | size (bytes) | BFLOPs | CPU latency (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result.rows:
        lines.append(
            f"| {row.model} | {row.P:.3f} | {row.R:.3f} | {row.mAP50:.3f} | {row.params:,} | "
            f"{row.size_bytes:,} | {row.bflops:.4f} | {row.latency_ms:.2f} |"
        )
    base, last = result.rows[0], result.rows[-1]
    choice = result.prune
    total = result.seconds.get("total", sum(result.seconds.values()))
    lines += [
        "",
        f"slim prune ratio {choice.ratio:.3f} ({choice.rule}; {choice.gamma_share:.1%} of the candidate "
        f"|γ| < {plan.prune_gamma:g}), {choice.achieved:.1%} of the candidate channels removed; "
        f"fine-tuned: {last.mAP50 / base.mAP50:.1%} of the baseline's mAP@0.5 at "
        f"{last.bflops / base.bflops:.1%} of its BFLOPs, {last.params / base.params:.1%} of its params",
        f"latency: torch, batch 1, {plan.threads} thread(s), median of {plan.latency_runs} interleaved runs; "
        f"total {total:.0f} s wall, {result.cpu_seconds.get('total', 0.0):.0f} s CPU",
    ]
    return lines
