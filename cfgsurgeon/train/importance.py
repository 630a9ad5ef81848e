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

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .. import layers as L
from ..errors import UsageError
from ..ir import Graph

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
    """Per output channel, the loss change to first order when the channel's scale goes to 0."""
    bn = getattr(block, "bn", None)
    if bn is not None:
        change = bn.weight.detach() * bn.weight.grad
    else:
        conv = block.conv
        change = (conv.weight.detach() * conv.weight.grad).flatten(1).sum(1)
    return change.double().numpy()
