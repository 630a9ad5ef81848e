"""Ratio sweeps: one pruning method at a range of global ratios, each point scored on the valid split.

Per ratio: the model pruned (:func:`cfgsurgeon.surgery.prune.prune`), optionally fine-tuned for a few epochs
(:func:`cfgsurgeon.train.trainer.train`), then its P, R, mAP@0.5 and mAP@0.5:0.95 on the first ``images``
photos of the ``.data`` file's valid split (:func:`cfgsurgeon.train.evaluate.evaluate`), params, BFLOPs and,
its batch-1 latency in ``backend`` (:func:`cfgsurgeon.bench.measure`). The unpruned model is scored
first as the baseline (never fine-tuned). A ratio above the method's safe bound (the largest that leaves
every layer a channel) is recorded as refused, with the bound, unless ``force``.

The chosen ratio is the largest whose mAP@0.5 is at least ``(1 - max_drop)`` × the baseline's: a relative
drop, as ``train``'s ``max_map_drop``.

Files in the output folder: ``ratio-0.30/`` per ratio (the pruned ``<cfg name>.cfg`` and ``.weights``, with
``seen=0`` so that darknet fine-tunes it with its burn-in; with fine-tuning also the run's folder
``finetune/``), ``sweep.json`` (settings and every finished point, rewritten atomically after each one),
``sweep.md`` (the table) and ``sweep.png`` (mAP and BFLOPs against the ratio, the choice marked). A killed
sweep started again continues: finished ratios are not measured again, an interrupted fine-tuning resumes
from its ``last.pt``; a sweep of other inputs or settings in the folder is refused. More ratios may be
added to a finished sweep. Figures are rounded to 6 significant digits, so that a resumed sweep writes what
an uninterrupted one does (latency, a measurement of the machine, excepted).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..bench import measure
from ..convert import load_checkpoint
from ..detect import _common_classes, head_layers
from ..emit.cfg import write_cfg
from ..errors import UsageError
from ..files import atomic_output, file_sha256, refuse_overwrite
from ..ir import Graph, load_cfg
from ..runtimes import BENCH_BACKENDS
from ..surgery.criteria import CRITERIA
from ..surgery.prune import choose, prune
from ..surgery.select import STRATEGIES
from ..train.dataset import DetectionDataset, read_data_file
from ..train.evaluate import evaluate
from ..train.importance import with_importance
from ..train.monitor import format_duration
from ..train.trainer import TrainConfig, TrainingDiverged, train
from ..weights import WeightsHeader, read_weights, write_weights

VERSION = 1
STATE_NAME = "sweep.json"
FINETUNE = {"batch": 16, "lr": 0.001, "warmup": 20}  # bench_vehicles' fine-tuning recipe (TrainConfig fields)
Log = Callable[[str], None]


@dataclass(frozen=True)
class SweepSettings:
    """What a sweep measures; every field but ``ratios`` and ``max_drop`` must match to continue one."""

    method: str = "slim"  # one of the channel strategies (a ratio of channels is what is swept)
    ratios: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    criterion: str = "bn-gamma"
    finetune_epochs: int = 0  # per ratio, before scoring (0: none)
    max_drop: float = 0.03  # relative mAP@0.5 loss against the baseline the chosen ratio may cost
    backend: str = "torch"  # latency measured in this runtime (one of runtimes.BENCH_BACKENDS)
    latency_runs: int = 20  # timed forward passes per model (0: no latency column)
    images: int | None = None  # the first N valid images (all by default)
    force: bool = False  # prune ratios above the safe bound too
    seed: int = 0
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields over FINETUNE (lr, batch, …)

    def __post_init__(self) -> None:
        if self.method not in STRATEGIES:
            raise UsageError(
                f"`method` {self.method} cannot be swept by ratio (one of: {', '.join(STRATEGIES)})"
            )
        if self.criterion not in CRITERIA:
            raise UsageError(f"`criterion` {self.criterion} is unknown (one of: {', '.join(CRITERIA)})")
        check_ratios(self.ratios)
        if self.finetune_epochs < 0:
            raise UsageError(f"`finetune_epochs` must be 0 or more, found {self.finetune_epochs}")
        if not 0 <= self.max_drop < 1:
            raise UsageError(f"`max_drop` must be in [0, 1), found {self.max_drop}")
        if self.images is not None and self.images < 1:
            raise UsageError(f"`images` must be 1 or more, found {self.images}")
        if self.latency_runs < 0:
            raise UsageError(f"`latency_runs` must be 0 or more, found {self.latency_runs}")
        if self.backend not in BENCH_BACKENDS:
            raise UsageError(
                f"`backend` {self.backend} measures no latency (one of: {', '.join(BENCH_BACKENDS)})"
            )

    def identity(self) -> dict[str, Any]:
        """The settings a point's figures depend on (JSON-ready)."""
        settings = json.loads(json.dumps(asdict(self)))
        return {key: value for key, value in settings.items() if key not in ("ratios", "max_drop")}


