"""Model methods that train: train, resume, sparsify (and their reports); the training functions that are not
about one model: :func:`synth_dataset` and :func:`demo`."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from .report import Report

if TYPE_CHECKING:
    from ..demo import DemoPlan, DemoResult, PruneChoice, Row
    from ..ir import Graph
    from ..train.trainer import EpochRecord, TrainConfig, TrainResult
    from .model import Model

Log = Callable[[str], None]


def _silent(message: str) -> None:
    """The default ``log`` of the API: nothing prints unless asked."""


class Training:
    """Mixed into :class:`cfgsurgeon.Model`."""

    graph: Graph
    cfg: Path | None
    weights: Path | None

    def train(
        self,
        data: str | Path | None,
        output: str | Path,
        *,
        weights: str | Path | None = None,
        epochs: int = 10,
        max_steps: int | None = None,
        batch: int | None = None,
        subdivisions: int | None = None,
        optimizer: str | None = None,
        lr: float | None = None,
        momentum: float | None = None,
        weight_decay: float | None = None,
        warmup: int | None = None,
        lr_policy: str | None = None,
        sparsity: float = 0.0,
        sparsity_schedule: str = "constant",
        sparsity_decay_start: float = 0.5,
        sparsity_protect: float = 0.3,
        sparsity_scope: str = "slim",
        teacher: Model | None = None,
        distill: str = "detection",
        distill_weight: float = 1.0,
        distill_temperature: float = 1.0,
        ema: float = 0.0,
        qat: str | None = None,
        qat_bits: int | None = None,
        qat_calibration: int = 8,
        qat_freeze_bn: float = 0.5,
        qat_freeze_ranges: float = 0.75,
        amp: bool = False,
        device: str = "auto",
        seed: int = 0,
        workers: int = 0,
        augment: bool = True,
        multiscale: bool | None = None,
        eval_every: int = 0,
        patience: int | None = None,
        max_map_drop: float = 0.5,
        diverge_factor: float = 3.0,
        log_every: float = 30.0,
        progress: bool = False,
        log: Log | None = None,
    ) -> Trained:
        """Train this model on the darknet dataset ``data`` (its ``train=`` list) into the folder ``output``,
        as ``cfgsurgeon train`` does; the options are its flags, ``None`` meaning "as the cfg's [net] says".
        Without weights the model starts from scratch (seeded init). ``weights``: start from these instead
        (``.weights`` or ``.pt``, also of another class count: the layers that do not match start as from
        scratch and a warning names them). ``teacher``: a model with weights to distill from. ``qat``:
        quantization-aware training (``int8``, ``dorefa`` with ``qat_bits``, ``pow2``; see
        :mod:`cfgsurgeon.train.qat`), which also writes ``NAME_int8.onnx`` (QDQ, the learned scales).

        Returns :class:`Trained` (written paths, the history, the best valid metrics, the trained model as
        ``.model``); ``self`` is left as it was. Under ``torchrun`` the same call runs DDP.

        >>> trained = Model.load("nano.cfg").train("shapes.data", "runs/nano", epochs=3)  # doctest: +SKIP
        >>> trained.model.save("out")  # doctest: +SKIP
        """
        # every other keyword of this method is the TrainConfig field of the same name
        settings = {name: value for name, value in locals().items() if name not in ("self", "teacher", "log")}
        warnings: list[str] = []
        warn = _collecting(warnings, log)
        start = self.graph.clone() if weights is None else self._starting_graph(Path(weights), seed, warn)
        settings.update(
            cfg=self.cfg,
            data=None if data is None else Path(data),
            output=Path(output),
            weights=self.weights if weights is None else Path(weights),
        )
        return _run_training(type(self), _config(settings), start, teacher, log, warnings)

    @classmethod
    def resume(
        cls,
        checkpoint: str | Path,
        data: str | Path | None,
        output: str | Path,
        *,
        cfg: str | Path | None = None,
        teacher: Model | None = None,
        progress: bool = False,
        log: Log | None = None,
        **options: Any,
    ) -> Trained:
        """Continue the run whose ``last.pt`` is ``checkpoint`` (its model, optimizer and counters) into
        ``output``; with the same options as the first run (``options``: those of :meth:`train`) the result
        is the same as one uninterrupted run. ``cfg`` names the outputs (``NAME.weights``; default
        ``model``), as ``--cfg`` beside ``--resume`` does.

        >>> Model.resume("runs/nano/last.pt", "shapes.data", "runs/nano2", epochs=6)  # doctest: +SKIP
        """
        settings = {**options, "progress": progress, "resume": Path(checkpoint)}
        settings.update(
            cfg=None if cfg is None else Path(cfg),
            data=None if data is None else Path(data),
            output=Path(output),
        )
        return _run_training(cls, _config(settings), None, teacher, log, [])

    def sparsify(
        self,
        output: str | Path,
        *,
        final_sparsity: float = 0.5,
        initial_sparsity: float = 0.0,
        begin_step: int = 0,
        end_step: int = 1000,
        frequency: int = 100,
        block: tuple[int, int] = (1, 1),
        skip: Sequence[int] = (),
        whole_model: bool = False,
        fine_tune: bool = False,
        data: str | Path | None = None,
        epochs: int = 1,
        batch_size: int = 8,
        lr: float = 1e-4,
        max_steps: int | None = None,
        tflite: bool = True,
        quantize: str = "none",
        calibration: str | Path | None = None,
        num_calibration_images: int = 300,
        runs: int = 20,
        warmup: int = 3,
        threads: int | None = None,
        progress: bool = False,
        log: Log | None = None,
    ) -> Sparsified:
        """Magnitude pruning with TF Model Optimization (``cfgsurgeon sparsify``): the kernels pruned once to
        ``final_sparsity``, or along TFMOT's PolynomialDecay schedule while fine-tuning on ``data``
        (``fine_tune``); writes ``sparse.weights``, ``sparse.keras``, ``sparse.tflite`` (unless
        ``tflite=False``), ``report.json`` and ``report.md`` into the folder ``output``. ``block``: zeros in
        whole rows×cols blocks; ``skip``: layer indices kept dense besides the protected ones
        (``whole_model``: protect none).

        Returns :class:`Sparsified`: the compression report (``.data``, ``.json()``, ``str()``) and the
        sparse model as ``.model``.

        >>> report = model.sparsify("out", final_sparsity=0.5, tflite=False)  # doctest: +SKIP
        >>> report.kernel_sparsity  # doctest: +SKIP
        0.5
        """
        from ..files import refuse_overwrite
        from ..sparsify.pipeline import FineTune, Options, outputs
        from ..sparsify.pipeline import sparsify as run_sparsify

        if fine_tune and data is None:
            raise UsageError("`fine_tune` needs `data` (a darknet .data file)")
        if data is not None and not fine_tune:
            raise UsageError("`data` is for `fine_tune`")
        if not self.has_weights:  # type: ignore[attr-defined]
            raise UsageError("sparsify needs a model with weights (load its `weights`)")
        tune = FineTune(Path(data), epochs, batch_size, lr, max_steps) if data is not None else None
        options = Options(
            final_sparsity=final_sparsity,
            initial_sparsity=initial_sparsity,
            begin_step=begin_step,
            end_step=end_step,
            frequency=frequency,
            block=(block[0], block[1]),
            skip=list(skip),
            whole_model=whole_model,
            fine_tune=tune,
            tflite=tflite,
            quantize=quantize,
            calibration=None if calibration is None else Path(calibration),
            num_calibration_images=num_calibration_images,
            runs=runs,
            warmup=warmup,
            threads=threads,
            progress=progress,
        )
        output = Path(output)
        refuse_overwrite(outputs(output), [self.cfg, self.weights, options.calibration, tune and tune.data])
        data_report, pruned = run_sparsify(self.graph, self.weights, output, options, note=log or _silent)
        model = type(self)(pruned, self.cfg, output / "sparse.weights")  # type: ignore[call-arg]
        return Sparsified(data_report, model, [path for path in outputs(output) if path.exists()])

    def _starting_graph(self, weights: Path, seed: int, warn: Log) -> Graph:
        """A copy of the model with ``weights`` loaded where they match (the rest as from scratch); an
        ultralytics-archive ``.pt`` carries no cfg and is read against the model's cfg file."""
        from ..convert import load_checkpoint
        from ..train.trainer import embeds_cfg, load_matching

        if weights.suffix == ".pt" and not embeds_cfg(weights):
            return load_checkpoint(weights, self.cfg, warn)
        return load_matching(self.graph.clone(), weights, seed, warn)


