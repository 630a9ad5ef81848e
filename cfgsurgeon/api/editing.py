"""Model methods that change the model — prune, retarget, init_weights — and write, with their reports.

A method that makes a new model never changes ``self``: its report carries the new model as ``.model``.
``str(report)`` is what the matching command prints about the result; ``report.save(...)`` writes the files
the command writes and returns the command's whole output (those lines and the lines about the files).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from .report import Lines, Report

if TYPE_CHECKING:
    from ..ir import Graph
    from ..surgery.prune import PruneResult
    from ..verify import Verification
    from ..weights import WeightsHeader
    from .model import Model

PRUNED_FILES = ("pruned.cfg", "pruned.weights", "report.md", "report.json")
Names = str | Path | Sequence[str]


class Editing:
    """Mixed into :class:`cfgsurgeon.Model`."""

    graph: Graph
    cfg: Path | None
    weights: Path | None

    def prune(
        self: Model,
        method: str | None = None,
        *,
        plan: str | Path | Mapping[str, Any] | None = None,
        percent: float | None = None,
        threshold: float | None = None,
        target_bflops: float | None = None,
        target_params: float | None = None,
        layer_keep: float = 0.01,
        round_to: int | str | None = None,
        shortcuts: int = 0,
        criterion: str = "bn-gamma",
        normalize: str = "auto",
        seed: int = 0,
        force: bool = False,
        verify: bool = True,
        data: str | Path | None = None,
        importance_images: int = 64,
    ) -> Pruned:
        """Prune channels and/or residual units (``cfgsurgeon prune``); returns a :class:`Pruned` report
        holding the pruned model (``.model``) and the figures of report.json (``.report``).

        Exactly one of ``method`` (a global selection: ``percent``, ``threshold``, or a cost target
        ``target_bflops``/``target_params`` as a share of the original) and ``plan`` (per-unit rates: a
        PLAN.json path or its dict, ``{"rates": {unit: rate}}``). ``round_to``: kept widths are multiples
        of it, or ``"pow2"``; ``verify``: check the pruned model against the original with the removed
        parts switched off (numpy, at the smallest input size the cfg accepts; a mismatch raises
        :class:`~cfgsurgeon.verify.VerificationFailed` and nothing is written).
        ``criterion="taylor"`` measures each channel's importance on ``importance_images`` training photos
        of ``data`` (a plan from a taylor analysis carries its own).
        A ratio above the safe bound is refused unless ``force``. :meth:`prune_preview` shows the same
        request without cutting anything.

        >>> model.prune("slim", percent=0.3).save("out")  # doctest: +SKIP
        """
        request = _PruneRequest(
            method=method,
            plan=_read_plan(plan),
            percent=percent,
            threshold=threshold,
            target_bflops=target_bflops,
            target_params=target_params,
            layer_keep=layer_keep,
            round_to=round_to,
            shortcuts=shortcuts,
            criterion=criterion,
            normalize=normalize,
            seed=seed,
            force=force,
            data=data,
            importance_images=importance_images,
        )
        result = request.prune(self.graph)
        return Pruned(self, result, _verification(result) if verify else None)

    def prune_preview(
        self: Model,
        method: str | None = None,
        *,
        plan: str | Path | Mapping[str, Any] | None = None,
        percent: float | None = None,
        threshold: float | None = None,
        target_bflops: float | None = None,
        target_params: float | None = None,
        layer_keep: float = 0.01,
        round_to: int | str | None = None,
        shortcuts: int = 0,
        criterion: str = "bn-gamma",
        normalize: str = "auto",
        seed: int = 0,
        force: bool = False,
        data: str | Path | None = None,
        importance_images: int = 64,
    ) -> Preview:
        """What :meth:`prune` would remove with the same options (``cfgsurgeon prune --dry-run``): per
        layer its kept and removed channels, and the predicted params and BFLOPs; nothing is cut. A request
        above the safe bound is previewed as forced, the refusal noted. Returns a :class:`Preview`.

        >>> print(model.prune_preview("slim", percent=0.3))  # doctest: +SKIP
        """
        request = _PruneRequest(
            method=method,
            plan=_read_plan(plan),
            percent=percent,
            threshold=threshold,
            target_bflops=target_bflops,
            target_params=target_params,
            layer_keep=layer_keep,
            round_to=round_to,
            shortcuts=shortcuts,
            criterion=criterion,
            normalize=normalize,
            seed=seed,
            force=force,
            data=data,
            importance_images=importance_images,
        )
        return request.preview(self.graph)

    def retarget(
        self: Model,
        classes: int | None = None,
        *,
        names: Names | None = None,
        old_names: Names | None = None,
        seed: int = 0,
    ) -> Retargeted:
        """The detector retargeted to ``classes`` classes (``cfgsurgeon retarget``): every [yolo]/[region]
        head and the convolution feeding it resized, every other tensor kept, ``seen`` reset to 0.
        ``names``: the new classes (a .names file or a list; ``classes`` defaults to their count); with
        ``old_names`` (the model's current classes), a new class of a known name inherits its trained
        weights, the others start from small random weights drawn with ``seed``.

        >>> model.retarget(names=["car", "bus"], old_names="coco.names").save("out")  # doctest: +SKIP
        """
        from ..surgery.retarget import match_classes
        from ..surgery.retarget import retarget as retarget_graph
        from ..weights import WeightsHeader

        new_names, known_names = _names(names), _names(old_names)
        classes = classes if classes is not None else len(new_names) if new_names else None
        if classes is None:
            raise UsageError("give `classes` N or `names` FILE")
        if known_names is not None and new_names is None:
            raise UsageError("`old_names` needs `names` (the new classes are matched by name)")
        sources = None
        if known_names is not None and new_names:
            sources = match_classes(new_names[:classes], known_names)
            sources += [None] * (classes - len(sources))
        graph = retarget_graph(self.graph, classes, sources, seed)
        old = graph.weights_header or WeightsHeader()
        graph.weights_header = WeightsHeader(old.major, old.minor, old.revision, 0)
        files = [Path(given) for given in (names, old_names) if isinstance(given, str | Path)]
        return Retargeted(self._derived(graph), classes, new_names, sources, files)

    def init_weights(self: Model, seed: int = 0, dead_fraction: float = 0.0) -> Initialized:
        """The model with random but well-conditioned weights (``cfgsurgeon init``): activations stay O(1)
        through deep nets and BN statistics match what the convolutions produce. The same ``seed`` gives
        the same weights; ``dead_fraction`` of each BN layer's channels are made exactly dead (γ = β = 0).

        >>> Model.load("yolo-nano.cfg").init_weights(seed=1).save("nano.weights")  # doctest: +SKIP
        """
        from ..randinit import random_weights

        if not 0 <= dead_fraction < 1:
            raise UsageError(f"`dead_fraction` must be in [0, 1), found {dead_fraction}")
        graph = self.graph.clone()
        graph.weights_header = None  # fresh weights: a fresh header (seen=0)
        random_weights(graph, seed=seed, dead_fraction=dead_fraction)
        return Initialized(self._derived(graph), seed)

    def write(self: Model, path: str | Path) -> Written:
        """Write the weights to one file (``cfgsurgeon convert``), its format chosen by the suffix: darknet
        ``.weights`` or our ``.pt`` checkpoint (which embeds the cfg). Refuses to overwrite the files the
        model was read from. Returns a :class:`Written` report.

        >>> Model.load("yolov3-tiny.cfg", "yolov3-tiny.weights").write("tiny.pt")  # doctest: +SKIP
        """
        from ..convert import write_model
        from ..files import refuse_overwrite

        if not self.has_weights:
            raise UsageError("the model has no weights to write (load it with its weights, or init_weights)")
        path = Path(path)
        refuse_overwrite([path], [self.cfg, self.weights])
        return Written(path, write_model(self.graph, path), self.params)

    def _derived(self: Model, graph: Graph) -> Model:
        """A model of ``graph`` made from this one: like :meth:`copy`, it keeps the paths it came from, so it
        saves under their names and never over those files."""
        return type(self)(graph, self.cfg, self.weights)


# -- prune ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PruneRequest:
    """The options of one prune, checked: what :meth:`Editing.prune` and its preview share."""

    method: str | None
    plan: dict[str, Any] | None
    percent: float | None
    threshold: float | None
    target_bflops: float | None
    target_params: float | None
    layer_keep: float
    round_to: int | str | None
    shortcuts: int
    criterion: str
    normalize: str
    seed: int
    force: bool
    data: str | Path | None = None
    importance_images: int = 64

    def __post_init__(self) -> None:
        if (self.method is None) == (self.plan is None):
            raise UsageError("give exactly one of `method` and `plan`")
        if self.has_target and (self.percent is not None or self.threshold is not None):
            raise UsageError("a target sets the ratio itself: give no `percent` or `threshold`")

    @property
    def has_target(self) -> bool:
        return self.target_bflops is not None or self.target_params is not None

    @property
    def options(self) -> dict[str, Any]:
        return {"criterion": self.criterion, "seed": self.seed, "normalize": self.normalize}

    @property
    def channel(self) -> dict[str, Any]:
        """The channel selection's settings; a target search takes only those of its method."""
        channel = {"layer_keep": self.layer_keep, "round_to": self.round_to, "force": self.force}
        if self.has_target and self.method == "layer":
            return {}
        if not self.has_target or self.method == "layer-channel":
            channel["shortcuts"] = self.shortcuts
        return channel

    @property
    def by_ratio(self) -> dict[str, Any]:
        """Everything a global selection by ``percent`` or ``threshold`` takes."""
        return {"percent": self.percent, "threshold": self.threshold, **self.channel, **self.options}

    @property
    def plan_settings(self) -> dict[str, Any]:
        """A plan's own criterion, width policy and normalisation, unless the request sets them."""
        assert self.plan is not None
        return {
            "criterion": self.plan.get("criterion", self.criterion),
            "round_to": self.round_to if self.round_to is not None else self.plan.get("round_to", 1),
            "seed": self.seed,
            "normalize": self.plan.get("normalize", self.normalize),
        }

    def scored(self, graph: Graph) -> Graph:
        """``graph`` with the importance the taylor criterion reads (measured, or the plan's own)."""
        from ..train.importance import with_importance

        criterion = self.plan_settings["criterion"] if self.plan is not None else self.criterion
        known = self.plan.get("importance") if self.plan is not None else None
        return with_importance(graph, criterion, self.data, self.importance_images, known)

    def prune(self, graph: Graph) -> PruneResult:
        return self._cut(self.scored(graph))

    def _cut(self, graph: Graph) -> PruneResult:
        from ..surgery.plan import prune_units
        from ..surgery.prune import prune
        from ..surgery.target import prune_to_target

        if self.plan is not None:
            return prune_units(graph, self.plan["rates"], **self.plan_settings)
        if self.has_target:
            targets = {"target_bflops": self.target_bflops, "target_params": self.target_params}
            return prune_to_target(graph, self.method, **targets, **self.channel, **self.options)
        return prune(graph, self.method, **self.by_ratio)

    def preview(self, graph: Graph) -> Preview:
        from ..surgery.plan import Planner
        from ..surgery.target import dry_run, preview

        graph = self.scored(graph)
        if self.plan is not None:
            planner = Planner(graph, **self.plan_settings)
            return Preview(preview(graph, planner.analysis, planner.scores, planner.keep(self.plan["rates"])))
        if not self.has_target:
            return Preview(dry_run(graph, self.method, **self.by_ratio))
        result = self._cut(graph)
        if self.method == "layer":
            return Preview(None, result.target, result.warnings, result.removed_shortcuts)
        request = {**self.channel, **self.options, "percent": result.target["percent"], "force": True}
        return Preview(dry_run(graph, self.method, **request), result.target, result.warnings)


def _read_plan(plan: str | Path | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A plan given as PLAN.json's path or as its dict, checked for its ``rates``."""
    if plan is None:
        return None
    where = ""
    if isinstance(plan, Mapping):
        found: Any = dict(plan)
    else:
        where = f"{plan}: "
        try:
            found = json.loads(Path(plan).read_text())
        except json.JSONDecodeError as error:
            raise UsageError(f"{plan}:{error.lineno}: not JSON ({error.msg})") from None
    rates = found.get("rates") if isinstance(found, dict) else None
    if not isinstance(rates, dict) or not all(isinstance(r, int | float) for r in rates.values()):
        raise UsageError(f'{where}a plan needs "rates": {{unit key: rate, ...}}')
    return found


def _verification(result: PruneResult) -> Verification:
    """:func:`cfgsurgeon.verify.verify_prune`: raises when the pruned model computes more than rounding away
    from the original with the removed parts switched off; says why where it cannot run."""
    from ..verify import verify_prune

    return verify_prune(result)


def _written_header(result: PruneResult, keep_seen: bool) -> WeightsHeader:
    """The parent's header; ``seen`` set to 0 when the model changed shape, unless ``keep_seen``."""
    from ..weights import WeightsHeader

    parent = result.original.weights_header or WeightsHeader()
    changed = result.pruned.signature() != result.original.signature()
    seen = parent.seen if keep_seen or not changed else 0
    return WeightsHeader(parent.major, parent.minor, parent.revision, seen)


def _target_lines(target: dict[str, Any] | None, warnings: list[str]) -> list[str]:
    """What a cost target reached, and the warnings of the search."""
    if target is None:
        return []
    reached = f"target {target['measure']} {target['target']:.2%}: reached {target['reached']:.2%}"
    return [reached, *(f"warning: {warning}" for warning in warnings)]


class Pruned(Report):
    """``cfgsurgeon prune``: ``model`` (the pruned :class:`Model`), ``report`` (the dict of report.json),
    ``warnings`` (what was done differently from what was asked) and ``result`` (the surgery's own record,
    for experts). ``lines()``: the summary the command prints; :meth:`save` writes its four files."""

    def __init__(self, parent: Model, result: PruneResult, verification: Verification | None) -> None:
        from ..surgery.prune import report

        result.pruned.weights_header = _written_header(result, keep_seen=False)
        self.parent, self.result = parent, result
        self.model = parent._derived(result.pruned)
        error, skipped = (verification.error, verification.skipped) if verification else (None, None)
        self.report = report(result, error, skipped)
        self.warnings = list(result.warnings)

    def lines(self) -> list[str]:
        data, totals = self.report, self.report["totals"]
        lines = _target_lines(self.result.target, self.warnings)
        if data["achieved_ratio"] is not None:
            lines += [
                f"upper bound of the global ratio: {data['ratio_bound']:.4f} "
                f"(threshold {data['threshold_bound']:.6g})",
                f"achieved ratio: {data['achieved_ratio']:.4f} of {data['candidate_channels']} channels",
            ]
        if data["removed_shortcuts"]:
            lines.append(f"removed residual units at shortcut layers {data['removed_shortcuts']}")
        lines.append(
            f"params {totals['params_before']:,} -> {totals['params_after']:,}, "
            f"BFLOPs {totals['bflops_before']:.3f} -> {totals['bflops_after']:.3f}"
        )
        skipped = self.report["compensation"]["verification_skipped"]
        return lines + self._border_note() + ([f"warning: {skipped}"] if skipped else [])

    def _border_note(self) -> list[str]:
        compensation = self.report["compensation"]
        if not compensation["inexact_at_borders"]:
            return []
        measured = compensation["measured_relative_error"]
        deviation = (
            " (verified against the original with those channels switched off and their constants "
            f"carried over the borders; largest deviation on a random input: {measured:.3g} of its largest "
            "output; the border effect itself is not measured and is not a predicted accuracy loss)"
            if measured is not None
            else ""
        )
        return [
            f"note: in {len(compensation['inexact_at_borders'])} layers the removed channels' constants are "
            "folded exactly except in the border pixels that zero padding reaches" + deviation
        ]

    def save(self, directory: str | Path, keep_seen: bool = False) -> Lines:
        """Write pruned.cfg, pruned.weights, report.md and report.json into ``directory`` (never over the
        parent's files); ``seen`` in pruned.weights is 0 once the model changed shape, unless
        ``keep_seen``. Returns the command's output: the summary and the lines about the files."""
        from ..emit.cfg import write_cfg
        from ..files import atomic_output, refuse_overwrite
        from ..surgery.prune import report_markdown
        from ..weights import write_weights

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        outputs = {name: directory / name for name in PRUNED_FILES}
        refuse_overwrite(list(outputs.values()), [self.parent.cfg, self.parent.weights])
        write_cfg(self.result.pruned, outputs["pruned.cfg"])
        header = _written_header(self.result, keep_seen)
        write_weights(self.result.pruned, outputs["pruned.weights"], header)
        with atomic_output(outputs["report.json"], "w") as out:
            json.dump(self.report, out, indent=1)
        with atomic_output(outputs["report.md"], "w") as out:
            out.write(report_markdown(self.report, str(self.parent.cfg or self.parent.graph.source)))
        seen = f"pruned.weights: seen={header.seen}" + (
            "" if keep_seen else " (--keep-seen keeps the parent's)"
        )
        return Lines([*self.lines(), seen, f"wrote {directory}/{', '.join(PRUNED_FILES)}"])


class Preview(Report):
    """``cfgsurgeon prune --dry-run``: ``data`` (per producer conv its channels, kept, removed, share of γ
    removed and cost after; predicted ``totals``; ``refused``: why prune would refuse the request), the
    cost ``target`` a search reached, and ``warnings``. ``data`` is None when a target is met by removing
    residual units alone (``removed_shortcuts``)."""

    def __init__(
        self,
        data: dict[str, Any] | None,
        target: dict[str, Any] | None = None,
        target_warnings: Sequence[str] = (),
        removed_shortcuts: Sequence[int] = (),
    ) -> None:
        self.data, self.target = data, target
        self.removed_shortcuts = list(removed_shortcuts)
        self._target_warnings = list(target_warnings)
        self.warnings = self._target_warnings + list((data or {}).get("warnings", []))

    def lines(self) -> list[str]:
        lines = _target_lines(self.target, self._target_warnings)
        if self.data is None:
            return [*lines, f"would remove residual units at shortcut layers {self.removed_shortcuts}"]
        return lines + _preview_lines(self.data)


def _preview_lines(data: dict[str, Any]) -> list[str]:
    lines = []
    if data.get("refused"):
        lines.append(f"prune would refuse this: {data['refused']}")
    if data.get("requested_ratio"):
        lines.append(
            f"requested ratio {data['requested_ratio']:.4f}; safe bound {data['ratio_bound']:.4f}: "
            f"{data['share_below_bound']:.1%} of the request lies below it"
        )
    lines += [f"warning: {warning}" for warning in data.get("warnings", [])]
    lines.append(
        f"{'layer':>5} {'channels':>8} {'kept':>6} {'removed':>7} {'>bound':>6} {'γ removed':>9} "
        f"{'params after':>13} {'BFLOPs after':>12}"
    )
    for row in data["layers"]:
        above = "" if row["removed_below_bound"] is None else row["removed"] - row["removed_below_bound"]
        gamma = "" if row["gamma_removed"] is None else f"{row['gamma_removed']:.1%}"
        lines.append(
            f"{row['index']:>5} {row['channels']:>8} {row['kept']:>6} {row['removed']:>7} {above:>6} "
            f"{gamma:>9} {row['params_after']:>13,} {row['bflops_after']:>12.4f}"
        )
    totals = data["totals"]
    p0, p1, f0, f1 = (totals[k] for k in ("params_before", "params_after", "bflops_before", "bflops_after"))
    lines.append(
        f"predicted: params {p0:,} -> {p1:,} ({p1 / p0:.1%}), BFLOPs {f0:.3f} -> {f1:.3f} ({f1 / f0:.1%}); "
        "nothing written (--dry-run)"
    )
    return lines


# -- retarget, init, write -----------------------------------------------------------------------------------


def _names(names: Names | None) -> list[str] | None:
    """Class names given as a .names file (one a line, as darknet reads it) or as a list."""
    from ..images import load_names

    if names is None:
        return None
    return load_names(names) if isinstance(names, str | Path) else list(names)


class Retargeted(Report):
    """``cfgsurgeon retarget``: ``model`` (the retargeted :class:`Model`), ``classes``, ``names`` (the new
    class names, if given), ``sources`` (per new class the old class it inherits, or None; None without
    ``old_names``) and ``inherited`` (new name → old class). ``lines()``: what was inherited;
    :meth:`save` writes the model."""

    def __init__(
        self,
        model: Model,
        classes: int,
        names: list[str] | None,
        sources: list[int | None] | None,
        name_files: list[Path],
    ) -> None:
        self.model, self.classes, self.names, self.sources = model, classes, names, sources
        self._name_files = name_files
        self.inherited = {
            names[k]: source for k, source in enumerate(sources or []) if names and source is not None
        }

    def lines(self) -> list[str]:
        if self.sources is None or self.names is None:
            return []
        kept = [f"{self.names[k]} <- {source}" for k, source in enumerate(self.sources) if source is not None]
        return [f"inherited: {', '.join(kept) or 'none'}; initialised afresh: {self.sources.count(None)}"]

    def save(self, directory: str | Path) -> Lines:
        """Write ``NAME.cfg`` and (with weights) ``NAME.weights``, named after the model's files, into
        ``directory`` (never over an input, names files included). Returns the command's output."""
        saved = self.model.save(directory, inputs=self._name_files)
        lines = [f"wrote {saved.cfg} ({self.classes} classes)", *self.lines()]
        if saved.weights is not None:
            lines.append(f"wrote {saved.weights} ({saved.weights_bytes:,} bytes, seen=0)")
        return Lines(lines)


class Initialized(Report):
    """``cfgsurgeon init``: ``model`` (the :class:`Model` with its random weights) and ``seed``. The command
    prints only what :meth:`save` wrote, so ``lines()`` is empty."""

    def __init__(self, model: Model, seed: int) -> None:
        self.model, self.seed = model, seed

    def lines(self) -> list[str]:
        return []

    def save(self, path: str | Path) -> Lines:
        """Write the weights to ``path`` (a ``.weights`` file; never over an input). Returns the command's
        output."""
        path = Path(path)
        if path.suffix != ".weights":
            raise UsageError(f"output {path} should end in .weights")
        written = self.model.write(path)
        return Lines(
            [f"wrote {path} ({written.size:,} bytes, {self.model.params:,} floats, seed {self.seed})"]
        )


class Written(Report):
    """What :meth:`Model.write` wrote: ``path``, its ``size`` in bytes and the model's ``params``."""

    def __init__(self, path: Path, size: int, params: int) -> None:
        self.path, self.size, self.params = path, size, params

    def lines(self) -> list[str]:
        return [f"wrote {self.path} ({self.size:,} bytes, {self.params:,} floats)"]
