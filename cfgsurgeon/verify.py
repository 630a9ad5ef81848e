"""The check `prune` runs before it writes anything: does the compact model compute what the original computes
with the removed parts switched off? Both run in numpy (:mod:`.emit.numpy_ops`, no framework to import) on
one random image at the smallest input size every layer of the cfg accepts, and their outputs are compared.

The reference is the original graph itself, run with hooks instead of a copy: each removed channel's batch
norm γ is 0 (the channel outputs its constant act(β)), and each removed residual unit passes its input on.
Pruning folds a removed channel's constant into its consumers as if it reached every tap, which zero padding
breaks at the borders (reported apart, as ``border_layers``); the reference therefore pads a removed channel
with its own constant, so that every correct pruning matches it up to float32 rounding, at any input size,
while a wrong channel, tensor or edge shows at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import layers as L
from .emit import numpy_ops
from .emit.heads import head_layers
from .errors import CfgError, CfgSurgeonError
from .ir import Graph
from .surgery.groups import is_prunable_producer
from .surgery.prune import PruneResult

TOLERANCE = 1e-4  # of the largest output; correct prunings stay near float32 rounding (~1e-6)


class VerificationFailed(CfgSurgeonError):
    """The pruned model does not compute what the original does with the removed parts switched off."""


@dataclass(frozen=True)
class Verification:
    """``error``: the pruned model's largest deviation from the reference, relative to the reference's largest
    output (None when skipped); ``input_shape``: the (C, H, W) it ran at; ``skipped``: why nothing ran."""

    error: float | None
    input_shape: tuple[int, int, int] | None = None
    skipped: str | None = None


def verify_prune(result: PruneResult, seed: int = 0) -> Verification:
    """Run the check; raises :class:`VerificationFailed` when the error exceeds :data:`TOLERANCE`."""
    missing = numpy_ops.unsupported(result.original)
    if missing is not None:
        return Verification(None, skipped=f"verification skipped: {missing} has no numpy implementation")
    size = smallest_input(result.original)
    original, pruned = at_size(result.original, size), at_size(result.pruned, size)
    x = np.random.default_rng(seed).random(original.input_shape, dtype=np.float32)
    reference = numpy_ops.run(original, x, _heads(original), _reference_hooks(result, original))
    ours = numpy_ops.run(pruned, x, _heads(pruned))
    error = max(_relative(a, b) for a, b in zip(ours, reference, strict=True))
    if not error <= TOLERANCE:
        raise VerificationFailed(
            f"verification failed: the pruned model's outputs differ from the original's with the removed "
            f"parts switched off by {error:.3g} of the largest output (more than {TOLERANCE:g}); nothing "
            "was written"
        )
    return Verification(error, original.input_shape)


def smallest_input(graph: Graph) -> tuple[int, int]:
    """The smallest (height, width), same aspect as the cfg's, that every layer accepts (strides, routes
    and shortcuts joining equal sizes, upsampling back to them); the cfg's own size when none smaller does."""
    _, height, width = graph.input_shape
    trial = graph.clone()
    longest = max(height, width)
    for side in range(1, longest + 1):
        size = (max(1, round(height * side / longest)), max(1, round(width * side / longest)))
        trial.net.options.update(height=str(size[0]), width=str(size[1]))
        try:
            trial.infer()
        except CfgError:
            continue
        return size
    return height, width


def at_size(graph: Graph, size: tuple[int, int]) -> Graph:
    """The same layers and tensors (shared, not copied) at input height × width ``size``."""
    if graph.input_shape[1:] == size:
        return graph
    resized = graph.clone()
    resized.net.options.update(height=str(size[0]), width=str(size[1]))
    resized.infer()
    return resized


def _heads(graph: Graph) -> list[int]:
    return [layer.index for layer in head_layers(graph)]


def _relative(ours: np.ndarray, reference: np.ndarray) -> float:
    if ours.shape != reference.shape:
        return float("inf")
    scale = max(float(np.abs(reference).max()), 1e-12)
    return float(np.abs(ours - reference).max()) / scale


def _reference_hooks(result: PruneResult, original: Graph) -> numpy_ops.Hooks:
    """The original with the removed channels' γ = 0 (padded with their constant) and removed units
    bypassed; channels are matched to the analysed graph by cfg line."""
    analysis = result.analysis
    channel_graph = analysis.graph if analysis is not None else result.pruned
    twin = {(layer.line, layer.kind): layer.index for layer in channel_graph.layers}
    removed: dict[int, np.ndarray] = {}  # original layer index → removed output channels
    bypass: set[int] = set()
    keep = None if analysis is None else result.keep_unit | ~analysis.unit_prunable
    for layer in original.layers:
        index = twin.get((layer.line, layer.kind))
        if index is None:
            bypass.add(layer.index)
        elif analysis is not None:
            gone = ~keep[analysis.output_units[index]]
            if gone.any():
                removed[layer.index] = gone
    pad: dict[int, np.ndarray] = {}  # layer index → padding value per output channel

    def tensors(layer: L.Layer) -> dict[str, np.ndarray] | None:
        if layer.index not in removed or not is_prunable_producer(layer) or layer.weights is None:
            return layer.weights
        scales = np.array(layer.weights["scales"], dtype=np.float32)
        scales[removed[layer.index]] = 0
        return {**layer.weights, "scales": scales}

    def seen(index: int, output: np.ndarray) -> None:
        if index in bypass:
            source = original.index_of(original.layers[index].inputs[0])
            if source in pad:
                pad[index] = pad[source]
        elif index in removed:
            pad[index] = np.where(removed[index], output[:, 0, 0], 0).astype(np.float32)

    def pad_value(layer: L.Layer) -> np.ndarray | None:
        return pad.get(original.index_of(layer.inputs[0]))

    return numpy_ops.Hooks(tensors=tensors, pad_value=pad_value, bypass=bypass, seen=seen)