def _collecting(warnings: list[str], log: Log | None) -> Log:
    """A ``warn`` that keeps each warning in ``warnings`` and also logs it as it happens (``warning: ...``,
    where the command line shows it)."""

    def warn(message: str) -> None:
        warnings.append(message)
        if log is not None:
            log(f"warning: {message}")

    return warn


def _config(settings: dict[str, Any]) -> TrainConfig:
    from ..train.trainer import TrainConfig

    return TrainConfig(**settings)


def _run_training(
    model_class: type[Model],
    config: TrainConfig,
    graph: Graph | None,
    teacher: Model | None,
    log: Log | None,
    warnings: list[str],
) -> Trained:
    """Train ``graph`` (None: the model of ``config.resume``), refusing to write over an input."""
    from ..files import refuse_overwrite
    from ..train.trainer import train

    if teacher is not None and not teacher.has_weights:
        raise UsageError("`teacher` has no weights (a teacher with random weights teaches noise)")
    teacher_files = [teacher.cfg, teacher.weights] if teacher is not None else []
    inputs = [config.cfg, config.weights, config.resume, *teacher_files, config.data]
    named = [
        config.output / f"{path.stem}{suffix}" for path in inputs if path for suffix in (".weights", ".cfg")
    ]
    refuse_overwrite([config.output / "last.pt", *named], inputs)
    result = train(
        config,
        log=log or _silent,
        graph=graph,
        teacher=None if teacher is None else teacher.graph,
        warn=_collecting(warnings, log),
    )
    cfg = None if result.weights is None else result.weights.with_suffix(".cfg")
    return Trained(result, model_class(result.graph, cfg, result.weights), warnings)