@dataclass
class SweepResult:
    baseline: dict[str, Any]
    rows: list[dict[str, Any]]  # one per ratio, ascending; refused ones carry "refused" and "bound"
    chosen: float | None  # the largest ratio within max_drop (None: none is)
    output: Path
    files: list[Path]  # sweep.json, sweep.md, sweep.png
    markdown: str = ""  # sweep.md's text
    warnings: list[str] = field(default_factory=list)  # what was not measured, and why


# -- ratios --------------------------------------------------------------------------------------------------


def parse_ratios(text: str) -> tuple[float, ...]:
    """``START:STOP:STEP`` (STOP included when the steps reach it) or a comma-separated list; in (0, 1)."""
    parts = text.split(":")
    try:
        if len(parts) == 3:
            start, stop, step = (float(part) for part in parts)
            if step <= 0 or stop < start:
                raise ValueError
            count = math.floor((stop - start) / step + 1e-9) + 1
            ratios = tuple(round(start + k * step, 6) for k in range(count))
        elif len(parts) == 1:
            ratios = tuple(float(part) for part in text.split(","))
        else:
            raise ValueError
    except ValueError:
        raise UsageError(
            f"`ratios` '{text}': expected START:STOP:STEP with STEP > 0 and STOP ≥ START (e.g. 0.1:0.9:0.1) "
            "or a comma-separated list (e.g. 0.2,0.4)"
        ) from None
    return check_ratios(ratios)


def check_ratios(ratios: Sequence[float]) -> tuple[float, ...]:
    checked = tuple(sorted(float(ratio) for ratio in ratios))
    if not checked:
        raise UsageError("`ratios` is empty: give at least one ratio in (0, 1)")
    outside = [ratio for ratio in checked if not 0 < ratio < 1]
    if outside:
        raise UsageError(f"`ratios`: {outside[0]:g} is not a share of the channels in (0, 1)")
    if len(set(checked)) < len(checked):
        raise UsageError(f"`ratios` lists a ratio twice: {', '.join(f'{r:g}' for r in checked)}")
    return checked


def folder_name(ratio: float) -> str:
    """``ratio-0.30``; more digits only when the ratio has them (0.125 → ``ratio-0.125``)."""
    return f"ratio-{ratio:.2f}" if round(ratio, 2) == ratio else f"ratio-{ratio:g}"


def largest_within(
    baseline_map50: float | None, rows: Sequence[dict[str, Any]], max_drop: float
) -> float | None:
    """The largest ratio among ``rows`` whose mAP@0.5 is at least ``(1 - max_drop)`` × the baseline's."""
    if baseline_map50 is None:
        return None
    floor = (1 - max_drop) * baseline_map50
    within = [row["ratio"] for row in rows if row.get("map50") is not None and row["map50"] >= floor]
    return max(within, default=None)


# -- the sweep -----------------------------------------------------------------------------------------------


