"""Darknet's convolution rules every backend shares (no framework import): which convolution geometries
and xnor layers darknet leaves undefined (refused with the same message by every backend), and how darknet
runs a binary/xnor convolution."""

from __future__ import annotations

from .. import layers as L
from ..errors import CfgError


def check_conv_geometry(layer: L.Convolutional) -> None:
    """Refuse the geometries where darknet's convolution is not a convolution: (1) a dilated conv whose
    im2col output size (which counts the dilation) differs from the layer's out_h × out_w (which does not):
    the GEMM then reads the column buffer with the wrong stride and past what im2col wrote; (2) a 1×1 conv
    with stride_x = 1, which darknet feeds its input directly as the GEMM matrix, so stride_y ≠ 1 or
    padding ≠ 0 scramble (or overrun) the input instead of striding or padding it."""
    _, h, w = layer.in_shape
    sy, sx = (1, 1) if layer.antialiasing else layer.strides
    pad, dil, size = layer.effective_padding, layer.effective_dilation, layer.size
    if dil > 1:
        im2col = (
            (h + 2 * pad * dil - dil * (size - 1) - 1) // sy + 1,
            (w + 2 * pad * dil - dil * (size - 1) - 1) // sx + 1,
        )
        if im2col != layer.conv_output():
            raise CfgError(
                f"layer {layer.index} [{layer.header}] dilation={dil} with padding {pad}: darknet's output "
                f"size {layer.conv_output()} and its im2col size {im2col} disagree (undefined result; "
                "use pad=1)",
                layer.where("dilation"),
            )
    if size == 1 and sx == 1 and dil == 1 and (sy != 1 or pad != 0):
        raise CfgError(
            f"layer {layer.index} [{layer.header}] a 1x1 convolution with stride_x=1 and stride_y={sy}, "
            f"padding={pad}: darknet reads its input as the GEMM matrix unchanged (undefined result)",
            layer.where(),
        )


def is_binary_conv(layer: L.Layer) -> bool:
    return isinstance(layer, L.Convolutional) and bool(layer.xnor or layer.binary)


def xnor_bit_packed(layer: L.Convolutional) -> bool:
    """Whether darknet runs this conv through its bit-packed xnor GEMM (-1 padding, no dilation)."""
    return bool(layer.xnor) and layer.strides[0] == layer.strides[1]


def binary_conv_activation(layer: L.Convolutional) -> str:
    return "linear" if layer.xnor and layer.options.get("bin_output") == "1" else layer.activation


def check_binary_conv(layer: L.Convolutional) -> None:
    """Refuse what darknet's CPU xnor path leaves undefined: its bit-packed GEMM returns before the
    antialiasing blur the layer's output size counts on, and with input channels not a multiple of 32 it
    has code only for 'same' 3×3-like windows at stride 1, padding 1 (else it prints "is no non-optimized
    version" and reads an unwritten buffer)."""
    if not layer.xnor:
        check_conv_geometry(layer)
        return
    if layer.antialiasing:
        raise CfgError(
            f"layer {layer.index} [{layer.header}] xnor=1 with antialiasing: darknet's xnor path skips the "
            "blur (undefined result)",
            layer.where("antialiasing"),
        )
    (c, h, w), (sy, sx) = layer.in_shape, layer.strides
    if sy != sx:
        check_conv_geometry(layer)
        return
    pad = layer.effective_padding
    same = layer.conv_output() == (h, w) and sx == 1 and pad == 1
    if c % 32 and not same:
        raise CfgError(
            f"layer {layer.index} [{layer.header}] xnor=1 with {c} input channels (not a multiple of 32) "
            f"and a {layer.size}x{layer.size}/{sx} window with padding {pad}: darknet's CPU xnor code "
            "handles only stride 1, padding 1, same-size output there (undefined result)",
            layer.where("xnor"),
        )


def check_pool(layer: L.MaxPool) -> None:
    """Pooling with ``antialiasing``: darknet pools at stride 1 and blurs, another output size than ours."""
    if layer.antialiasing:
        raise CfgError(
            f"layer {layer.index} [{layer.header}] antialiasing is not supported", layer.where("antialiasing")
        )


def check_reorg(layer: L.Reorg3d) -> None:
    if layer.reverse:
        raise CfgError(
            f"layer {layer.index} [{layer.header}] reverse=1 is not supported", layer.where("reverse")
        )


def check_region_tree(layer: L.Region) -> None:
    """darknet's tree softmax starts at entry 5 of each box whatever ``coords`` is."""
    if layer.coords != 4:
        raise CfgError(
            f"layer {layer.index} [region] tree= with coords={layer.coords}: darknet applies the tree "
            "at entry 5 of each box whatever coords is (undefined result); use coords=4",
            layer.where("tree"),
        )


def local_padding(layer: L.Local) -> int:
    """The zero padding darknet's forward_local_layer hands im2col: the ``pad`` option's value itself."""
    return layer.pad


def check_local(layer: L.Local) -> None:
    """Refuse a ``[local]`` whose im2col grid (padding ``pad``: ``(h + 2·pad - size)/stride + 1``) differs
    from the layer's output size (``(h - 1)/stride + 1`` with pad): darknet then reads its column buffer with
    the wrong stride, and past its end (undefined result). With pad=1 that holds for size 3 at stride 1."""
    _, h, w = layer.in_shape
    pad, size, stride = local_padding(layer), layer.size, layer.stride
    grid = ((h + 2 * pad - size) // stride + 1, (w + 2 * pad - size) // stride + 1)
    if pad < 0 or grid != layer.local_output():
        raise CfgError(
            f"layer {layer.index} [local] size={size} stride={stride} pad={pad}: darknet's output size "
            f"{layer.local_output()} and its im2col size {grid} disagree (undefined result; use pad=0, or "
            "pad=1 with size=3)",
            layer.where("pad"),
        )
