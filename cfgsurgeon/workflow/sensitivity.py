"""Sensitivity analysis: each prunable unit pruned alone at each rate, measured without fine-tuning.

For every unit of :func:`~cfgsurgeon.surgery.plan.prunable_units` and every rate, the model with only that
unit pruned (:func:`~cfgsurgeon.surgery.plan.prune_units`) is run on the first ``images`` photos of the
``.data`` file's valid split. A full analysis scores it as ``cfgsurgeon eval`` does (mAP@0.5, mAP@0.5:0.95,
P, R: :mod:`cfgsurgeon.train.evaluate`) and also computes the proxy from the same forward pass; a
proxy-only analysis (``proxy=True``) needs no labels and only runs the network.

The proxy is the relative change of the detection scores: over every image, anchor and class, the
probability that decoding gives a box (objectness × class score, :func:`cfgsurgeon.postprocess.decode`),
``‖p_pruned − p‖ / ‖p‖``. Scores rather than the raw head outputs, because mAP only sees a raw output
through the score of a box: on the background anchors, which are nearly all of them, the raw box sizes and
class logits can change a lot while every score stays near 0 and no detection changes (see
``benchmarks/bench_sensitivity.py`` for the rank agreement of both forms with the mAP analysis).

The result is the JSON object that ``plan`` reads; it is also the state file, rewritten atomically after
every unit × rate, so that a killed run continues where it stopped. The run is identified by its settings
and by content, not paths: the cfg as :func:`~cfgsurgeon.emit.cfg.cfg_text` writes it, the tensors as
``.weights`` stores them, the ``.data`` file and every image analysed with its label file::

    {"version": 1, "cfg", "weights", "data", "criterion", "rates", "images",
     "inputs": {"cfg_sha256", "weights_sha256", "data_sha256", "proxy_only"},
     "baseline": {"map50", "map50_95", "precision", "recall", "params", "bflops", "proxy": 0.0},
     "units": [{"key", "producers", "channels",
                "results": [{"rate", "map50", "map50_95", "precision", "recall", "proxy",
                             "params", "bflops"}]}]}

The mAP fields are ``null`` in a proxy-only analysis (and P or R where undefined). Floats are rounded to 6
significant digits, so that a resumed run writes the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from ..detect import _common_classes, head_layers
from ..emit.cfg import cfg_text
from ..emit.torch import to_torch
from ..errors import UsageError
from ..files import atomic_output, file_sha256
from ..ir import Graph
from ..postprocess import decode
from ..surgery.criteria import CRITERIA
from ..surgery.plan import Unit, prunable_units, prune_units
from ..train.dataset import DataSpec, DetectionDataset, find_label, make_loader, read_data_file
from ..train.evaluate import _check_labels, predict, score
from ..train.importance import recorded, with_importance
from ..weights import stored_floats

VERSION = 1
METRICS = ("map50", "map50_95", "precision", "recall")
BATCH = 16
Progress = Callable[[int, int, str], None]  # (entries done, entries in all, what was just measured)
Outputs = list[list[np.ndarray]]  # per batch, per head: the head's output for the batch's images


def sensitivity(
    graph: Graph,
    data: str | Path,
    rates: Sequence[float] = (0.25, 0.5, 0.75),
    criterion: str = "bn-gamma",
    images: int | None = None,
    proxy: bool = False,
    state: str | Path | None = None,
    progress: Progress | None = None,
    warn: Callable[[str], None] = print,
    weights: str | Path | None = None,
    importance_images: int = 64,
) -> dict:
    """The analysis of ``graph`` (weights loaded; left unchanged) on ``data``'s valid split (module doc).

    ``images``: only the first N photos of the split (all by default); ``proxy``: the label-free score alone,
    no mAP; ``state``: the JSON file to keep the analysis in, continued when it holds a run of the same
    inputs (refused when they differ); ``progress(done, total, what)``: after the baseline and after every
    unit × rate, once the state is written; ``weights``: the file the weights came from, recorded as given
    (the cfg is recorded as ``graph.source``). The model and the images are identified by their content.
    ``criterion="taylor"`` measures importance on ``importance_images`` training photos (once: the analysis
    records it, and plans made from it use the same).
    """
    rates = _check_rates(rates)
    if criterion not in CRITERIA:
        raise UsageError(f"`criterion` '{criterion}' is unknown (one of: {', '.join(CRITERIA)})")
    spec = read_data_file(data)
    dataset = _calibration_images(graph, spec, images, proxy, warn)
    units = prunable_units(graph)
    if not units:
        raise UsageError("the model has no prunable unit", graph.source)
    header = {
        "version": VERSION,
        "cfg": graph.source,
        "weights": None if weights is None else str(weights),
        "data": str(data),
        "criterion": criterion,
        "rates": rates,
        "images": len(dataset),
        "inputs": {
            "cfg_sha256": hashlib.sha256(cfg_text(graph).encode()).hexdigest(),
            "weights_sha256": hashlib.sha256(stored_floats(graph).tobytes()).hexdigest(),
            "data_sha256": _data_sha256(spec, dataset),
            "proxy_only": proxy,
        },
    }
    previous = _resumed(Path(state), header, units) if state is not None and Path(state).exists() else None
    known = previous.get("importance") if previous is not None else None
    graph = with_importance(graph, criterion, data, importance_images, known)
    run = _Run(graph, dataset, spec.names, not proxy)
    result = previous or {
        **header,
        **recorded(graph),
        "baseline": run.baseline(),
        "units": [_unit_entry(u) for u in units],
    }
    return _measure_units(run, result, units, criterion, state, progress or _quiet)


def _quiet(done: int, total: int, what: str) -> None:
    """The default ``progress``: nothing."""


def _check_rates(rates: Sequence[float]) -> list[float]:
    checked = [float(rate) for rate in rates]
    if not checked:
        raise UsageError("`rates` is empty: give at least one rate in [0, 1)")
    for rate in checked:
        if not 0 <= rate < 1:
            raise UsageError(f"`rates`: {rate:g} is not a share of a unit's channels in [0, 1)")
    if len(set(checked)) < len(checked):
        raise UsageError(f"`rates` lists a rate twice: {', '.join(f'{r:g}' for r in checked)}")
    return checked


# -- the images ----------------------------------------------------------------------------------------------


class _Prepared(torch.utils.data.Dataset):
    """A split's images decoded and resized once: every unit × rate runs on the same tensors."""

    def __init__(self, source: DetectionDataset, count: int):
        self.images = source.images[:count]
        self.items = [source[index] for index in range(count)]
        self.epoch = 0  # make_loader reads it

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]


