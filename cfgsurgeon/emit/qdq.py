"""A quantization-aware-trained model → ONNX QDQ with the scales it learned (``train --qat`` writes it).

The float export (:func:`cfgsurgeon.emit.onnx.onnx_bytes`, batch norm folded into each ``Conv``) gets, around
every quantized convolution, what ONNX Runtime's own ``quantize_static`` writes in QDQ format: the input
through ``QuantizeLinear``/``DequantizeLinear`` (uint8, per tensor), the weights as an int8 initializer
through ``DequantizeLinear`` (a scale per output channel), the bias as int32 on the grid input scale × weight
scale, and the output through a ``QuantizeLinear``/``DequantizeLinear`` pair. ONNX Runtime fuses each of these
into an int8 ``QLinearConv``; OpenVINO reads the pairs as ``FakeQuantize`` and runs int8 convolutions.
Activations of fewer than 8 bits (DoReFa) are clipped to their codes' range before ``QuantizeLinear``, which
would otherwise saturate at 0 and 255 only.

What each convolution holds comes from :class:`cfgsurgeon.train.qat.ConvQuantization` (numpy only here).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..files import atomic_output
from ..ir import Graph


def conv_node(layer: int) -> str:
    """The name of layer ``layer``'s convolution in the float export (the torch module path)."""
    return f"/blocks.{layer}/conv/Conv"


def qdq_onnx_bytes(graph: Graph, convs: Sequence[Any]) -> bytes:
    """The QDQ model of ``graph`` (float weights loaded) with the integer convolutions ``convs``."""
    import onnx

    from .onnx import onnx_bytes

    model = onnx.load_from_string(onnx_bytes(graph))
    by_name = {conv_node(conv.layer): conv for conv in convs}
    nodes, replaced = [], set()
    for node in model.graph.node:
        conv = by_name.get(node.name)
        if conv is None:
            nodes.append(node)
            continue
        replaced.update(node.input[1:])  # the float weights and bias
        before, after, initializers = _quantized_conv(onnx, node, conv)
        nodes += [*before, node, *after]
        model.graph.initializer.extend(initializers)
    missing = set(by_name) - {node.name for node in nodes}
    if missing:
        raise ValueError(f"the float export has no convolution named {sorted(missing)[0]}")
    kept = [init for init in model.graph.initializer if init.name not in replaced]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_qdq_onnx(graph: Graph, convs: Sequence[Any], path: str | Path) -> None:
    data = qdq_onnx_bytes(graph, convs)
    with atomic_output(path) as out:
        out.write(data)


def _quantized_conv(onnx, node, conv) -> tuple[list, list, list]:
    """(nodes before the conv, nodes after it, new initializers); ``node``'s inputs and output are rewired."""
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    name = node.name
    channels = conv.weight_scales.shape[0]
    tensors = {
        "in_scale": np.float32(conv.input_scale),
        "in_zero": np.uint8(conv.input_zero),
        "w": conv.weights.astype(np.int8),
        "w_scale": conv.weight_scales.astype(np.float32),
        "w_zero": np.zeros(channels, np.int8),
        "b": conv.bias.astype(np.int32),
        "b_scale": (np.float32(conv.input_scale) * conv.weight_scales).astype(np.float32),
        "b_zero": np.zeros(channels, np.int32),
        "out_scale": np.float32(conv.output_scale),
        "out_zero": np.uint8(conv.output_zero),
    }
    initializers = [numpy_helper.from_array(np.asarray(v), f"{name}/{k}") for k, v in tensors.items()]
    before = _quantize_pair(onnx, node.input[0], f"{name}/input", f"{name}/in", conv, initializers)
    before += [
        helper.make_node(
            "DequantizeLinear",
            [f"{name}/w", f"{name}/w_scale", f"{name}/w_zero"],
            [f"{name}/w_dq"],
            f"{name}/w_DequantizeLinear",
            axis=0,
        ),
        helper.make_node(
            "DequantizeLinear",
            [f"{name}/b", f"{name}/b_scale", f"{name}/b_zero"],
            [f"{name}/b_dq"],
            f"{name}/b_DequantizeLinear",
            axis=0,
        ),
    ]
    output = node.output[0]
    float_output = f"{name}/float_output"
    del node.input[:]
    node.input.extend([f"{name}/input", f"{name}/w_dq", f"{name}/b_dq"])
    node.output[0] = float_output
    after = _quantize_pair(onnx, float_output, output, f"{name}/out", conv, initializers, clip_after=True)
    return before, after, initializers


def _quantize_pair(
    onnx, source: str, target: str, prefix: str, conv, initializers: list, clip_after: bool = False
) -> list:
    """``source`` → QuantizeLinear → DequantizeLinear → ``target`` on the grid of ``prefix``'s scale and zero
    point. Codes fewer than 256 (DoReFa) get a Clip to their range: before QuantizeLinear, or after
    DequantizeLinear with ``clip_after`` (a convolution's output: ONNX Runtime fuses a Conv into QLinearConv
    only when a QuantizeLinear reads it directly). Both clip what the fake quantization clamps."""
    helper = onnx.helper
    clipped = conv.levels < 255
    quantized = f"{prefix}_clipped" if clipped and not clip_after else source
    output = f"{prefix}_dequantized" if clipped and clip_after else target
    nodes = [
        helper.make_node(
            "QuantizeLinear", [quantized, f"{prefix}_scale", f"{prefix}_zero"], [f"{prefix}_q"], f"{prefix}_Q"
        ),
        helper.make_node(
            "DequantizeLinear", [f"{prefix}_q", f"{prefix}_scale", f"{prefix}_zero"], [output], f"{prefix}_DQ"
        ),
    ]
    if not clipped:
        return nodes
    scale, zero = (conv.output_scale, conv.output_zero) if clip_after else (conv.input_scale, conv.input_zero)
    bounds = [f"{prefix}_low", f"{prefix}_high"]
    for name, code in zip(bounds, (0, conv.levels), strict=True):
        initializers.append(onnx.numpy_helper.from_array(np.asarray(np.float32((code - zero) * scale)), name))
    if clip_after:
        return [*nodes, helper.make_node("Clip", [output, *bounds], [target], f"{prefix}_Clip")]
    return [helper.make_node("Clip", [source, *bounds], [quantized], f"{prefix}_Clip"), *nodes]
