"""Model methods of the pruning workflow: sensitivity, plan, sweep, iterate (and their reports).

``sensitivity`` and ``plan`` work on the model in memory. ``sweep`` and ``iterate`` record the files they
start from and continue a killed run by their content, so they run on the files the model was read from; a
model without them, or changed since it was read, is refused (save it and load what was written).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..files import atomic_output, refuse_overwrite
from .report import Report

if TYPE_CHECKING:
    from ..ir import Graph
    from ..surgery.plan import Measure
    from ..workflow.iterate import IterateResult
    from ..workflow.sweep import SweepResult
    from .model import Model

Log = Callable[[str], None]
SHOWN = 5  # units `sensitivity` prints, most sensitive first (the .md lists them all)


class Workflows:
    """Mixed into :class:`cfgsurgeon.Model`."""

    graph: Graph
    cfg: Path | None
    weights: Path | None

    def sensitivity(
        self,
        data: str | Path,
        output: str | Path,
        *,
        rates: Sequence[float] = (0.25, 0.5, 0.75),
        criterion: str = "bn-gamma",
        images: int | None = None,
        importance_images: int = 64,
        proxy: bool = False,
        progress: bool = False,
    ) -> Sensitivity:
        """Prune each prunable unit alone at each of ``rates`` and score it on ``data``'s valid images without
        fine-tuning (mAP@0.5, mAP@0.5:0.95, P, R, params, BFLOPs and the label-free proxy; with
        ``proxy=True`` the proxy alone, no labels needed). ``images``: only the first N (default: all);
        ``criterion="taylor"`` measures importance once, on ``importance_images`` training photos of ``data``.

        Writes ``sensitivity.json`` (what :meth:`plan` reads; rewritten after every unit × rate, so the
        same call continues a killed run), ``sensitivity.md`` and ``sensitivity.png`` into ``output``;
        returns them with the analysis as data. ``progress``: a bar on a terminal, else a line per unit ×
        rate, on stderr.

        >>> model.sensitivity("coco.data", "out", rates=[0.5], proxy=True).data["units"]  # doctest: +SKIP
        """
        with _needs_torch("sensitivity"):
            from ..workflow.sensitivity import markdown_table, plot_sensitivity
            from ..workflow.sensitivity import sensitivity as analyse
        output = Path(output)
        files = [output / f"sensitivity.{ext}" for ext in ("json", "md", "png")]
        refuse_overwrite(files, [self.cfg, self.weights, Path(data)])
        output.mkdir(parents=True, exist_ok=True)
        warnings: list[str] = []
        shown = AnalysisProgress() if progress else None
        try:
            analysis = analyse(
                self.graph,
                data,
                rates,
                criterion,
                images,
                proxy,
                files[0],
                shown,
                warnings.append,
                weights=self.weights,
                importance_images=importance_images,
            )
        finally:
            if shown is not None:
                shown.close()
        table = markdown_table(analysis)
        with atomic_output(files[1], "w") as out:
            out.write(table)
        plot_sensitivity(analysis, files[2])
        return Sensitivity(analysis, table, files, warnings)

    def plan(
        self,
        sensitivity: str | Path | Sensitivity | Mapping[str, Any],
        *,
        target_bflops: float | None = None,
        target_params: float | None = None,
        target_latency: float | None = None,
        backend: str | None = None,
        latency_runs: int = 20,
        optimizer: str = "greedy",
        round_to: int | str | None = None,
        normalize: str = "auto",
    ) -> Plan:
        """A pruning rate per prunable unit that meets the target (a share of this model's BFLOPs, params or,
        measured in ``backend`` with ``latency_runs`` timed runs, latency) with the least predicted mAP loss,
        from a sensitivity analysis (:meth:`sensitivity`'s report, its JSON file, or that JSON as a dict).

        Costs are exact, from the widths of each candidate plan; the predicted loss adds each unit's measured
        loss. ``optimizer``: greedy, knapsack or paper; ``round_to``: kept widths multiples of N, or pow2.
        Returns the plan as data (``rates``, ``data``); ``save(path)`` writes it for ``prune --plan``.

        >>> model.plan("out/sensitivity.json", target_bflops=0.5).save("plan.json")  # doctest: +SKIP
        """
        from ..surgery.plan import make_plan

        if (target_latency is None) != (backend is None):
            raise UsageError("`target_latency` and `backend` go together")
        analysis, source = _analysis(sensitivity)
        found = make_plan(
            analysis,
            self.graph,
            target_bflops=target_bflops,
            target_params=target_params,
            target_latency=target_latency,
            optimizer=optimizer,
            measure=None if backend is None else _latency(backend, latency_runs),
            round_to=1 if round_to is None else round_to,
            normalize=normalize,
        )
        return Plan(found, [self.cfg, self.weights, source])

    def sweep(
        self,
        data: str | Path,
        output: str | Path,
        *,
        method: str = "slim",
        ratios: Sequence[float] | str = "0.1:0.9:0.1",
        criterion: str = "bn-gamma",
        finetune_epochs: int = 0,
        batch: int | None = None,
        lr: float | None = None,
        max_drop: float = 0.03,
        backend: str = "torch",
        latency_runs: int = 20,
        images: int | None = None,
        force: bool = False,
        seed: int = 0,
        verbose: bool = False,
        progress: bool = False,
        log: Log | None = None,
    ) -> Sweep:
        """Prune with ``method`` at each of ``ratios`` (shares of the candidate channels: a list, or
        ``"START:STOP:STEP"``, STOP included), fine-tune each ``finetune_epochs`` epochs (``batch``, ``lr``;
        0: none), score each on ``data``'s valid split (the first ``images``) with its batch-1
        latency in ``backend`` (``latency_runs`` 0: none), and choose the largest ratio whose mAP@0.5 stays
        within ``max_drop`` (relative) of the unpruned model's. Ratios above the safe bound are recorded as
        refused unless ``force``.

        Runs on the model's files and writes ``sweep.json`` (the same call continues a killed sweep),
        ``sweep.md``, ``sweep.png`` and ``ratio-R/`` into ``output``. ``log``: a line per ratio (with
        ``progress``, on stderr, with a bar on a terminal); ``verbose``: the fine-tuning runs' lines too.

        >>> model.sweep("data/coco.data", "out", ratios=[0.2, 0.4], latency_runs=0).chosen  # doctest: +SKIP
        """
        with _needs_torch("sweep"):
            from ..workflow.sweep import SweepSettings, check_ratios, parse_ratios
            from ..workflow.sweep import sweep as run_sweep
        tuning = {key: value for key, value in (("batch", batch), ("lr", lr)) if value is not None}
        settings = SweepSettings(
            method=method,
            ratios=parse_ratios(ratios) if isinstance(ratios, str) else check_ratios(ratios),
            criterion=criterion,
            finetune_epochs=finetune_epochs,
            max_drop=float(max_drop),  # as the command line gives it: sweep.json's text is the same
            backend=backend,
            latency_runs=latency_runs,
            images=images,
            force=force,
            seed=seed,
            train=tuning,
        )
        cfg, weights = self._files("sweep")
        say = _progress_log(progress, log)
        shown = None if progress else False  # sweep's bar: on a terminal only, or never
        result = run_sweep(cfg, weights, data, output, settings, log=say, progress=shown, verbose=verbose)
        return Sweep(result)

    def iterate(
        self,
        data: str | Path,
        output: str | Path,
        *,
        target_bflops: float = 0.5,
        step: float = 0.1,
        epochs_per_step: int = 2,
        max_drop: float = 0.05,
        criterion: str = "bn-gamma",
        rates: Sequence[float] = (0.1, 0.2, 0.3),
        proxy: bool = True,
        images: int = 64,
        optimizer: str = "greedy",
        round_to: int | str = 1,
        batch: int | None = None,
        lr: float | None = None,
        device: str = "auto",
        seed: int = 0,
        progress: bool = False,
        log: Log | None = None,
    ) -> Iteration:
        """Prune step by step to ``target_bflops`` of the model's BFLOPs, ``step`` of them per step: each step
        analyses every unit at ``rates`` on the first ``images`` valid images (the label-free proxy, or valid
        mAP with ``proxy=False``), plans the step with ``optimizer`` and ``round_to``, prunes, fine-tunes
        ``epochs_per_step`` epochs (``batch``, ``lr``, ``device``) and scores on ``data``'s valid split.
        Stops early when valid mAP@0.5 falls more than ``max_drop`` (relative) below the start.

        Runs on the model's files and keeps every step in ``output``/step-N/ with ``iterate.json`` (the same
        call continues a killed run), ``iterate.md`` and ``iterate.png``. Returns the steps and the final
        model (``.model``: the last step within ``max_drop``). ``log`` (or stderr with ``progress``): a line
        per step and per tenth of each analysis.

        >>> model.iterate("data/coco.data", "out", target_bflops=0.6, step=0.2).model.bflops  # doctest: +SKIP
        """
        with _needs_torch("iterate"):
            from ..workflow.iterate import IterateSettings
            from ..workflow.iterate import iterate as run_iterate
        tuning = {key: value for key, value in (("batch", batch), ("lr", lr)) if value is not None}
        # floats as the command line gives them, so that the state file's text is the same
        settings = IterateSettings(
            target_bflops=float(target_bflops),
            step=float(step),
            epochs_per_step=epochs_per_step,
            max_drop=float(max_drop),
            criterion=criterion,
            rates=tuple(float(rate) for rate in rates),
            proxy=proxy,
            images=images,
            optimizer=optimizer,
            round_to=round_to,
            seed=seed,
            train={"device": device, **tuning},
        )
        cfg, weights = self._files("iterate")
        result = run_iterate(
            cfg, weights, Path(data), Path(output), settings, log=_progress_log(progress, log)
        )
        final = result.final
        tree = self.graph.tree_file
        return Iteration(result, type(self).load(final["cfg"], final["weights"], tree=tree))

    def _files(self, command: str) -> tuple[Path, Path]:
        """The cfg and weights the model was read from, for a workflow that records them and continues a run
        by their content; refused when the model has none or differs from them."""
        advice = "save it (`model.save(folder)`) and load the files it writes"
        if self.cfg is None or self.weights is None:
            raise UsageError(
                f"{command} runs on the model's .cfg and weights files, and it has none: {advice}"
            )
        as_read = type(self).load(self.cfg, self.weights, tree=self.graph.tree_file)  # a Model's class
        if not _same_model(self.graph, as_read.graph):
            raise UsageError(
                f"{command} runs on the model's files, and the model now differs from {self.cfg} and "
                f"{self.weights}: {advice}"
            )
        return self.cfg, self.weights


# -- reports -------------------------------------------------------------------------------------------------


class Sensitivity(Report):
    """``cfgsurgeon sensitivity``: the analysis (``data``: the JSON object, ``json()``: its file's text),
    its Markdown table (``markdown``), the files written (``files``: .json, .md, .png) and the label
    warnings (``warnings``). ``lines()``: the most sensitive units and what was written."""

    def __init__(self, data: dict[str, Any], markdown: str, files: list[Path], warnings: list[str]) -> None:
        self.data, self.markdown, self.files, self.warnings = data, markdown, files, warnings

    def json(self) -> str:
        from ..workflow.sensitivity import to_json

        return to_json(self.data)

    def lines(self) -> list[str]:
        table = self.markdown.splitlines()
        start = next(i for i, line in enumerate(table) if line.startswith("| unit |"))
        return [*table[start - 2 : start + 2 + SHOWN], f"wrote {', '.join(str(path) for path in self.files)}"]


class Plan(Report):
    """``cfgsurgeon plan``: the rate of each unit (``rates``), the whole plan as JSON-ready data (``data``:
    targets, predicted totals, per-unit rows) and ``save(path)``, which writes it for ``prune --plan``.
    ``lines()``: the pruned units and the predicted totals, then the file written once saved."""

    def __init__(self, data: dict[str, Any], inputs: list[Path | None]) -> None:
        self.data = data
        self.path: Path | None = None
        self._inputs = inputs

    @property
    def rates(self) -> dict[str, float]:
        """Unit key → share of its channels to remove (only the units the plan prunes)."""
        return dict(self.data["rates"])

    def json(self) -> str:
        return json.dumps(self.data, indent=1)

    def save(self, path: str | Path) -> Path:
        """Write the plan (JSON) to ``path``, never over the model's files or the analysis read."""
        path = Path(path)
        refuse_overwrite([path], self._inputs)
        with atomic_output(path, "w") as out:
            out.write(self.json())
        self.path = path
        return path

    def lines(self) -> list[str]:
        lines = [f"{'unit':<16} {'rate':>6} {'kept':>11} {'ΔmAP@0.5':>9}"]
        for unit in self.data["units"]:
            if unit["rate"] > 0:
                kept = f"{unit['kept']}/{unit['channels']}"
                lines.append(f"{unit['key']:<16} {unit['rate']:>6.3f} {kept:>11} {unit['loss']:>9.4f}")
        predicted, target = self.data["predicted"], self.data["target"]
        lines.append(
            f"predicted: BFLOPs {predicted['bflops']:.3f} ({predicted['bflops_share']:.1%}), params "
            f"{predicted['params']:,} ({predicted['params_share']:.1%}), "
            f"mAP@0.5 loss {predicted['map50_loss']:.4f} (sum over units); "
            f"target {target['measure']} {target['share']:.1%}, optimizer {self.data['optimizer']}"
        )
        return [*lines, *([f"wrote {self.path}"] if self.path is not None else [])]


class Sweep(Report):
    """``cfgsurgeon sweep``: the unpruned model's figures (``baseline``), a row per ratio (``rows``; refused
    ones carry ``refused`` and ``bound``), the chosen ratio (``chosen``, None when none is within the
    drop), the files (``files``: sweep.json, .md, .png; each ratio's model in ``output``/ratio-R/) and the
    notes about what was not measured (``warnings``). ``lines()``: the table and what was written."""

    def __init__(self, result: SweepResult) -> None:
        self.baseline, self.rows, self.chosen = result.baseline, result.rows, result.chosen
        self.output, self.files, self.markdown = result.output, result.files, result.markdown
        self.warnings = list(result.warnings)

    def lines(self) -> list[str]:
        return [*self.markdown.splitlines(), f"wrote {', '.join(str(path) for path in self.files)}"]


class Iteration(Report):
    """``cfgsurgeon iterate``: every step (``steps``, step 0 the start: files, params, BFLOPs, valid
    metrics before and after fine-tuning), why it ended early (``stopped``, None when the target was
    reached), the last step within the allowed drop (``final``) and its model (``model``).
    ``lines()``: the table, the final model's files and what was written."""

    def __init__(self, result: IterateResult, model: Model) -> None:
        self.steps, self.stopped, self.output = result.steps, result.stopped, result.output
        self.final = result.final
        self.model = model
        self.files = [self.output / name for name in ("iterate.json", "iterate.md", "iterate.png")]

    def lines(self) -> list[str]:
        from ..workflow.iterate import report_markdown

        final = self.final
        return [
            *report_markdown(self.steps, self.stopped).splitlines(),
            f"final model (step {final['step']}): {final['cfg']} {final['weights']}",
            f"wrote {self.files[0]}, {self.files[1].name}, {self.files[2].name}",
        ]


# -- helpers -------------------------------------------------------------------------------------------------


class AnalysisProgress:
    """The progress of a sensitivity analysis on stderr: a bar with its ETA on a terminal; elsewhere (a log
    file) a line per unit × rate with the ETA."""

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
        _to_stderr(f"sensitivity {done}/{total}: {what}, ETA {format_duration(eta)}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _progress_log(progress: bool, log: Log | None) -> Log | None:
    """Where a workflow's progress lines go: to ``log``, else to stderr when ``progress`` is asked."""
    if log is not None:
        return log
    return _to_stderr if progress else None


@contextmanager
def _needs_torch(command: str) -> Iterator[None]:
    """Imports of a workflow: a missing package (torch, matplotlib, …) is one line naming it."""
    try:
        yield
    except ImportError as missing:
        raise UsageError(
            f"{command} needs the package '{missing.name}': pip install 'cfgsurgeon[torch]'"
        ) from None


def _same_model(graph: Graph, other: Graph) -> bool:
    """Whether two graphs write the same cfg and store the same tensors (bit for bit)."""
    import numpy as np

    from ..emit.cfg import cfg_text
    from ..weights import stored_floats

    if cfg_text(graph) != cfg_text(other):
        return False
    return np.array_equal(stored_floats(graph).view(np.uint32), stored_floats(other).view(np.uint32))


def _analysis(
    sensitivity: str | Path | Sensitivity | Mapping[str, Any],
) -> tuple[Mapping[str, Any], Path | None]:
    """The analysis a plan is made from, and the file it was read from (None: given in memory)."""
    if isinstance(sensitivity, Sensitivity):
        return sensitivity.data, sensitivity.files[0]
    if isinstance(sensitivity, Mapping):
        return sensitivity, None
    path = Path(sensitivity)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UsageError(f"{path}:{error.lineno}: not JSON ({error.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("units"), list):
        raise UsageError(f'{path}: not a sensitivity analysis (no "units" list)')
    return data, path


def _latency(backend: str, runs: int) -> Measure:
    """A pruned graph → its median batch-1 latency in ``backend`` (ms), over ``runs`` timed runs."""
    from ..bench import measure

    def milliseconds(graph: Graph) -> float:
        return float(measure(graph, backend, runs=runs, warmup=3, progress=False)["latency_ms"]["median"])

    return milliseconds