def sweep(
    cfg: str | Path,
    weights: str | Path,
    data: str | Path,
    output: str | Path,
    settings: SweepSettings = SweepSettings(),
    log: Log | None = None,
    progress: bool | None = False,
    verbose: bool = False,
) -> SweepResult:
    """Measure ``settings.ratios`` of ``cfg``/``weights`` on ``data`` into ``output`` (see the module doc).

    ``log``: a line per point (and notes); ``progress``: a bar over the ratios with its ETA (None: only on a
    terminal); ``verbose``: the fine-tuning runs' own lines and bars too.
    """
    say = log or (lambda line: None)
    cfg, weights, data, output = Path(cfg), Path(weights), Path(data), Path(output)
    refuse_overwrite(_outputs(output, cfg, settings.ratios), [cfg, weights, data])
    graph = load_cfg(cfg, warn=lambda line: None)  # the caller read the model (and showed its warnings)
    read_weights(graph, weights)
    graph = with_importance(graph, settings.criterion, data)  # taylor: measured on the training images
    context = _Context(graph, cfg, data, output, settings, say, verbose)
    state = _open_state(context, weights)
    pending = [ratio for ratio in settings.ratios if _row(state, ratio) is None]
    done = len(settings.ratios) - len(pending) + (state["baseline"] is not None)
    with _bar(len(settings.ratios) + 1, done, progress) as bar:
        if state["baseline"] is None:
            state["baseline"] = context.score(graph, 0.0)
            _save(output, state)
            bar.update()
        say(f"baseline: {_describe(state['baseline'])}")
        bound = _safe_bound(graph, settings)
        started = time.monotonic()
        for done, ratio in enumerate(pending, start=1):
            row = context.point(ratio, bound)
            state["rows"] = sorted([*state["rows"], row], key=lambda r: r["ratio"])
            _save(output, state)
            bar.update()
            eta = (time.monotonic() - started) / done * (len(pending) - done)
            say(f"ratio {ratio:g}: {_describe(row)} ({done}/{len(pending)}, ETA {format_duration(eta)})")
    return _finish(output, state, settings, [context.latency_note] if context.latency_note else [])


def _outputs(output: Path, cfg: Path, ratios: Sequence[float]) -> list[Path]:
    """Every file a sweep writes directly (the fine-tuning runs write theirs inside ``finetune/``)."""
    folders = [output / folder_name(ratio) for ratio in ratios]
    kept = [folder / name for folder in folders for name in (cfg.name, f"{cfg.stem}.weights")]
    return [*(output / name for name in (STATE_NAME, "sweep.md", "sweep.png")), *kept]


