"""``sparsify --fine-tune``: the TFMOT schedule runs while the Keras model trains on a darknet dataset.

Data: ``cfgsurgeon.train.dataset.DetectionDataset`` (darknet's .data / image lists / YOLO labels, its
augmentation), read as numpy. Loss: a small TF YOLO loss per [yolo] head, driven by the head's options
(``mask``, ``anchors``, ``classes``, ``new_coords``, ``iou_normalizer``, ``obj_normalizer``,
``cls_normalizer``): each truth is assigned, as darknet does, to the anchor with the best width/height IoU
over all anchors, in the head whose mask holds it, at the cell holding its centre; the terms are squared
errors on the box entries of that anchor (``x, y`` after the head's logistic and ``scale_x_y``; ``w, h`` as
log-ratios to the anchor, or darknet's ``new_coords`` square-root form), binary cross-entropy on every
objectness (1 at assigned anchors, 0 elsewhere; darknet's ``ignore_thresh`` is not applied) and on the
classes of assigned anchors. Batch norm is frozen (its statistics and affine parameters): short
fine-tunes on small batches would otherwise disturb the statistics more than pruning does.

The training loop is TFMOT's custom-loop recipe: ``UpdatePruningStep`` started by hand, the wrappers
counting steps and updating masks inside the ``training=True`` forward pass, masks re-applied after the
last optimizer step. If training stops before ``end_step`` the final masks are applied at ``end_step``
(one-shot from there) and the history says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
import tf_keras as keras

from .. import layers as L
from ..emit import keras as K
from ..errors import UsageError
from ..ir import Graph
from . import magnitude as M
from .selection import Plan

EPS = 1e-7
HEADS = (L.Yolo, L.Region, L.Detection)


@dataclass(frozen=True)
class Head:
    """What the loss needs of one [yolo] layer."""

    index: int
    classes: int
    mask: list[int]
    anchors: np.ndarray  # (num, 2) pixels, all of the layer's anchors
    new_coords: bool
    iou_normalizer: float
    obj_normalizer: float
    cls_normalizer: float

    @classmethod
    def of(cls, layer: L.Yolo) -> Head:
        options = layer.options
        anchors = np.asarray(layer.anchors, dtype=np.float32).reshape(-1, 2)[: layer.num]
        return cls(
            layer.index,
            layer.classes,
            list(layer.mask),
            anchors,
            bool(layer.new_coords),
            float(options.get("iou_normalizer", 0.75)),
            float(options.get("obj_normalizer", 1.0)),
            float(options.get("cls_normalizer", 1.0)),
        )


def heads_of(graph: Graph) -> list[Head]:
    heads = [layer for layer in graph.layers if isinstance(layer, HEADS) and layer.kind != "yolo"]
    if heads:
        raise UsageError(
            f"`fine_tune` supports [yolo] heads only; layer {heads[0].index} is [{heads[0].header}]"
        )
    found = [Head.of(layer) for layer in graph.layers if isinstance(layer, L.Yolo) and layer.kind == "yolo"]
    if not found:
        raise UsageError("`fine_tune` needs a model with [yolo] heads")
    return found


def _wh_iou(wh: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """IoU of boxes and anchors sharing a centre: (truths, anchors)."""
    inter = np.minimum(wh[:, None, 0], anchors[None, :, 0]) * np.minimum(wh[:, None, 1], anchors[None, :, 1])
    return inter / (wh[:, None].prod(-1) + anchors[None].prod(-1) - inter)


def head_targets(head: Head, targets: np.ndarray, batch: int, grid: tuple[int, int], net_wh: tuple[int, int]):
    """Dense targets of one head: assigned (N, A, H, W), box (N, A, 4, H, W), classes (N, A, C, H, W)."""
    gh, gw = grid
    a = len(head.mask)
    assigned = np.zeros((batch, a, gh, gw), np.float32)
    box = np.zeros((batch, a, 4, gh, gw), np.float32)
    classes = np.zeros((batch, a, head.classes, gh, gw), np.float32)
    if len(targets):
        wh = targets[:, 4:6] * np.asarray(net_wh, np.float32)
        best = _wh_iou(wh, head.anchors).argmax(axis=1)
        for (image, cls, cx, cy, _, _), (w, h), n in zip(targets, wh, best, strict=True):
            if n not in head.mask:
                continue
            k = head.mask.index(n)
            i, j = min(int(cx * gw), gw - 1), min(int(cy * gh), gh - 1)
            ratio = np.maximum(np.array([w, h]) / head.anchors[n], EPS)
            size = np.sqrt(ratio) / 2 if head.new_coords else np.log(ratio)
            assigned[int(image), k, j, i] = 1.0
            box[int(image), k, :, j, i] = [cx * gw - i, cy * gh - j, *size]
            classes[int(image), k, int(cls), j, i] = 1.0
    return assigned, box, classes


def _bce(p, target):
    p = tf.clip_by_value(p, EPS, 1.0 - EPS)
    return -(target * tf.math.log(p) + (1.0 - target) * tf.math.log(1.0 - p))


def head_loss(head: Head, output, assigned, box, classes):
    """The loss of one head's output (N, A·(5+C), H, W), after the model's own output activation."""
    n, _, gh, gw = output.shape
    p = tf.reshape(output, (-1, len(head.mask), 5 + head.classes, gh, gw))
    weight = assigned[:, :, None]
    coord = tf.reduce_sum(weight * tf.square(p[:, :, :4] - box))
    objectness = tf.reduce_sum(_bce(p[:, :, 4], assigned))
    cls = tf.reduce_sum(weight * _bce(p[:, :, 5:], classes))
    batch = tf.cast(tf.shape(output)[0], tf.float32)
    return (
        head.iou_normalizer * coord + head.obj_normalizer * objectness + head.cls_normalizer * cls
    ) / batch


def yolo_loss(heads: list[Head], outputs: list, targets: np.ndarray, net_wh: tuple[int, int]):
    batch = int(outputs[0].shape[0])
    total = 0.0
    for head, output in zip(heads, outputs, strict=True):
        dense = head_targets(head, targets, batch, tuple(output.shape[2:]), net_wh)
        total += head_loss(head, output, *dense)
    return total


def _batches(dataset, order: np.ndarray, size: int):
    for start in range(0, len(order), size):
        samples = [dataset.sample(int(i)) for i in order[start : start + size]]
        images = np.stack([image for image, _ in samples]).astype(np.float32)
        rows = [
            np.concatenate([np.full((len(t), 1), k, np.float32), t], axis=1)
            for k, (_, t) in enumerate(samples)
        ]
        yield images, np.concatenate(rows) if rows else np.zeros((0, 6), np.float32)


def _freeze_batch_norm(model: keras.Model) -> None:
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def fine_tune(
    graph: Graph,
    plan: Plan,
    schedule: M.Schedule,
    block: tuple[int, int],
    options,
    note: Callable[[str], None],
) -> dict:
    """Train ``graph``'s model under the pruning schedule; store every layer's weights back into ``graph``.
    Returns the history: loss, mean sparsity of the pruned kernels and the schedule's target per step."""
    from tensorflow_model_optimization.sparsity.keras import UpdatePruningStep

    from ..train.dataset import DetectionDataset

    heads = heads_of(graph)
    dataset = DetectionDataset.from_data(options.data, "train", graph, seed=options.seed)
    if heads[0].classes != _classes(options.data):
        raise UsageError(
            f"{options.data}: {_classes(options.data)} classes, the model's heads {heads[0].classes}"
        )
    model = K.to_keras(graph)
    _freeze_batch_norm(model)
    wrapped = M.wrap(model, graph, plan, schedule, block)
    callback = UpdatePruningStep()
    callback.set_model(wrapped)
    callback.on_train_begin()
    optimizer = keras.optimizers.Adam(options.lr)
    net_wh = (graph.net.width, graph.net.height)
    rng = np.random.default_rng(options.seed)
    steps: list[dict] = []
    for epoch in range(options.epochs):
        dataset.set_epoch(epoch)
        for images, targets in _batches(dataset, rng.permutation(len(dataset)), options.batch_size):
            with tf.GradientTape() as tape:
                outputs = wrapped(images, training=True)
                outputs = outputs if isinstance(outputs, list) else [outputs]
                loss = yolo_loss(heads, outputs, targets, net_wh)
            sparsity = M.kernel_sparsity(wrapped)  # the forward pass has just applied the masks
            variables = wrapped.trainable_variables
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
            step = len(steps) + 1
            steps.append(
                {
                    "step": step,
                    "loss": float(loss),
                    "sparsity": float(np.mean(list(sparsity.values()))),
                    "target": schedule.sparsity_at(step),
                }
            )
            note(f"step {step}: loss {float(loss):.3f}, sparsity {steps[-1]['sparsity']:.3f}")
            if options.max_steps and step >= options.max_steps:
                break
        callback.on_epoch_end(epoch)
        if options.max_steps and len(steps) >= options.max_steps:
            break
    history = {"steps": steps, "finished_schedule": len(steps) >= schedule.end_step}
    if not history["finished_schedule"]:
        note(
            f"training stopped at step {len(steps)} before end step {schedule.end_step}: final masks applied"
        )
        M.prune_at(wrapped, schedule.end_step)
    for wrapper in M.wrappers(wrapped):  # the last optimizer step moved masked weights: mask them again
        wrapper.pruning_obj.weight_mask_op()
    K.store_weights(M.strip(wrapped), graph)
    return history


def _classes(data) -> int:
    from ..train.dataset import read_data_file

    return read_data_file(data).classes