class Trained(Report):
    """What :meth:`Model.train` / :meth:`Model.resume` did. ``lines()``: the line ``cfgsurgeon train``
    prints (none on DDP ranks other than 0, which write nothing)."""

    def __init__(self, result: TrainResult, model: Model, warnings: list[str]) -> None:
        self.model = model  # the trained model (its cfg and weights: the files written, on rank 0)
        self.output = result.output
        self.weights = result.weights  # final NAME.weights (a copy of the cfg beside it)
        self.checkpoint = result.checkpoint  # last.pt (resumable)
        self.best = result.best  # best.pt of the highest valid mAP@0.5 (with eval_every)
        self.best_weights = (
            None
            if result.best is None or result.weights is None
            else result.weights.with_stem(f"{result.weights.stem}_best")
        )
        self.epochs: list[EpochRecord] = result.epochs
        self.step_losses = result.step_losses  # the global batch's per-image loss, per optimizer step
        self.stopped = result.stopped  # why the run ended early (patience), else None
        self.plots = result.plots
        self.int8 = result.int8  # NAME_int8.onnx of a quantization-aware run (QDQ), else None
        self.warnings = warnings

    @property
    def history(self) -> dict[str, Any]:
        """The run as ``history.json`` holds it: step losses, one dict per epoch, why it stopped."""
        return {
            "step_losses": self.step_losses,
            "epochs": [asdict(epoch) for epoch in self.epochs],
            "stopped": self.stopped,
        }

    @property
    def best_metrics(self) -> dict[str, Any] | None:
        """The evaluated epoch of highest valid mAP@0.5 (the first of equals): ``epoch``, ``P``, ``R``,
        ``map50``, ``map50_95``; None when nothing was evaluated."""
        scored = [epoch for epoch in self.epochs if epoch.map50 is not None]
        if not scored:
            return None
        best = max(scored, key=lambda epoch: epoch.map50 or 0.0)
        return {"epoch": best.epoch, "P": best.P, "R": best.R, "map50": best.map50, "map50_95": best.map50_95}

    def lines(self) -> list[str]:
        if self.weights is None:
            return []
        last = self.epochs[-1] if self.epochs else None
        summary = f", final loss {last.loss:.4f}" if last else ""
        best = f"; best valid mAP@0.5 in {self.best}" if self.best else ""
        int8 = f"; int8 model {self.int8}" if self.int8 else ""
        return [f"wrote {self.weights} and {self.checkpoint}{summary}{best}{int8}"]


