"""Which units to keep: the channel-pruning strategies users know, as one selection function.

* ``normal``   – global threshold over units that no shortcut ties together;
* ``shortcut`` – the same over every prunable unit (shortcut-coupled groups pruned as one);
* ``slim``     – global threshold, every layer keeps at least ``layer_keep`` of its channels, shortcut fusion
  (a unit lives if any coupled member scores above the threshold);
* ``regular``  – ``shortcut`` with widths rounded (``round_to`` 8 unless given).

Every strategy takes a width policy, ``round_to``: an integer N (widths multiples of N) or ``"pow2"`` (powers
of two); a width may always stay full. Kept counts are rounded up per group, then every convolution's width
made acceptable as a whole (:func:`round_widths`).

The threshold is set by ``percent`` (share of candidate channels to remove) or given directly; a threshold
above the highest one that empties no layer is refused unless forced.

The guard is about layers, not groups. A group (units with the same producer convs) may be a *part* of a
conv: a shortcut whose narrower operand couples only the first channels of the wider one leaves the rest of
the wider conv a group of its own. Removing that whole group leaves the conv the coupled channels, which is
valid, so it is allowed. What must never happen is a layer (any layer: a conv, a route, a shortcut, …) with
no channels left; every emptied group that breaks something does so by emptying some layer, because all the
other structural constraints (grouped routes and convs, depthwise convs, reorg blocks) are built into the
units themselves. So every layer whose channels are all candidates keeps its best unit.

Widths are counted per conv, never per group: a conv split between groups is one conv, counted once in the
candidate channels and rounded as a whole by ``regular``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import UsageError
from .groups import ChannelAnalysis, Group

STRATEGIES = ("normal", "shortcut", "slim", "regular")
POW2 = "pow2"

Accept = Callable[[np.ndarray], np.ndarray]  # candidate widths of a layer → which of them are acceptable
RoundTo = int | str  # widths a multiple of this, or POW2: powers of two (a full width is always allowed)


@dataclass
class Selection:
    keep_unit: np.ndarray
    threshold: float
    threshold_bound: float  # the highest threshold that leaves every layer a channel
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
    round_to: RoundTo = 1,
    force: bool = False,
) -> Selection:
    if method not in STRATEGIES:
        raise UsageError(f"unknown method '{method}' (one of: {', '.join(STRATEGIES)})")
    check_round_to(round_to)
    if (percent is None) == (threshold is None):
        raise UsageError("give exactly one of --percent and --threshold")
    groups = [g for g in analysis.groups if method != "normal" or not g.shortcut_coupled]
    if not groups:
        raise UsageError("this model has no channels that this method can prune")
    units = np.concatenate([g.unit_ids for g in groups])
    producers = producer_layers(groups)
    weight = _channel_counts(analysis, producers, units)
    bound = _threshold_bound(analysis, scores, units)
    ratio_bound = float(weight[scores[units] < bound].sum() / weight.sum())
    below = np.zeros(len(scores), dtype=bool)  # the global choice, before the floors
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
    keep = ~below  # units outside the candidates (fixed, or left alone by 'normal') always stay
    if method == "slim":
        spaces = [analysis.output_units[p] for p in producers]
        floors = np.ceil(layer_keep * np.array([len(space) for space in spaces])).astype(np.int64)
        for k in np.flatnonzero(channel_widths(keep, spaces) < floors):
            _grow(keep, spaces[k], scores, _at_least(int(floors[k])))
    keep_every_layer(keep, scores, analysis)
    round_widths(keep, scores, analysis, groups, round_to)
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


def producer_layers(groups: list[Group]) -> list[int]:
    """The convs that produce the groups' channels, each once (a conv may lie in several groups)."""
    return sorted({p for group in groups for p in group.producers})


def _channel_counts(analysis: ChannelAnalysis, producers: list[int], units: np.ndarray) -> np.ndarray:
    """How many producer channels each unit stands for (a shortcut unit is one channel of several convs)."""
    channels = [analysis.output_units[p] for p in producers]
    every = np.concatenate([np.zeros(0, dtype=np.int64), *channels])
    return np.bincount(every, minlength=len(analysis.unit_prunable))[units]


