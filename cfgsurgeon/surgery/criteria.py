"""Importance criteria: a score per output channel of every prunable convolution, and per unit (the scores of
a unit's coupled channels aggregated — the maximum, so a unit survives if any member is worth keeping: the
'union of masks' that shortcut fusion asks for).

Normalisation (``normalize``), so that one global ratio means the same for every criterion. The filter norms
(l1, l2, bn-gamma-l1) grow with a layer's fan-in (channels × k²) and with its weight scale, so their raw
values differ by orders of magnitude between layers: a global threshold empties the cheapest-scoring layer
long before it reaches the others, and the safe ratio bound is about 0.05. ``"mean"`` divides each conv's
channel scores by their mean over that conv: a score then says how much a channel is worth *relative to its
layer's average channel*, which is scale-free, keeps the spread within the layer (unlike ``"max"``, where
one outlier squeezes every other channel of its layer towards 0), and does not depend on the layer's width
(unlike dividing by the L2 norm of the scores, which grows as √width). A global percent then removes the
channels that are weakest relative to their own layer, everywhere. ``"max"`` (best channel = 1) is offered
for comparison.

BN γ stay raw by default: after sparse training (slim) the same L1 penalty has pushed every layer's γ on one
scale, and a global γ threshold is what darknet pruning users mean by slim; normalising would undo that.
``"auto"`` is therefore ``"none"`` for bn-gamma and random, ``"mean"`` for the filter norms.

``taylor`` is the one criterion that looks at data: each channel's first-order loss change on training
images (:mod:`cfgsurgeon.train.importance` measures it; :func:`attach_importance` hands it to the graph). It
is in loss units, the same in every layer, so it stays raw too. On a COCO model fine-tuned to four classes
it finds the channels those classes do not use, which γ and weight norms cannot: at half the BFLOPs, without
fine-tuning, its plan kept valid mAP@0.5 0.40 where bn-gamma's kept 0.00 (README, "Deciding where to prune").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from .. import layers as L
from ..errors import UsageError
from ..ir import Graph
from .groups import ChannelAnalysis

ChannelScore = Callable[[L.Convolutional, np.random.Generator], np.ndarray]


def _gamma(layer: L.Convolutional, rng: np.random.Generator) -> np.ndarray:
    return np.abs(np.asarray(layer.weights["scales"], dtype=np.float64))


def _l1(layer: L.Convolutional, rng: np.random.Generator) -> np.ndarray:
    w = np.asarray(layer.weights["weights"], dtype=np.float64)
    return np.abs(w).reshape(len(w), -1).sum(axis=1)


def _l2(layer: L.Convolutional, rng: np.random.Generator) -> np.ndarray:
    w = np.asarray(layer.weights["weights"], dtype=np.float64)
    return np.sqrt((w * w).reshape(len(w), -1).sum(axis=1))


def _gamma_l1(layer: L.Convolutional, rng: np.random.Generator) -> np.ndarray:
    return _gamma(layer, rng) * _l1(layer, rng)


def _random(layer: L.Convolutional, rng: np.random.Generator) -> np.ndarray:
    return rng.random(layer.filters)


def _taylor(layer: L.Convolutional, rng: np.random.Generator) -> np.ndarray:
    scores = getattr(layer, "importance", None)
    if scores is None or len(scores) != layer.out_shape[0]:
        raise UsageError(
            f"criterion 'taylor' needs importance measured on training images for layer {layer.index} "
            "(cfgsurgeon.train.importance; give `data`)"
        )
    return scores


def attach_importance(graph: Graph, scores: Mapping[int | str, Sequence[float]]) -> Graph:
    """A copy of ``graph`` whose convolutions carry ``scores`` (layer index → importance per output channel,
    as :func:`cfgsurgeon.train.importance.taylor_importance` measures them or a JSON file holds them), which
    the ``taylor`` criterion reads."""
    scored = graph.clone()
    for index, values in scores.items():
        layer = scored.layers[int(index)]
        if len(values) != layer.out_shape[0]:
            raise UsageError(
                f"importance of layer {index} has {len(values)} values for its {layer.out_shape[0]} channels"
            )
        layer.importance = np.asarray(values, dtype=np.float64)
    return scored


def importance_of(graph: Graph) -> dict[str, list[float]] | None:
    """The importance the layers carry, JSON-ready (layer index as text → scores), or None without any."""
    found = {
        str(layer.index): [float(value) for value in layer.importance]
        for layer in graph.layers
        if getattr(layer, "importance", None) is not None
    }
    return found or None


CRITERIA: dict[str, ChannelScore] = {
    "bn-gamma": _gamma,
    "l1": _l1,
    "l2": _l2,
    "bn-gamma-l1": _gamma_l1,
    "random": _random,
    "taylor": _taylor,
}


NORMALIZERS = ("auto", "none", "mean", "max")
_RAW_BY_DEFAULT = ("bn-gamma", "random", "taylor")


def normalizer(criterion: str, normalize: str = "auto") -> str:
    """The normalisation ``normalize`` stands for with ``criterion`` (``"auto"`` resolved)."""
    if normalize not in NORMALIZERS:
        raise UsageError(f"unknown normalize '{normalize}' (one of: {', '.join(NORMALIZERS)})")
    if normalize == "auto":
        return "none" if criterion in _RAW_BY_DEFAULT else "mean"
    return normalize


def _per_layer(scores: np.ndarray, normalize: str) -> np.ndarray:
    if normalize == "none" or not len(scores):
        return scores
    scale = scores.mean() if normalize == "mean" else scores.max()
    return scores / scale if scale > 0 else scores  # an all-zero layer stays all zero


def unit_scores(
    analysis: ChannelAnalysis, criterion: str = "bn-gamma", seed: int = 0, normalize: str = "auto"
) -> np.ndarray:
    """Score of every unit (``-inf`` for units that cannot be pruned); ``normalize``: see the module."""
    score_channels = CRITERIA[criterion]
    how = normalizer(criterion, normalize)
    rng = np.random.default_rng(seed)
    scores = np.full(len(analysis.unit_prunable), -np.inf)
    for producer in dict.fromkeys(p for group in analysis.groups for p in group.producers):  # each conv once
        layer = analysis.graph.layers[producer]
        units = analysis.output_units[producer]
        np.maximum.at(scores, units, _per_layer(score_channels(layer, rng), how))
    scores[~analysis.unit_prunable] = -np.inf
    return scores