@dataclass
class _Context:
    graph: Graph
    cfg: Path
    data: Path
    output: Path
    settings: SweepSettings
    say: Log
    verbose: bool
    latency_note: str | None = None
    _valid: Any = None

    def point(self, ratio: float, bound: float) -> dict[str, Any]:
        """Prune at ``ratio``, keep the files, fine-tune if asked, score."""
        settings = self.settings
        if ratio > bound and not settings.force:
            return {"ratio": ratio, "refused": f"above the safe bound {bound:.4g}", "bound": _round(bound)}
        result = prune(
            self.graph,
            settings.method,
            percent=ratio,
            criterion=settings.criterion,
            seed=settings.seed,
            force=settings.force,
        )
        folder = self.output / folder_name(ratio)
        folder.mkdir(parents=True, exist_ok=True)
        cfg, weights = folder / self.cfg.name, folder / f"{self.cfg.stem}.weights"
        write_cfg(result.pruned, cfg)
        header = self.graph.weights_header or WeightsHeader()
        write_weights(result.pruned, weights, WeightsHeader(header.major, header.minor, header.revision, 0))
        model, note = result.pruned, None
        if settings.finetune_epochs:
            model, weights, note = self._finetune(cfg, weights, folder / "finetune")
        row = self.score(model, ratio)
        row["achieved"] = _round(result.selection.achieved_ratio)
        row.update(cfg=str(cfg), weights=str(weights))
        if note:
            row["note"] = note
        return row

    def score(self, graph: Graph, ratio: float) -> dict[str, Any]:
        metrics = evaluate(graph, self._valid_images(), names=self._names())
        row = {
            "ratio": ratio,
            "P": _round(metrics.P),
            "R": _round(metrics.R),
            "map50": _round(metrics.mAP50),
            "map50_95": _round(metrics.mAP50_95),
            "params": graph.params,
            "bflops": _round(graph.bflops),
            "latency_ms": self._latency(graph, ratio),
        }
        return row

    def _latency(self, graph: Graph, ratio: float) -> float | None:
        settings = self.settings
        if not settings.latency_runs or self.latency_note is not None:
            return None
        try:
            figures = measure(
                graph,
                settings.backend,
                runs=settings.latency_runs,
                warmup=3,
                seed=settings.seed,
                progress=False,
                label=f"ratio {ratio:g}",
            )
        except UsageError as missing:  # the backend's package is not installed (its name was checked)
            self.latency_note = f"latency not measured: {missing}"
            self.say(self.latency_note)
            return None
        return _round(figures["latency_ms"]["median"])

    def _finetune(self, cfg: Path, weights: Path, folder: Path) -> tuple[Graph, Path, str | None]:
        """The pruned model fine-tuned (an interrupted run continues from its last.pt): (graph, its
        weights, a note when the run stopped early)."""
        settings = self.settings
        last = folder / "last.pt"
        options = {
            **FINETUNE,
            "optimizer": "sgd",
            "lr_policy": "cosine",
            "multiscale": False,
            **settings.train,
        }
        config = TrainConfig(
            cfg=cfg,
            weights=weights,
            data=self.data,
            output=folder,
            epochs=settings.finetune_epochs,
            resume=last if last.exists() else None,
            seed=settings.seed,
            progress=self.verbose,
            gamma_plots=False,
            **options,
        )
        quiet = self.say if self.verbose else (lambda line: None)
        try:
            result = train(config, log=quiet)
        except TrainingDiverged as stop:  # last.pt holds the last healthy epoch
            return load_checkpoint(last, None, quiet), last, f"fine-tuning stopped: {stop}"
        assert result.weights is not None  # one process: rank 0
        return result.graph, result.weights, result.stopped

    def _valid_images(self):
        """The first ``images`` photos of the valid split (read once, un-augmented)."""
        if self._valid is None:
            spec = read_data_file(self.data)
            _check_classes(self.graph, spec.classes, spec.source)
            images = spec.image_list("valid")
            count = len(images) if self.settings.images is None else self.settings.images
            if count > len(images):
                raise UsageError(
                    f"`images` is {count}, but the valid split has {len(images)}", str(self.data)
                )
            net = self.graph.net
            self._valid = DetectionDataset(
                images[:count], (net.width, net.height), spec.classes, net.channels, bool(net.letter_box)
            )
        return self._valid

    def _names(self) -> list[str]:
        return read_data_file(self.data).names


def _check_classes(graph: Graph, classes: int, source: Path) -> None:
    model = _common_classes(head_layers(graph))
    if model != classes:
        raise UsageError(f"classes={classes}, but the model has {model} classes", str(source))


def _safe_bound(graph: Graph, settings: SweepSettings) -> float:
    """The largest ratio that leaves every layer a channel, for this method and criterion."""
    chosen = choose(graph, settings.method, percent=0.0, criterion=settings.criterion, seed=settings.seed)
    return chosen.selection.ratio_bound


# -- the state file ------------------------------------------------------------------------------------------


def _open_state(context: _Context, weights: Path) -> dict[str, Any]:
    """The sweep kept in the output folder (checked to be of the same inputs and settings), or a new one."""
    header = {
        "version": VERSION,
        "cfg": str(context.cfg),
        "weights": str(weights),
        "data": str(context.data),
        "settings": context.settings.identity(),
        "inputs": {
            "cfg_sha256": file_sha256(context.cfg),
            "weights_sha256": file_sha256(weights),
            "data_sha256": file_sha256(context.data),
        },
    }
    path = context.output / STATE_NAME
    if not path.exists():
        context.output.mkdir(parents=True, exist_ok=True)
        return {**header, "baseline": None, "rows": []}
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot continue from it ({exc}); delete it to start over", str(path)) from None
    if not isinstance(saved, dict) or saved.get("version") != VERSION:
        raise UsageError(f"not a sweep (version {VERSION}); delete it or write elsewhere", str(path))
    difference = _difference(saved, header)
    if difference:
        raise UsageError(
            f"was made {difference}: give the same inputs and settings to continue it, or write elsewhere to "
            "start over",
            str(path),
        )
    return {**saved, **{key: header[key] for key in ("cfg", "weights", "data")}}