def _threshold_bound(analysis: ChannelAnalysis, scores: np.ndarray, units: np.ndarray) -> float:
    """The lowest, over layers whose channels are all candidates, of the layer's best unit score: below it,
    every layer keeps a channel."""
    spaces = [u for u in analysis.output_units if len(u)]
    starts = np.cumsum([0] + [len(u) for u in spaces[:-1]])
    flat = np.concatenate(spaces)
    candidate = np.zeros(len(scores), dtype=bool)
    candidate[units] = True
    whole = np.logical_and.reduceat(candidate[flat], starts)  # every channel a candidate
    best = np.maximum.reduceat(scores[flat], starts)[whole]
    return float(best.min()) if len(best) else float(np.inf)


def _at_least(count: int) -> Accept:
    return lambda widths: widths >= count


def check_round_to(round_to: RoundTo) -> None:
    if round_to != POW2 and not (isinstance(round_to, int) and round_to >= 1):
        raise UsageError(f"round_to must be a positive integer or '{POW2}', found {round_to!r}")


def _acceptable_widths(round_to: RoundTo, full: int) -> Accept:
    if round_to == POW2:
        return lambda widths: (((widths & (widths - 1)) == 0) | (widths == full)) & (widths > 0)
    return lambda widths: ((widths % round_to == 0) | (widths == full)) & (widths > 0)


def _rounded_up(count: int, size: int, round_to: RoundTo) -> int:
    """The smallest acceptable count not below ``count`` (at most ``size``)."""
    if count == 0:
        return 0
    rounded = 1 << (count - 1).bit_length() if round_to == POW2 else math.ceil(count / round_to) * round_to
    return min(size, rounded)


def _grow(keep: np.ndarray, channel_units: np.ndarray, scores: np.ndarray, accept: Accept) -> bool:
    """Keep the layer's best removed units (a unit may be several of its channels) until its width is
    acceptable; ``keep`` is updated in place. Returns whether anything was added."""
    width = int(keep[channel_units].sum())
    if accept(np.array([width]))[0]:
        return False
    removed, counts = np.unique(channel_units[~keep[channel_units]], return_counts=True)
    order = _best_first(removed, scores)
    widths = width + np.cumsum(counts[order])
    enough = np.flatnonzero(accept(widths))
    take = int(enough[0]) + 1 if len(enough) else len(order)  # all of them: the full width
    keep[removed[order[:take]]] = True
    return True


