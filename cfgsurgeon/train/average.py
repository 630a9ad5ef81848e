"""An exponential moving average of the weights, for evaluating and writing a steadier model than the last
step's: on a few hundred images the weights after any one step carry that step's batch noise, and validation
mAP jumps by several points from epoch to epoch.

After update ``t`` the average moves towards the model by ``1 − d_t``, where ``d_t = min(decay, (1 + t) /
(10 + t))``: the first updates follow the model closely, so the average does not stay anchored to the
starting weights, and later ones average over about ``1 / (1 − decay)`` steps. BN running statistics are
averaged the same way (they belong to the weights they were measured with); integer buffers are copied.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import UsageError


class WeightAverage:
    def __init__(self, model: nn.Module, decay: float, updates: int = 0):
        if not 0 < decay < 1:
            raise UsageError(f"`ema` is the decay of the weights' moving average, in (0, 1): found {decay}")
        self.model = copy.deepcopy(model).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.decay, self.updates = decay, updates

    def factor(self) -> float:
        """The share of the average kept at the next update."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        kept = self.factor()
        self.updates += 1
        theirs = model.state_dict()
        for name, mine in self.model.state_dict().items():
            if mine.dtype.is_floating_point:
                mine.mul_(kept).add_(theirs[name].detach(), alpha=1 - kept)
            else:
                mine.copy_(theirs[name])