def _difference(saved: dict[str, Any], header: dict[str, Any]) -> str | None:
    """The first input or setting of ``header`` that the saved sweep differs in, in words."""
    inputs = saved.get("inputs") or {}
    for name, digest in header["inputs"].items():
        if inputs.get(name) != digest:
            return f"from another `{name.removesuffix('_sha256')}` (the file's contents differ)"
    settings = saved.get("settings") or {}
    for name, value in header["settings"].items():
        if settings.get(name) != value:
            return f"with `{name}` {settings.get(name)!r}, this run has {value!r}"
    return None


def _row(state: dict[str, Any], ratio: float) -> dict[str, Any] | None:
    return next((row for row in state["rows"] if row["ratio"] == ratio), None)


def _save(output: Path, state: dict[str, Any]) -> None:
    with atomic_output(output / STATE_NAME, "w") as out:
        out.write(json.dumps(state, indent=1) + "\n")


# -- the report ----------------------------------------------------------------------------------------------


def _finish(output: Path, state: dict[str, Any], settings: SweepSettings, warnings: list[str]) -> SweepResult:
    rows = state["rows"]
    chosen = largest_within(state["baseline"]["map50"], rows, settings.max_drop)
    state["max_drop"], state["chosen"] = settings.max_drop, chosen
    _save(output, state)
    files = [output / STATE_NAME, output / "sweep.md", output / "sweep.png"]
    markdown = report_markdown(state)
    with atomic_output(files[1], "w") as out:
        out.write(markdown)
    plot_sweep(state, files[2])
    return SweepResult(state["baseline"], rows, chosen, output, files, markdown, warnings)


def report_markdown(state: dict[str, Any]) -> str:
    """The sweep as Markdown: settings, the choice, and a row per ratio (the baseline first)."""
    settings, baseline = state["settings"], state["baseline"]
    chosen, max_drop = state.get("chosen"), state["max_drop"]
    tuning = f"{settings['finetune_epochs']} epochs per ratio" if settings["finetune_epochs"] else "none"
    images = "all" if settings["images"] is None else f"the first {settings['images']}"
    lines = [
        f"# Sweep: {settings['method']} ({settings['criterion']}) on {state['cfg']}",
        "",
        f"- weights: {state['weights']}; valid images: {images} of {state['data']}; fine-tuning: {tuning}",
    ]
    if baseline["map50"] is not None:
        floor = (1 - max_drop) * baseline["map50"]
        choice = f"ratio {chosen:g}" if chosen is not None else "no ratio"
        lines.append(
            f"- chosen: {choice}, the largest whose mAP@0.5 is within {max_drop:.0%} (relative) of the "
            f"baseline's {baseline['map50']:.4f}, i.e. ≥ {floor:.4f}"
        )
    refused = [row for row in state["rows"] if "refused" in row]
    if refused:
        lines.append(
            f"- refused: ratios above the safe bound {refused[0]['bound']:.4g} would empty a layer "
            "(`force` prunes them anyway)"
        )
    latency = f"latency ms ({settings['backend']})" if settings["latency_runs"] else "latency"
    lines += [
        "",
        f"| ratio | removed | P | R | mAP@0.5 | mAP@0.5:0.95 | params | BFLOPs | {latency} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        _table_row("baseline", baseline),
    ]
    for row in state["rows"]:
        mark = " (chosen)" if row["ratio"] == chosen else ""
        lines.append(_table_row(f"{row['ratio']:g}{mark}", row))
    notes = [f"- ratio {row['ratio']:g}: {row['note']}" for row in state["rows"] if row.get("note")]
    return "\n".join([*lines, *([""] + notes if notes else [])]) + "\n"