def _best_first(units: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Order of ``units`` (ascending ids) by score, best first, ties by position."""
    return np.lexsort((units, -scores[units]))


def keep_every_layer(
    keep: np.ndarray, scores: np.ndarray, analysis: ChannelAnalysis, layers: Spaces | None = None
) -> bool:
    """Every layer keeps a channel (see the module's docstring). Returns whether anything was added.
    ``layers``: ``Spaces(analysis.output_units)``, if the caller keeps one (it is reused across calls)."""
    layers = layers or Spaces(analysis.output_units)
    empty = np.flatnonzero(layers.widths(keep) == 0)
    for k in empty:  # _grow looks again: keeping a unit for one layer may fill another
        _grow(keep, analysis.output_units[k], scores, _at_least(1))
    return len(empty) > 0


class Spaces:
    """Channel spaces (arrays of unit ids, e.g. every layer's output units) laid out once, so that their
    kept widths under many ``keep`` masks cost one pass each."""

    def __init__(self, spaces: list[np.ndarray]):
        lengths = np.array([len(space) for space in spaces], dtype=np.int64)
        self.flat = np.concatenate([np.zeros(0, dtype=np.int64), *spaces])
        self.ends = np.cumsum(lengths)
        self.starts = self.ends - lengths

    def widths(self, keep: np.ndarray) -> np.ndarray:
        kept = np.concatenate([[0], np.cumsum(keep[self.flat], dtype=np.int64)])
        return kept[self.ends] - kept[self.starts]


def channel_widths(keep: np.ndarray, spaces: list[np.ndarray]) -> np.ndarray:
    """Kept channels of each channel space (a layer's output units), all at once."""
    return Spaces(spaces).widths(keep)


def round_widths(
    keep: np.ndarray, scores: np.ndarray, analysis: ChannelAnalysis, groups: list[Group], round_to: RoundTo
) -> None:
    """Apply the width policy to ``keep`` (in place) by keeping more units, best first: group counts, then
    every producer's width as a whole. ``round_to`` 1 changes nothing."""
    if round_to != 1:
        _round_groups(keep, scores, groups, round_to)
        _round_layers(keep, scores, analysis, groups, round_to)


def _round_groups(keep: np.ndarray, scores: np.ndarray, groups: list[Group], round_to: RoundTo) -> None:
    """Each group's kept count rounded up to an acceptable count (or its size): then a conv wholly in one
    group, and whatever reads a slice of it (grouped routes), is acceptable already."""
    for group in groups:
        member = group.unit_ids
        kept = int(keep[member].sum())
        target = _rounded_up(kept, len(member), round_to)
        if target > kept:
            removed = member[~keep[member]]
            keep[removed[_best_first(removed, scores)[: target - kept]]] = True


def _round_layers(
    keep: np.ndarray, scores: np.ndarray, analysis: ChannelAnalysis, groups: list[Group], round_to: RoundTo
) -> None:
    """Every producer's width acceptable (e.g. a multiple of ``round_to``) or full, the conv rounded as a
    whole: a conv split between groups is the sum of rounded counts (8 + 4 = 12). Its own channels (a group
    no other conv produces) are set first, to the nearest count that makes the width acceptable, up if
    possible, else down (8 + 0); failing that, more of its units are kept, which may change a conv sharing
    one of its groups, so repeat until nothing changes. Own channels are settled once per conv and everything
    else only ever adds units, so this ends, at worst at full widths."""
    own = np.zeros(len(scores), dtype=bool)
    for group in groups:
        own[group.unit_ids] = len(group.producers) == 1
    producers = producer_layers(groups)
    spaces = [analysis.output_units[p] for p in producers]
    full = np.array([len(space) for space in spaces])
    settled: set[int] = set()
    changed = True
    while changed:
        changed = False
        widths = channel_widths(keep, spaces)
        for k in np.flatnonzero(~_acceptable_widths(round_to, full)(widths)):
            units, accept = spaces[k], _acceptable_widths(round_to, int(full[k]))
            if accept(np.array([keep[units].sum()]))[0]:  # settled by an earlier conv of this pass
                continue
            if k not in settled:
                settled.add(k)
                if _settle_own(keep, units[own[units]], int(keep[units[~own[units]]].sum()), scores, accept):
                    changed = True
                    continue
            changed |= _grow(keep, units, scores, accept)
        changed |= keep_every_layer(keep, scores, analysis)


def _settle_own(
    keep: np.ndarray, own_channels: np.ndarray, others: int, scores: np.ndarray, accept: Accept
) -> bool:
    """Keep the best j own units, j the smallest count not below the current one that makes the width
    (``others`` + own channels kept) acceptable, else the largest below it. False if no count does."""
    units, counts = np.unique(own_channels, return_counts=True)
    order = _best_first(units, scores)
    widths = others + np.concatenate([[0], np.cumsum(counts[order])])
    ok = np.flatnonzero(accept(widths))
    current = int(keep[units].sum())
    if not len(ok):
        return False
    up = ok[ok >= current]
    j = int(up[0]) if len(up) else int(ok[-1])
    keep[units[order[:j]]] = True
    keep[units[order[j:]]] = False
    return True


def _lowest_share(values: np.ndarray, weight: np.ndarray, share: float) -> tuple[float, np.ndarray]:
    """Indices of the lowest-scoring units covering ``share`` of the weight (ties broken by position, so a
    block of equal scores, e.g. many γ = 0, can be split), and the score of the first unit kept."""
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weight[order]) / weight.sum()
    count = 0 if share == 0 else int(np.searchsorted(cumulative, share - 1e-12, side="left")) + 1
    threshold = float(values[order[count]]) if count < len(values) else float(np.inf)
    return threshold, order[:count]