class Sparsified(Report):
    """What :meth:`Model.sparsify` did: the compression report as data (``.data``, ``.json()`` is what
    ``--json`` prints), the sparse model (``.model``) and the files written (``.outputs``)."""

    def __init__(self, data: dict[str, Any], model: Model, outputs: list[Path]) -> None:
        self.data = data
        self.model = model
        self.outputs = outputs

    @property
    def kernel_sparsity(self) -> float:
        """Share of zeros over the pruned layers' kernels."""
        return self.data["overall"]["pruned_layers"]

    def json(self) -> str:
        return json.dumps(self.data)

    def lines(self) -> list[str]:
        from ..sparsify.report import lines

        return lines(self.data) + [f"wrote {', '.join(str(path) for path in self.outputs)}"]


# -- functions that are not about one model ---------------------------------------------------------------


def synth_dataset(
    output: str | Path,
    *,
    classes: int = 3,
    train: int = 512,
    valid: int = 128,
    size: int = 128,
    seed: int = 0,
) -> Synthesized:
    """Write the synthetic shapes dataset (circle, square, triangle, ...) in darknet format into the folder
    ``output`` (``cfgsurgeon synth``; an earlier synthetic dataset there is replaced); the same arguments
    give byte-identical files. Returns :class:`Synthesized` (``.data_file`` is the ``.data`` to train on).

    >>> synth_dataset("shapes", train=64, valid=16).data_file  # doctest: +SKIP
    PosixPath('shapes/synthetic.data')
    """
    from ..train.synthetic import make_synthetic_dataset

    data_file = make_synthetic_dataset(output, classes, train, valid, size, seed)
    return Synthesized(data_file, classes, train, valid)


class Synthesized(Report):
    """The dataset :func:`synth_dataset` wrote."""

    def __init__(self, data_file: Path, classes: int, train_images: int, valid_images: int) -> None:
        self.data_file = data_file  # darknet .data (train=, valid=, names=)
        self.folder = data_file.parent
        self.classes, self.train_images, self.valid_images = classes, train_images, valid_images

    def lines(self) -> list[str]:
        images = f"{self.train_images} train and {self.valid_images} valid images"
        return [f"wrote {images}; dataset file {self.data_file}"]


def demo(
    output: str | Path = "demo_out",
    *,
    seed: int = 0,
    json_path: str | Path | None = None,
    cfg: str | Path | None = None,
    plan: DemoPlan | None = None,
    progress: bool = False,
    log: Log | None = None,
) -> DemoReport:
    """Network slimming end to end on a CPU (``cfgsurgeon demo``): a synthetic dataset, ``cfg`` (default the
    embedded ``cfg/yolo-nano.cfg``) trained from scratch, sparse-trained, slim-pruned and fine-tuned, every
    stage evaluated, into the folder ``output``. ``plan``: sizes and settings (default the full demo);
    ``json_path``: also write the table there as JSON. ``log`` receives the stages' progress messages.

    Returns :class:`DemoReport`: the table (``str()``) and its rows as data.

    >>> print(demo("demo_out"))  # doctest: +SKIP
    """
    from .. import demo as pipeline

    chosen = replace(plan or pipeline.FULL, progress=progress)
    outdir = Path(output)
    result = pipeline.run_stages(
        outdir,
        log or _silent,
        cfg=pipeline.DEFAULT_CFG if cfg is None else Path(cfg),
        seed=seed,
        plan=chosen,
        json_path=None if json_path is None else Path(json_path),
    )
    return DemoReport(result, chosen, outdir)


class DemoReport(Report):
    """What :func:`demo` did: ``lines()`` is the table and summary the command prints at the end; ``rows``
    (one per stage: P, R, mAP50, params, size_bytes, bflops, latency_ms), ``prune`` (the slim ratio and
    why), ``seconds`` / ``cpu_seconds`` per stage, ``data`` (as ``results.json`` holds it)."""

    def __init__(self, result: DemoResult, plan: DemoPlan, outdir: Path) -> None:
        self.result, self.plan, self.outdir = result, plan, outdir
        self.rows: list[Row] = result.rows
        self.prune: PruneChoice = result.prune
        self.seconds, self.cpu_seconds = result.seconds, result.cpu_seconds
        self.data = result.to_dict()
        self.results = outdir / "results.json"

    def lines(self) -> list[str]:
        from ..demo import result_lines

        return result_lines(self.result, self.plan, self.outdir)
