"""Magnitude pruning of the Keras model with TF Model Optimization (TFMOT), written back through the IR.

The planned layers are wrapped with ``prune_low_magnitude`` under a ``PolynomialDecay`` schedule
(initial → final sparsity between ``begin_step`` and ``end_step``, masks recomputed every ``frequency``
steps). Fine-tuning runs the schedule step by step (``UpdatePruningStep``); without data the wrappers'
own mask update is evaluated once at ``end_step``, which is one-shot magnitude pruning to the final
sparsity (with no weight updates between steps, every earlier mask is a subset of that one). Then
``strip_pruning`` removes the wrappers and ``store_weights`` copies the kernels back into the IR.

Block sparsity: TFMOT pools the magnitudes of a 2-D weight over ``block_size`` windows and masks whole
windows, but refuses weights of other ranks, i.e. every convolution. :class:`TapConv2D` is a ``Conv2D``
whose kernel variable is stored as the 2-D matrix ``(kh·kw·in) × out`` (row ``(ky·kw + kx)·in + i``), so
with ``in`` a multiple of the block height each block is ``rows × cols`` (input × output channels) of a
single tap: the same orientation as a ``Dense`` kernel ``(in × out)``, whose blocks TFMOT handles natively.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot  # sets TF_USE_LEGACY_KERAS=1 (tf_keras) as a side effect
import tf_keras as keras
from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import PruneLowMagnitude

from ..emit import keras as K
from ..errors import UsageError
from ..ir import Graph
from .selection import Plan


@dataclass(frozen=True)
class Schedule:
    """TFMOT's PolynomialDecay, with a final step on which the final sparsity is applied."""

    final_sparsity: float = 0.5
    initial_sparsity: float = 0.0
    begin_step: int = 0
    end_step: int = 1000
    frequency: int = 100
    power: float = 3.0

    def check(self) -> None:
        if not 0.0 <= self.initial_sparsity <= self.final_sparsity < 1.0:
            raise UsageError(
                f"need 0 <= initial sparsity ({self.initial_sparsity}) <= final sparsity "
                f"({self.final_sparsity}) < 1"
            )
        if self.begin_step < 0 or self.end_step <= self.begin_step or self.frequency < 1:
            raise UsageError(
                f"need 0 <= begin step ({self.begin_step}) < end step ({self.end_step}) and frequency >= 1"
            )
        if (self.end_step - self.begin_step) % self.frequency:
            raise UsageError(
                f"end step - begin step ({self.end_step - self.begin_step}) must be a multiple of the "
                f"frequency ({self.frequency}), so that the final sparsity is applied at the end step"
            )

    def tfmot(self) -> tfmot.sparsity.keras.PruningSchedule:
        return tfmot.sparsity.keras.PolynomialDecay(
            initial_sparsity=self.initial_sparsity,
            final_sparsity=self.final_sparsity,
            begin_step=self.begin_step,
            end_step=self.end_step,
            power=self.power,
            frequency=self.frequency,
        )

    def sparsity_at(self, step: int) -> float:
        """The schedule's target at ``step`` (TFMOT's own formula)."""
        return float(self.tfmot()(tf.constant(step, tf.int64))[1])


@K._register
class TapConv2D(keras.layers.Conv2D):
    """A ``Conv2D`` whose kernel variable is the 2-D matrix ``(kh·kw·in) × out``; ``kernel`` is its 4-D view.
    TFMOT prunes the 2-D variable (``get_prunable_weights``), so block sizes apply to convolutions."""

    def add_weight(self, name=None, shape=None, **kwargs):
        if name == "kernel":
            self._kernel_shape = tuple(shape)
            kh, kw, cin, cout = shape
            name, shape = "kernel_taps", (kh * kw * cin, cout)
        return super().add_weight(name=name, shape=shape, **kwargs)

    @property
    def kernel(self):
        return tf.reshape(self.taps, self._kernel_shape)

    @kernel.setter
    def kernel(self, variable) -> None:
        self.taps = variable

    def get_prunable_weights(self) -> list:
        return [self.taps]

    @classmethod
    def like(cls, conv: keras.layers.Conv2D) -> TapConv2D:
        """A copy of ``conv`` (same config and weights) in this form."""
        tap = cls.from_config(conv.get_config())
        tap.build(conv.input_shape)
        tap.taps.assign(tf.reshape(conv.kernel, tap.taps.shape))
        if conv.use_bias:
            tap.bias.assign(conv.bias)
        return tap


def keras_name(graph: Graph, index: int) -> str:
    """The Keras layer holding layer ``index``'s kernel (``l12_conv``, ``l3_fc``)."""
    return f"l{index}_{'fc' if graph.layers[index].kind == 'connected' else 'conv'}"


def wrap(model: keras.Model, graph: Graph, plan: Plan, schedule: Schedule, block: tuple[int, int]):
    """The model with the planned layers wrapped by ``prune_low_magnitude`` (other layers shared)."""
    names = {keras_name(graph, index) for index in plan.pruned}
    present = {layer.name for layer in model.layers}
    missing = sorted(names - present)
    if missing:
        raise UsageError(f"layers {missing} are not part of the Keras model (no output depends on them)")
    params = {"pruning_schedule": schedule.tfmot(), "block_size": block}

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if layer.name not in names:
            return layer
        if block != (1, 1) and type(layer) is keras.layers.Conv2D:
            layer = TapConv2D.like(layer)
        return tfmot.sparsity.keras.prune_low_magnitude(layer, **params)

    return keras.models.clone_model(model, clone_function=clone)


def wrappers(model: keras.Model) -> list:
    return [layer for layer in model.layers if isinstance(layer, PruneLowMagnitude)]


def prune_at(model: keras.Model, step: int) -> None:
    """Evaluate every wrapper's scheduled mask update at ``step`` and apply the masks (no data needed)."""
    for wrapper in wrappers(model):
        wrapper.pruning_step.assign(step)
        wrapper.pruning_obj.conditional_mask_update()
        wrapper.pruning_obj.weight_mask_op()


def strip(model: keras.Model) -> keras.Model:
    return tfmot.sparsity.keras.strip_pruning(model)


def one_shot(graph: Graph, plan: Plan, schedule: Schedule, block: tuple[int, int] = (1, 1)) -> None:
    """Prune ``graph``'s weights in place to the schedule's final sparsity, without data."""
    schedule.check()
    wrapped = wrap(K.to_keras(graph), graph, plan, schedule, block)
    prune_at(wrapped, schedule.end_step)
    store(strip(wrapped), graph, plan)


def store(model: keras.Model, graph: Graph, plan: Plan) -> None:
    """Copy the pruned kernels back into the IR (only the pruned layers: the others are byte-untouched)."""
    pruned = graph.clone()
    K.store_weights(model, pruned)
    for index in plan.pruned:
        graph.layers[index].weights = pruned.layers[index].weights


def kernel_sparsity(model: keras.Model) -> dict[str, float]:
    """Share of zeros in each wrapped kernel (for the schedule checks)."""
    found = {}
    for wrapper in wrappers(model):
        for weight in wrapper.layer.get_prunable_weights():
            found[wrapper.layer.name] = float(np.mean(weight.numpy() == 0))
    return found
