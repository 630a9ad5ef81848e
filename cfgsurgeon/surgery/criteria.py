"""Importance criteria: a score per output channel of every prunable convolution, and per unit (the scores of
a unit's coupled channels aggregated — the maximum, so a unit survives if any member is worth keeping: the
'union of masks' that shortcut fusion asks for)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .. import layers as L
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


CRITERIA: dict[str, ChannelScore] = {
    "bn-gamma": _gamma,
    "l1": _l1,
    "l2": _l2,
    "bn-gamma-l1": _gamma_l1,
    "random": _random,
}


def unit_scores(analysis: ChannelAnalysis, criterion: str = "bn-gamma", seed: int = 0) -> np.ndarray:
    """Score of every unit (``-inf`` for units that cannot be pruned)."""
    score_channels = CRITERIA[criterion]
    rng = np.random.default_rng(seed)
    scores = np.full(len(analysis.unit_prunable), -np.inf)
    for producer in dict.fromkeys(p for group in analysis.groups for p in group.producers):  # each conv once
        layer = analysis.graph.layers[producer]
        units = analysis.output_units[producer]
        np.maximum.at(scores, units, score_channels(layer, rng))
    scores[~analysis.unit_prunable] = -np.inf
    return scores