def _calibration_images(
    graph: Graph, spec: DataSpec, images: int | None, proxy: bool, warn: Callable[[str], None]
) -> _Prepared:
    """The first ``images`` photos of the valid split (all by default); with mAP, labels are required."""
    classes = _common_classes(head_layers(graph))
    if classes != spec.classes:
        raise UsageError(f"classes={spec.classes}, but the model has {classes} classes", str(spec.source))
    split = DetectionDataset.from_data(spec, "valid", graph, augment=False)
    if images is not None and not 1 <= images <= len(split):
        raise UsageError(f"`images` is {images}, but the valid split has {len(split)} images (1 or more)")
    count = len(split) if images is None else images
    if not proxy:
        labels = [find_label(image) for image in split.images[:count]]
        image_list = spec.valid if "valid" in spec.lines else spec.train  # darknet: valid defaults to train
        _check_labels(split.images[:count], labels, image_list, warn)
    return _Prepared(split, count)


# -- hashing the inputs and resuming -------------------------------------------------------------------------


def _data_sha256(spec: DataSpec, dataset: _Prepared) -> str:
    """The ``.data`` file, and the name, bytes and label file of every image analysed."""
    digest = hashlib.sha256(spec.source.read_bytes())
    for image in dataset.images:
        digest.update(str(image).encode() + b"\0" + file_sha256(image).encode())
        label = find_label(image)
        digest.update(b"\0" if label is None else label.read_bytes())
    return digest.hexdigest()


