"""Which units to keep: the channel-pruning strategies users know, as one selection function.

* ``normal``   – global threshold over units that no shortcut ties together;
* ``shortcut`` – the same over every prunable unit (shortcut-coupled groups pruned as one);
* ``slim``     – global threshold, every group keeps at least ``layer_keep`` of its units, shortcut fusion
  (a unit lives if any coupled member scores above the threshold);
* ``regular``  – per group, the kept count rounded up to a multiple of ``round_to`` (or the full width).

Every group keeps at least one unit. The threshold is set by ``percent`` (share of candidate channels to
remove) or given directly; a threshold above the highest one that empties no group is refused unless forced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import UsageError
from .groups import ChannelAnalysis

STRATEGIES = ("normal", "shortcut", "slim", "regular")


@dataclass
class Selection:
    keep_unit: np.ndarray
    threshold: float
    threshold_bound: float  # the highest threshold that leaves every candidate group a unit
    ratio_bound: float  # the share of candidate channels below that bound: the largest safe --percent
    requested_ratio: float | None
    achieved_ratio: float  # share of candidate channels actually removed
    candidate_channels: int


def select(
    analysis: ChannelAnalysis,
    scores: np.ndarray,
    method: str,
    percent: float | None = None,
    threshold: float | None = None,
    layer_keep: float = 0.01,
    round_to: int = 8,
    force: bool = False,
) -> Selection:
    if method not in STRATEGIES:
        raise UsageError(f"unknown method '{method}' (one of: {', '.join(STRATEGIES)})")
    if (percent is None) == (threshold is None):
        raise UsageError("give exactly one of --percent and --threshold")
    groups = [g for g in analysis.groups if method != "normal" or not g.shortcut_coupled]
    if not groups:
        raise UsageError("this model has no channels that this method can prune")
    units = np.concatenate([g.unit_ids for g in groups])
    weight = _channel_counts(analysis, units)
    bound = min(scores[g.unit_ids].max() for g in groups)
    ratio_bound = float(weight[scores[units] < bound].sum() / weight.sum())
    below = np.zeros(len(scores), dtype=bool)  # the global choice, before each group's floor
    if percent is not None:
        if not 0 <= percent < 1:
            raise UsageError(f"--percent must be in [0, 1), found {percent}")
        threshold, chosen = _lowest_share(scores[units], weight, percent)
        below[units[chosen]] = True
        if percent > ratio_bound and not force:
            raise UsageError(
                f"--percent {percent:.3f} would empty a layer: the largest ratio that keeps every layer is "
                f"{ratio_bound:.3f} (threshold {bound:.4g}); use a smaller ratio or --force"
            )
    else:
        if threshold > bound and not force:
            raise UsageError(
                f"--threshold {threshold:.4g} would empty a layer: the highest safe threshold is {bound:.4g} "
                f"(ratio {ratio_bound:.3f}); use a smaller threshold or --force"
            )
        below[units] = scores[units] < threshold
    keep = np.ones(len(scores), dtype=bool)
    for group in groups:
        member = group.unit_ids
        keep[member] = _keep_in_group(scores[member], ~below[member], method, layer_keep, round_to)
    removed = weight[~keep[units]].sum()
    return Selection(
        keep,
        float(threshold),
        float(bound),
        ratio_bound,
        percent,
        float(removed / weight.sum()),
        int(weight.sum()),
    )


def _keep_in_group(
    scores: np.ndarray, chosen: np.ndarray, method: str, layer_keep: float, round_to: int
) -> np.ndarray:
    """Keep what the global choice kept, raised to the group's floor (best scores first)."""
    count = int(chosen.sum())
    floor = math.ceil(layer_keep * len(scores)) if method == "slim" else 1
    count = max(count, floor, 1)
    if method == "regular":
        count = min(len(scores), math.ceil(count / round_to) * round_to)
    if count == chosen.sum():
        return chosen.copy()
    order = np.lexsort((np.arange(len(scores)), -scores, ~chosen))  # chosen first, then best score
    keep = np.zeros(len(scores), dtype=bool)
    keep[order[:count]] = True
    return keep


def _channel_counts(analysis: ChannelAnalysis, units: np.ndarray) -> np.ndarray:
    """How many producer channels each unit stands for (a shortcut unit is one channel of several convs)."""
    channels = [analysis.output_units[producer] for group in analysis.groups for producer in group.producers]
    every = np.concatenate([np.zeros(0, dtype=np.int64), *channels])
    return np.bincount(every, minlength=len(analysis.unit_prunable))[units]


def _lowest_share(values: np.ndarray, weight: np.ndarray, share: float) -> tuple[float, np.ndarray]:
    """Indices of the lowest-scoring units covering ``share`` of the weight (ties broken by position, so a
    block of equal scores, e.g. many γ = 0, can be split), and the score of the first unit kept."""
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weight[order]) / weight.sum()
    count = 0 if share == 0 else int(np.searchsorted(cumulative, share - 1e-12, side="left")) + 1
    threshold = float(values[order[count]]) if count < len(values) else float(np.inf)
    return threshold, order[:count]
