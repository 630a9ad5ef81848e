"""Sparse training (network slimming): an L1 penalty ``s·|γ|`` on batch-norm scales, applied as ``s·sign(γ)``
added to the γ gradients once per optimizer step (after unscaling under mixed precision), and the |γ| plots.

Scope — which BN layers are penalised — follows the pruning strategy that will be used afterwards
(:mod:`cfgsurgeon.surgery.select`), computed from the same channel analysis (:func:`surgery.groups.analyse`):

* ``normal``: the channels ``prune --method normal`` may remove: prunable groups that no shortcut ties
  together (layers feeding a residual sum keep their full γ, as they will keep their channels);
* ``shortcut`` and ``slim``: every prunable group, shortcut-coupled ones included (both strategies prune
  them);
* ``all``: every batch-normalised layer, prunable or not.

A channel is penalised when its unit belongs to one of those groups, so a conv split between groups is
penalised only where it may be pruned. Schedules (those of the yolov3 channel-pruning archive):

* ``constant``: ``s`` throughout;
* ``global-decay``: ``s`` until ``decay_start`` of the run, then ``s·decay_factor``;
* ``local-decay``: from ``decay_start`` on, the ``protect`` share of penalised channels with the largest |γ|
  (the ones pruning will keep; chosen again at every epoch) get ``s·decay_factor``, the others keep ``s``;
* ``layer-decay``: as ``local-decay``, but the ``protect`` share is taken within each layer, so the penalty
  thins every layer instead of driving a layer whose γ are all small (a whole layer) to zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .. import layers as L
from ..errors import UsageError
from ..ir import Graph
from ..surgery.groups import analyse
from .options import SPARSITY_SCHEDULES as SCHEDULES
from .options import SPARSITY_SCOPES as SCOPES

SMALL_GAMMA = 0.01  # the |γ| below which a channel counts as driven to zero in reports


def penalised_channels(graph: Graph, scope: str) -> dict[int, np.ndarray]:
    """Layer index → boolean mask of its BN channels that the penalty reaches under ``scope``."""
    if scope not in SCOPES:
        raise UsageError(f"unknown sparsity scope '{scope}' (one of: {', '.join(SCOPES)})")
    if scope == "all":
        return {
            layer.index: np.ones(_bn_width(layer), dtype=bool)
            for layer in graph.layers
            if _bn_width(layer) and not _shares(layer)
        }
    analysis = analyse(graph)
    masks: dict[int, np.ndarray] = {}
    for group in analysis.groups:
        if scope == "normal" and group.shortcut_coupled:
            continue
        _, producers, channels = group.member_channels
        for producer, channel in zip(producers.tolist(), channels.tolist(), strict=True):
            mask = masks.setdefault(producer, np.zeros(graph.layers[producer].out_shape[0], dtype=bool))
            mask[channel] = True
    return dict(sorted(masks.items()))


def _bn_width(layer: L.Layer) -> int:
    if isinstance(layer, L.Convolutional | L.Connected) and layer.batch_normalize:
        return layer.out_shape[0]
    return layer.out_shape[0] if isinstance(layer, L.BatchNorm) else 0


def _shares(layer: L.Layer) -> bool:
    return isinstance(layer, L.Convolutional) and layer.shares is not None


def batchnorm_of(model: nn.Module, index: int) -> nn.modules.batchnorm._BatchNorm:
    """The BN module of layer ``index`` in a :class:`~cfgsurgeon.emit.torch.DarknetModel`."""
    return model.blocks[index].bn  # type: ignore[index, union-attr, return-value]


@dataclass
class Schedule:
    strength: float
    kind: str = "constant"
    decay_start: float = 0.5  # share of the run after which the decay applies
    decay_factor: float = 0.01
    protect: float = 0.3  # local-decay: share of penalised channels (largest |γ|) whose penalty decays

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise UsageError(f"unknown sparsity schedule '{self.kind}' (one of: {', '.join(SCHEDULES)})")
        if self.strength < 0:
            raise UsageError(f"--sparsity must be ≥ 0, found {self.strength}")


class SparsityPenalty:
    """Adds ``s·sign(γ)`` (per channel, per the schedule) to the penalised γ gradients of ``model``."""

    def __init__(self, model: nn.Module, graph: Graph, scope: str, schedule: Schedule):
        self.schedule = schedule
        self.scope = scope
        self.targets = [
            (batchnorm_of(model, index), torch.as_tensor(mask))
            for index, mask in penalised_channels(graph, scope).items()
        ]
        self.protected: list[Tensor] | None = None

    def gammas(self) -> np.ndarray:
        """|γ| of every penalised channel (float64, concatenated in layer order)."""
        parts = [bn.weight.detach().abs().cpu()[mask].double().numpy() for bn, mask in self.targets]
        return np.concatenate(parts) if parts else np.zeros(0)

    def start_epoch(self, progress: float) -> None:
        """Local/layer decay: choose the protected channels again (the ``protect`` share with largest |γ|,
        over all penalised channels or within each layer)."""
        kind = self.schedule.kind
        if kind not in ("local-decay", "layer-decay") or progress < self.schedule.decay_start:
            self.protected = None
            return
        if not len(self.gammas()):
            return
        share = 1 - self.schedule.protect
        threshold = np.quantile(self.gammas(), share) if kind == "local-decay" else None
        self.protected = []
        for bn, mask in self.targets:
            gamma = bn.weight.detach().abs().cpu()
            limit = threshold if threshold is not None else np.quantile(gamma[mask].double().numpy(), share)
            self.protected.append(gamma >= limit)

    def apply(self, progress: float) -> None:
        """Call after backward (and after ``GradScaler.unscale_``), before ``optimizer.step()``."""
        schedule = self.schedule
        if schedule.strength == 0:
            return
        decayed = progress >= schedule.decay_start
        for k, (bn, mask) in enumerate(self.targets):
            gamma = bn.weight
            s = torch.full_like(gamma, schedule.strength)
            if schedule.kind == "global-decay" and decayed:
                s *= schedule.decay_factor
            if self.protected is not None:
                s[self.protected[k].to(s.device)] *= schedule.decay_factor
            s *= mask.to(s.device)
            if gamma.grad is None:
                gamma.grad = torch.zeros_like(gamma)
            gamma.grad.add_(s * torch.sign(gamma.detach()))


class ChannelFade:
    """Prune-aware training: the BN γ of chosen channels (``channels``: layer index → channel indices, e.g.
    :meth:`~cfgsurgeon.surgery.plan.Planner.removed_channels` of a plan) shrink linearly to 0 over the run.

    Each such channel then outputs its activated BN bias, a constant that pruning folds into the consumers
    exactly (but at zero-padded borders), while the rest of the network learns to do without it — so the
    plan's prune right after the run costs (almost) nothing, instead of the whole loss at once.
    """

    def __init__(self, model: nn.Module, graph: Graph, channels: dict[int, list[int]]):
        self.targets: list[tuple[nn.Module, Tensor]] = []
        for index, chosen in sorted(channels.items()):
            width = _bn_width(graph.layers[index]) if 0 <= index < len(graph.layers) else 0
            if not width or _shares(graph.layers[index]):
                raise UsageError(f"fade: layer {index} has no batch-normalised channels of its own")
            if chosen and not all(0 <= c < width for c in chosen):
                raise UsageError(f"fade: layer {index} has {width} channels, asked to fade {max(chosen)}")
            self.targets.append((batchnorm_of(model, index), torch.as_tensor(chosen, dtype=torch.long)))

    @property
    def channels(self) -> int:
        return sum(len(chosen) for _, chosen in self.targets)

    def apply(self, step: int, total: int) -> None:
        """After optimizer step ``step`` (0-based) of ``total``: the faded γ × (total−step−1)/(total−step), a
        linear fade (training aside, (total−step−1)/total of their size), exactly 0 after the last step."""
        if not self.targets or step >= total:
            return
        factor = (total - step - 1) / (total - step)
        with torch.no_grad():
            for bn, chosen in self.targets:
                bn.weight[chosen.to(bn.weight.device)] *= factor


def fraction_small(values: np.ndarray, limit: float = SMALL_GAMMA) -> float:
    return float((np.abs(values) < limit).mean()) if len(values) else 0.0


def slim_gammas(graph: Graph) -> np.ndarray:
    """|γ| of the BN channels that ``slim`` may remove (those sparse training penalises)."""
    masks = penalised_channels(graph, "slim")
    parts = [np.abs(graph.layers[index].weights["scales"][mask]) for index, mask in masks.items()]
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)


def safe_slim_ratio(graph: Graph, limit: float = SMALL_GAMMA) -> float:
    """The share of slim's candidate channels with |γ| below ``limit``, capped at the largest ratio that
    leaves every layer a channel: what ``prune --method slim`` can remove at no predicted cost."""
    from ..surgery.prune import prune

    bound = prune(graph, "slim", percent=0.0).selection.ratio_bound
    return min(fraction_small(slim_gammas(graph), limit), bound)


def plot_gamma_histogram(values: np.ndarray, path: str | Path, title: str) -> Path:
    """A PNG histogram of |γ| (written atomically), with the share below :data:`SMALL_GAMMA` in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..files import atomic_output

    path = Path(path)
    figure, axes = plt.subplots(figsize=(6, 3.5), dpi=100)
    top = max(float(np.max(values)) if len(values) else 1.0, 1e-3)
    axes.hist(values, bins=80, range=(0.0, top), color="#3b6ea8")
    axes.set_xlabel("|γ| of penalised BN channels")
    axes.set_ylabel("channels")
    axes.set_title(
        f"{title}: {len(values)} channels, {100 * fraction_small(values):.1f}% below {SMALL_GAMMA}"
    )
    figure.tight_layout()
    with atomic_output(path) as out:
        figure.savefig(out, format="png")
    plt.close(figure)
    return path