def _table_row(name: str, row: dict[str, Any]) -> str:
    if "refused" in row:
        return f"| {name} | refused: {row['refused']} | | | | | | | |"
    achieved = f"{row['achieved']:.3f}" if "achieved" in row else "-"
    cells = [_cell(row[key]) for key in ("P", "R", "map50", "map50_95")]
    latency = f"{row['latency_ms']:.2f}" if row.get("latency_ms") is not None else "-"
    return (
        f"| {name} | {achieved} | {' | '.join(cells)} | {row['params']:,} | {row['bflops']:.3f} | {latency} |"
    )


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def plot_sweep(state: dict[str, Any], path: Path) -> Path:
    """mAP (left axis) and BFLOPs (right axis) against the ratio, the baseline at 0, the chosen ratio and
    the mAP floor marked, refused ratios as crosses on the axis (PNG, written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    baseline, chosen = state["baseline"], state.get("chosen")
    scored = [baseline, *(row for row in state["rows"] if "refused" not in row)]
    ratios = [row["ratio"] for row in scored]
    figure, left = plt.subplots(figsize=(7, 4.6), dpi=100)
    for key, label, style in (("map50", "mAP@0.5", "-o"), ("map50_95", "mAP@0.5:0.95", "--s")):
        values = [math.nan if row[key] is None else row[key] for row in scored]
        left.plot(ratios, values, style, color="#1d4f8c", label=label)
    if baseline["map50"] is not None:
        floor = (1 - state["max_drop"]) * baseline["map50"]
        left.axhline(
            floor,
            color="#1d4f8c",
            linestyle=":",
            linewidth=1,
            label=f"baseline mAP@0.5 − {state['max_drop']:.0%}",
        )
    refused = [row["ratio"] for row in state["rows"] if "refused" in row]
    if refused:
        left.plot(refused, [0.0] * len(refused), "x", color="#a83b3b", label="refused (above the safe bound)")
    if chosen is not None:
        left.axvline(chosen, color="#2b8a3e", linewidth=1.5, label=f"chosen {chosen:g}")
    left.set(xlabel="pruning ratio (0: baseline)", ylabel="valid mAP", ylim=(0, 1), xlim=(-0.02, 1.0))
    right = left.twinx()
    right.plot(ratios, [row["bflops"] for row in scored], "-^", color="#c77c02", label="BFLOPs")
    right.set(ylabel="BFLOPs", ylim=(0, 1.05 * baseline["bflops"]))
    handles = [*left.get_legend_handles_labels()[0], *right.get_legend_handles_labels()[0]]
    figure.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    settings = state["settings"]
    tuning = f", fine-tuned {settings['finetune_epochs']} epochs" if settings["finetune_epochs"] else ""
    verdict = f"chosen {chosen:g}" if chosen is not None else f"no ratio within {state['max_drop']:.0%}"
    left.set_title(
        f"{settings['method']} ({settings['criterion']}){tuning}: {Path(state['cfg']).name}; {verdict}"
    )
    figure.tight_layout(rect=(0, 0.12, 1, 1))  # the legend below the axes: it never hides a curve
    with atomic_output(path, "wb") as out:
        figure.savefig(out, format="png", metadata={"Software": None})
    plt.close(figure)
    return path


# -- lines ---------------------------------------------------------------------------------------------------


def _describe(row: dict[str, Any]) -> str:
    if "refused" in row:
        return f"refused ({row['refused']})"
    latency = f", {row['latency_ms']:.1f} ms" if row.get("latency_ms") is not None else ""
    return (
        f"mAP@0.5 {_cell(row['map50'])}, mAP@0.5:0.95 {_cell(row['map50_95'])}, {row['params']:,} params, "
        f"{row['bflops']:.3f} BFLOPs{latency}"
    )


def _bar(total: int, done: int, progress: bool | None) -> tqdm:
    return tqdm(
        total=total,
        initial=done,
        desc="sweep",
        unit="ratio",
        file=sys.stderr,
        disable=None if progress is None else not progress,
    )


def _round(value: float | None) -> float | None:
    """6 significant digits (NaN → None): a resumed sweep writes what an uninterrupted one does."""
    if value is None or math.isnan(value):
        return None
    return float(f"{value:.6g}")
