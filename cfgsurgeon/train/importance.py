"""Data-driven channel importance: which channels the detection loss on *your* images needs.

A COCO-trained model fine-tuned on a few classes keeps many channels whose weights and BN γ are large
(they mattered for COCO) but that these classes never use; weight- and γ-based criteria cannot tell. The
first-order Taylor estimate (Molchanov et al., "Importance Estimation for Neural Network Pruning", 2019, in
its group form) asks the loss instead: pruning a channel leaves its constant bias, which is folded into the
consumers, so the loss changes to first order by −γ·∂L/∂γ (a convolution without batch norm: −Σ w·∂L/∂w over
its filter, the same quantity). The score of a channel is the square of that change, averaged over batches
of training images: in loss units, so scores compare across layers without normalisation.

The model runs in evaluation mode (BN with its running statistics, as the pruned model will) on the first
``images`` of the split, un-augmented and in file order: the same inputs give the same scores.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import layers as L
from ..errors import UsageError
from ..ir import Graph

if TYPE_CHECKING:
    import torch

Progress = Callable[[int, int], None]  # (images done, images in all)


def taylor_importance(
    graph: Graph,
    data: str | Path,
    images: int = 64,
    batch: int = 8,
    split: str = "train",
    progress: Progress | None = None,
) -> dict[int, np.ndarray]:
    """Layer index → the Taylor importance of each output channel (float64), for every convolution."""
    import torch

    from ..emit.torch import DarknetModel
    from .dataset import DetectionDataset, collate
    from .loss import YoloLoss

    if images < 1 or batch < 1:
        raise UsageError(f"`images` and `batch` must be ≥ 1, found {images} and {batch}")
    dataset = DetectionDataset.from_data(data, split, graph, augment=False)
    subset = torch.utils.data.Subset(dataset, range(min(images, len(dataset))))
    loader = torch.utils.data.DataLoader(subset, batch_size=batch, shuffle=False, collate_fn=collate)
    model = DarknetModel(graph).eval()
    loss = YoloLoss(graph)
    convs = [layer.index for layer in graph.layers if isinstance(layer, L.Convolutional)]
    sums = {index: np.zeros(graph.layers[index].out_shape[0]) for index in convs}
    done = batches = 0
    for pictures, targets, _ in loader:
        model.zero_grad(set_to_none=True)
        loss(model(pictures, keep=loss.sources), targets).total.backward()
        for index in convs:
            sums[index] += _first_order_change(model.blocks[index]) ** 2
        done, batches = done + len(pictures), batches + 1
        if progress is not None:
            progress(done, len(subset))
    return {index: total / max(batches, 1) for index, total in sums.items()}


def _first_order_change(block: torch.nn.Module) -> np.ndarray:
    """Per output channel, the loss change to first order when the channel's scale goes to 0 (0 for a
    convolution the loss does not reach, e.g. one feeding no head)."""
    bn = getattr(block, "bn", None)
    scale = bn.weight if bn is not None else block.conv.weight
    if scale.grad is None:
        return np.zeros(scale.shape[0])
    change = scale.detach() * scale.grad
    return change.flatten(1).sum(1).double().numpy() if bn is None else change.double().numpy()


def with_importance(
    graph: Graph,
    criterion: str,
    data: str | Path | None = None,
    images: int = 64,
    known: Mapping[str, Sequence[float]] | None = None,
    progress: Progress | None = None,
) -> Graph:
    """``graph`` ready for ``criterion``: for ``taylor``, a copy carrying importance — ``known`` (as an
    analysis or a plan recorded it) or measured on ``images`` training photos of ``data`` — unless it
    carries some already; any other criterion needs nothing and gets ``graph`` itself."""
    from ..surgery.criteria import attach_importance, importance_of

    if criterion != "taylor":
        return graph
    if known is not None:
        return attach_importance(graph, known)
    if data is not None:
        return attach_importance(graph, taylor_importance(graph, data, images, progress=progress))
    if importance_of(graph) is not None:
        return graph
    raise UsageError("criterion 'taylor' measures importance on training images: give `data`")


def recorded(graph: Graph) -> dict[str, Any]:
    """``{"importance": …}`` for a JSON record when the graph carries importance, else nothing."""
    from ..surgery.criteria import importance_of

    found = importance_of(graph)
    return {} if found is None else {"importance": found}