def _resumed(state: Path, header: dict, units: list[Unit]) -> dict:
    """The analysis saved in ``state``, checked to be of the same inputs and settings as ``header`` (paths
    may differ: the contents count)."""
    try:
        saved = json.loads(state.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot continue from it ({exc}); delete it to start over", str(state)) from None
    if (
        not isinstance(saved, dict)
        or saved.get("version") != VERSION
        or not isinstance(saved.get("inputs"), dict)
    ):
        raise UsageError(
            f"not a sensitivity analysis (version {VERSION}); delete it to start over", str(state)
        )
    for name, (before, now) in _identity(saved, header).items():
        if before != now:
            raise UsageError(
                f"was made with {name} {_shown(before)}, this run has {_shown(now)}: give the same inputs "
                "and settings to continue it, or delete it (or write elsewhere) to start over",
                str(state),
            )
    if [entry.get("key") for entry in saved.get("units", [])] != [unit.key for unit in units]:
        raise UsageError("lists other units than this model has; delete it to start over", str(state))
    return {**saved, **{key: header[key] for key in ("cfg", "weights", "data")}}


def _shown(value) -> str:
    """A setting as the refusal shows it: a SHA-256 by its first 12 digits."""
    if isinstance(value, str) and re.fullmatch("[0-9a-f]{64}", value):
        return f"sha256 {value[:12]}…"
    return str(value)


def _identity(saved: dict, header: dict) -> dict[str, tuple]:
    """What must match to continue a run: each setting's saved and current value."""
    pairs = {f"`{key}`": (saved.get(key), header[key]) for key in ("rates", "criterion", "images")}
    for key, name in (("cfg", "`cfg` content"), ("weights", "`weights` content"), ("data", "`data` content")):
        pairs[name] = (saved["inputs"].get(f"{key}_sha256"), header["inputs"][f"{key}_sha256"])
    pairs["`proxy`"] = (saved["inputs"].get("proxy_only"), header["inputs"]["proxy_only"])
    return pairs


# -- measuring -----------------------------------------------------------------------------------------------


def _unit_entry(unit: Unit) -> dict:
    return {"key": unit.key, "producers": list(unit.producers), "channels": unit.channels, "results": []}


def _measure_units(
    run: _Run, result: dict, units: list[Unit], criterion: str, state: str | Path | None, progress: Progress
) -> dict:
    total = len(units) * len(result["rates"])
    done = sum(len(entry["results"]) for entry in result["units"])
    _save(result, state)
    progress(done, total, "baseline")
    for unit, entry in zip(units, result["units"], strict=True):
        finished = {r["rate"] for r in entry["results"]}
        for rate in (r for r in result["rates"] if r not in finished):
            pruned = prune_units(run.graph, {unit.key: rate}, criterion=criterion).pruned
            entry["results"].append({"rate": rate, **run.measure(pruned)})
            entry["results"].sort(key=lambda r: result["rates"].index(r["rate"]))
            done += 1
            _save(result, state)
            progress(done, total, f"{unit.key} at {rate:g}")
    return result


def _save(result: dict, state: str | Path | None) -> None:
    if state is None:
        return
    with atomic_output(Path(state), "w") as out:
        out.write(to_json(result))


def to_json(result: dict) -> str:
    """The analysis as the text of its JSON file."""
    return json.dumps(result, indent=1) + "\n"


class _Run:
    """The model, the images and the baseline's head outputs, shared by every measurement."""

    def __init__(self, graph: Graph, dataset: _Prepared, names: list[str], with_map: bool):
        self.graph, self.dataset, self.names, self.with_map = graph, dataset, names, with_map
        self.reference: Outputs = []

    def baseline(self, score: bool = True) -> dict:
        """The unpruned model's figures (with ``score=False`` only its outputs are kept, for the proxy)."""
        outputs, figures = self._run(self.graph, score and self.with_map)
        self.reference = outputs
        return {**figures, "proxy": 0.0}

    def measure(self, pruned: Graph) -> dict:
        if not self.reference:  # a continued run: the baseline's figures are saved, its outputs are not
            self.baseline(score=False)
        outputs, figures = self._run(pruned, self.with_map)
        return {**figures, "proxy": _significant(score_change(pruned, self.reference, outputs))}

    def _run(self, graph: Graph, with_map: bool) -> tuple[Outputs, dict]:
        net = to_torch(graph)
        figures: dict = dict.fromkeys(METRICS)
        if with_map:
            recorder = _Recording(net)
            metrics = score(*predict(recorder, self.dataset, batch_size=BATCH), self.names)
            outputs = recorder.outputs
            values = (metrics.mAP50, metrics.mAP50_95, metrics.P, metrics.R)
            figures = {key: _significant(value) for key, value in zip(METRICS, values, strict=True)}
        else:
            outputs = list(_forward(net, self.dataset))
        return outputs, {**figures, "params": graph.params, "bflops": _significant(graph.bflops)}


class _Recording(torch.nn.Module):
    """The network as :func:`predict` calls it, keeping each batch's head outputs for the proxy."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net, self.graph = net, net.graph
        self.outputs: Outputs = []

    def forward(self, x: torch.Tensor, keep: list[int] | None = None) -> list[torch.Tensor]:
        found = self.net(x, keep=keep)
        self.outputs.append([out.float().cpu().numpy() for out in found])
        return found


def _forward(net: torch.nn.Module, dataset: _Prepared) -> Iterator[list[np.ndarray]]:
    with torch.inference_mode():
        for images, _, _ in make_loader(dataset, BATCH):
            yield [out.float().cpu().numpy() for out in net(images)]


def _significant(value: float | None) -> float | None:
    """6 significant digits (NaN → None): resumed and uninterrupted runs write the same text."""
    if value is None or math.isnan(value):
        return None
    return float(f"{value:.6g}")


# -- the proxy -----------------------------------------------------------------------------------------------


def score_change(graph: Graph, reference: Outputs, outputs: Outputs) -> float:
    """``‖p − p₀‖ / ‖p₀‖`` over every image, anchor and class, ``p`` the decoded detection scores of
    ``outputs`` and ``p₀`` those of ``reference`` (0 when both are all zero)."""
    changed = total = 0.0
    for p, p0 in zip(detection_scores(graph, outputs), detection_scores(graph, reference), strict=True):
        changed += float(np.sum((p - p0) ** 2))
        total += float(np.sum(p0**2))
    if total == 0:
        return 0.0 if changed == 0 else math.inf
    return math.sqrt(changed / total)


def detection_scores(graph: Graph, outputs: Outputs) -> Iterator[np.ndarray]:
    """Per image: ``anchors × classes`` objectness × class score, every head decoded as ``detect`` does."""
    heads = head_layers(graph)
    net_hw = (graph.net.height, graph.net.width)
    for batch in outputs:
        for i in range(len(batch[0])):
            yield np.concatenate(
                [decode(head, out[i], net_hw)[:, 5:] for head, out in zip(heads, batch, strict=True)]
            )


# -- rank agreement ------------------------------------------------------------------------------------------


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation: Pearson's correlation of the ranks, ties given their mean rank (NaN when
    either side is constant)."""
    ra, rb = _ranks(a), _ranks(b)
    if len(ra) != len(rb):
        raise ValueError(f"{len(ra)} values against {len(rb)}")
    da, db = ra - ra.mean(), rb - rb.mean()
    norm = math.sqrt(float(np.sum(da * da) * np.sum(db * db)))
    return float(np.sum(da * db) / norm) if norm else math.nan


def _ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks; equal values share the mean of their ranks."""
    x = np.asarray(values, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    _, tie = np.unique(x, return_inverse=True)
    return (np.bincount(tie, weights=ranks) / np.bincount(tie))[tie]


# -- reports -------------------------------------------------------------------------------------------------


def measured(result: dict) -> tuple[str, str]:
    """The figure the reports show, and its label: mAP@0.5, or the proxy in a proxy-only analysis."""
    if result["inputs"]["proxy_only"]:
        return "proxy", "relative change of the detection scores"
    return "map50", "mAP@0.5"


def most_sensitive_first(result: dict) -> list[dict]:
    """The units, the one whose figure is worst on average over the rates first (lowest mAP@0.5, or largest
    proxy); ties in cfg order."""
    key, _ = measured(result)
    sign = 1.0 if key == "proxy" else -1.0

    def badness(entry: dict) -> float:
        values = [r[key] for r in entry["results"] if r[key] is not None]
        return sign * float(np.mean(values)) if values else -math.inf

    return sorted(result["units"], key=badness, reverse=True)


def markdown_table(result: dict) -> str:
    """The units as a Markdown table, most sensitive first (:func:`most_sensitive_first`)."""
    key, label = measured(result)
    rates = result["rates"]
    base = result["baseline"]
    lines = [
        f"# Sensitivity: {result['cfg']}",
        "",
        f"Each unit pruned alone ({result['criterion']} criterion), no fine-tuning, on the first "
        f"{result['images']} images of the valid split of {result['data']}. Baseline: "
        + (
            f"mAP@0.5 {_cell(base['map50'])}, mAP@0.5:0.95 {_cell(base['map50_95'])}, "
            if key == "map50"
            else ""
        )
        + f"{base['params']:,} params, {base['bflops']:.4g} BFLOPs.",
        "",
        f"{label} per rate (share of the unit's channels removed), most sensitive first:",
        "",
        "| unit | channels | " + " | ".join(f"{rate:g}" for rate in rates) + " |",
        "|---|---:|" + "---:|" * len(rates),
    ]
    for entry in most_sensitive_first(result):
        by_rate = {r["rate"]: r[key] for r in entry["results"]}
        cells = [_cell(by_rate.get(rate)) for rate in rates]
        lines.append(f"| {entry['key']} | {entry['channels']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


LABELLED = 5  # the most sensitive units get a colour and a legend entry, the others are grey


def plot_sensitivity(result: dict, path: str | Path) -> Path:
    """The figure per rate, one curve per unit from the baseline (rate 0), the most sensitive labelled
    (PNG, written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key, label = measured(result)
    figure, axes = plt.subplots(figsize=(10, 5), dpi=100)
    ranked = most_sensitive_first(result)
    for entry in ranked[LABELLED:]:
        axes.plot(*_curve(result, entry, key), color="#b0b0b0", linewidth=1)
    for entry in ranked[:LABELLED]:
        axes.plot(
            *_curve(result, entry, key),
            marker="o",
            linewidth=2,
            label=f"{entry['key']} ({entry['channels']})",
        )
    if len(ranked) > LABELLED:
        axes.plot([], [], color="#b0b0b0", linewidth=1, label=f"{len(ranked) - LABELLED} other units")
    axes.set(
        title=f"{Path(result['cfg']).name}: each unit pruned alone, no fine-tuning",
        xlabel="share of the unit's channels removed",
        ylabel=label,
        xticks=[0.0, *result["rates"]],
    )
    axes.grid(alpha=0.3)
    axes.legend(title="most sensitive\nunits (channels)", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    path = Path(path)
    with atomic_output(path, "wb") as out:
        figure.savefig(out, format="png")
    plt.close(figure)
    return path


def _curve(result: dict, entry: dict, key: str) -> tuple[list[float], list[float]]:
    """A unit's points (rate, figure), starting at the baseline (rate 0); unmeasured values left out."""
    points = [(0.0, result["baseline"][key])] + [(r["rate"], r[key]) for r in entry["results"]]
    kept = [(rate, value) for rate, value in points if value is not None]
    return [rate for rate, _ in kept], [value for _, value in kept]
