"""The framework-free lowering (``cfgsurgeon.emit.lower``): every layer type has one, every op it produces
has a PyTorch function, and its darknet decisions equal values worked out by hand from darknet's C code
(``maxpool_layer.c``: window origin ``-pad/2``, ``out = (in + pad - size)/stride + 1``;
``convolutional_layer.c``: strides, padding, groups; ``yolo_layer.c`` / ``gaussian_yolo_layer.c``: which
entries get ``activate_array(LOGISTIC)``; ``shortcut_layer.c``: weight normalisation). No torch needed
except for the op-coverage check."""

from __future__ import annotations

import dataclasses
import inspect
import re

import pytest
from conftest import quiet

from cfgsurgeon import CfgError, loads_cfg
from cfgsurgeon import layers as L
from cfgsurgeon.emit import lower as lo
from cfgsurgeon.ir import Graph


def section(name: str, **options: object) -> str:
    return "\n".join([f"[{name}]", *(f"{key}={value}" for key, value in options.items())]) + "\n"


def net(height: int, width: int | None = None, channels: int = 3) -> str:
    return section("net", width=width or height, height=height, channels=channels)


def graph_of(*sections: str) -> Graph:
    return loads_cfg("".join(sections), "lower.cfg", warn=quiet)


def lowered(*sections: str, index: int = -1) -> lo.Lowered:
    graph = graph_of(*sections)
    return lo.lower(graph.layers[index])


def only(result: lo.Lowered, kind: type) -> object:
    found = [op for op in result.ops if isinstance(op, kind)]
    assert len(found) == 1, result.ops
    return found[0]


# -- the registry ------------------------------------------------------------------------------------------
def test_every_layer_type_has_a_lowering() -> None:
    missing = sorted({cls.__name__ for cls in L.LAYER_TYPES.values()} - {cls.__name__ for cls in lo.LOWER})
    assert missing == []


def test_a_type_without_a_lowering_is_refused_not_passed_through(monkeypatch: pytest.MonkeyPatch) -> None:
    graph = graph_of(net(8), section("dropout"))
    monkeypatch.delitem(lo.LOWER, L.Dropout)
    with pytest.raises(CfgError, match=r"lower\.cfg:\d+: layer 0 \[dropout\] has no implementation"):
        lo.lower(graph.layers[0])


def _op_types() -> list[type]:
    return [
        cls
        for _, cls in inspect.getmembers(lo, inspect.isclass)
        if dataclasses.is_dataclass(cls) and cls.__module__ == lo.__name__ and cls is not lo.Lowered
    ]


def test_every_op_has_a_torch_function() -> None:
    torch_ops = pytest.importorskip("cfgsurgeon.emit.torch_ops")
    handled = {*torch_ops.FUNCTIONS, *lo.MODULE_OPS, lo.Act}
    assert [cls.__name__ for cls in _op_types() if cls not in handled] == []
    assert set(torch_ops.ACTIVATIONS) == set(L.ACTIVATIONS)


def test_ops_are_frozen_values() -> None:
    for cls in _op_types():
        assert cls.__dataclass_params__.frozen, cls.__name__  # type: ignore[attr-defined]


# -- pooling: darknet's window origin and output size --------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "hw", "pads", "out_hw", "stride"),
    [
        # padding = size-1 = 2; out = (7+2-3)//2+1 = 4; origin -1: windows -1..1, 1..3, 3..5, 5..7 -> pad 1, 1
        ({"size": 3, "stride": 2}, (7, 7), (1, 1, 1, 1), (4, 4), (2, 2)),
        # padding = 1; out = (7+1-2)//2+1 = 4; origin 0: windows 0..1 .. 6..7 -> nothing before, 1 after
        ({"size": 2, "stride": 2}, (7, 7), (0, 1, 0, 1), (4, 4), (2, 2)),
        # even size, no remainder: out = (8+1-2)//2+1 = 4, last window 6..7 -> no padding at all
        ({"size": 2, "stride": 2}, (8, 8), (0, 0, 0, 0), (4, 4), (2, 2)),
        # stride 1 'same' pooling of YOLOv3-tiny: padding 1, out 13, last window 12..13 -> 1 after
        ({"size": 2, "stride": 1}, (13, 13), (0, 1, 0, 1), (13, 13), (1, 1)),
        # stride_x != stride_y on 8x8: out_h = (8+1-2)//2+1 = 4, out_w = (8+1-2)//1+1 = 8; last column 7..8
        ({"size": 2, "stride_x": 1, "stride_y": 2}, (8, 8), (0, 0, 0, 1), (4, 8), (2, 1)),
        # explicit padding=0 on 7x7, size 3 stride 2: out = (7-3)//2+1 = 3, windows 0..2 .. 4..6 -> none
        ({"size": 3, "stride": 2, "padding": 0}, (7, 7), (0, 0, 0, 0), (3, 3), (2, 2)),
        # odd padding=3, size 5 stride 3 on 9x11: origin -1; out_h = (9+3-5)//3+1 = 3 (last rows 5..9 -> 1
        # after), out_w = (11+3-5)//3+1 = 4 (last columns 8..12 -> 2 after)
        ({"size": 5, "stride": 3, "padding": 3}, (9, 11), (1, 1, 1, 2), (3, 4), (3, 3)),
    ],
    ids=["3s2-odd", "2s2-odd", "2s2-even", "2s1-same", "sx1-sy2", "pad0", "pad3-5s3"],
)
@pytest.mark.parametrize("kind", ["maxpool", "local_avgpool"])
def test_pool_windows(kind: str, options: dict, hw: tuple, pads: tuple, out_hw: tuple, stride: tuple) -> None:
    op = only(
        lowered(net(*hw), section(kind, **options)), lo.MaxPool if kind == "maxpool" else lo.LocalAvgPool
    )
    assert (op.pads, op.out_hw, op.stride) == (pads, out_hw, stride)  # type: ignore[attr-defined]


def test_maxpool_depth() -> None:
    result = lowered(net(4, channels=10), section("maxpool", maxpool_depth=1, out_channels=3))
    assert result.ops == (lo.MaxPoolDepth(3),)


# -- convolutions ----------------------------------------------------------------------------------------
def conv(**options: object) -> str:
    return section("convolutional", **{"filters": 8, "size": 3, "pad": 1, "activation": "leaky", **options})


@pytest.mark.parametrize(
    ("input_hw", "options", "stride", "padding", "dilation", "groups"),
    [
        ((8, 8), {}, (1, 1), (1, 1), 1, 1),
        ((8, 8), {"stride_x": 2, "stride_y": 1}, (1, 2), (1, 1), 1, 1),  # stride (y, x)
        ((8, 8), {"stride": 2, "stride_y": 3}, (3, 2), (1, 1), 1, 1),  # stride_y overrides stride for y only
        ((8, 8), {"groups": 4}, (1, 1), (1, 1), 1, 4),
        ((8, 8), {"groups": 8, "filters": 8}, (1, 1), (1, 1), 1, 8),  # depthwise
        ((8, 8), {"dilation": 2}, (1, 1), (2, 2), 2, 1),  # darknet pads pad*dilation
        ((8, 8), {"size": 1, "pad": 0, "dilation": 2}, (1, 1), (0, 0), 1, 1),  # a 1x1 ignores dilation
        ((8, 8), {"pad": 0, "padding": 2, "size": 5}, (1, 1), (2, 2), 1, 1),  # pad=0: padding= counts
        ((8, 8), {"size": 5}, (1, 1), (2, 2), 1, 1),  # pad=1: size/2
    ],
    ids=["plain", "sx2-sy1", "stride_y", "grouped", "depthwise", "dilated", "1x1-dilation", "padding", "5x5"],
)
def test_conv_geometry(
    input_hw: tuple, options: dict, stride: tuple, padding: tuple, dilation: int, groups: int
):
    op = only(lowered(net(*input_hw, channels=8), conv(**options)), lo.Conv2d)
    assert (op.stride, op.padding, op.dilation, op.groups) == (stride, padding, dilation, groups)  # type: ignore


def test_conv_with_batch_norm_binds_darknet_tensors() -> None:
    result = lowered(net(8), conv(batch_normalize=1, activation="mish"))
    conv_op, bn, act = result.ops
    assert conv_op == lo.Conv2d(3, 8, 3, (1, 1), (1, 1), 1, 1, bias=False)
    assert bn == lo.BatchNorm(8, eps=1e-5) and act == lo.Act("mish")
    assert result.params == {
        "biases": "bn.bias",
        "scales": "bn.weight",
        "rolling_mean": "bn.running_mean",
        "rolling_variance": "bn.running_var",
        "weights": "conv.weight",
    }


def test_linear_conv_has_no_activation_and_a_bias() -> None:
    result = lowered(net(8), conv(activation="linear"))
    assert result.ops == (lo.Conv2d(3, 8, 3, (1, 1), (1, 1), 1, 1, bias=True),)
    assert result.params == {"biases": "conv.bias", "weights": "conv.weight"}


def test_antialiased_conv_runs_at_stride_one_then_blurs_at_the_stride() -> None:
    result = lowered(net(8), conv(stride=2, antialiasing=1))
    assert only(result, lo.Conv2d).stride == (1, 1)  # type: ignore[attr-defined]
    assert result.ops[-1] == lo.Blur(8, 1, (2, 2))


def test_xnor_conv() -> None:
    sections = [net(8, channels=32), section("convolutional", filters=32, size=3, pad=1, activation="linear")]
    bit_packed = lowered(*sections, conv(filters=16, xnor=1, batch_normalize=1, bin_output=1, groups=2))
    (op,) = bit_packed.ops  # bin_output=1: linear, no Act
    assert op.xnor and op.minus_one_pad == 1 and op.bn == lo.BatchNorm(16)
    assert (op.conv.padding, op.conv.dilation, op.conv.groups) == ((0, 0), 1, 1)  # xnor: groups ignored
    float_path = lowered(*sections, conv(filters=16, xnor=1, stride_x=2, stride_y=1))
    op = float_path.ops[0]
    assert op.minus_one_pad is None and op.conv.padding == (1, 1) and float_path.ops[1] == lo.Act("leaky")
    binary = lowered(*sections, conv(filters=16, binary=1))
    assert not binary.ops[0].xnor and binary.ops[0].bn is None


def test_share_index_keeps_its_geometry_and_stores_no_tensors() -> None:
    result = lowered(net(8), conv(batch_normalize=1), conv(batch_normalize=1, stride=2, share_index=0))
    assert result.shares == 0 and result.params == {}
    assert only(result, lo.Conv2d).stride == (2, 2)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ((net(8), section("convolutional", filters=4, size=3, pad=0, padding=0, dilation=2)), "im2col size"),
        ((net(8), conv(size=1, pad=0, stride_x=1, stride_y=2)), "a 1x1 convolution with stride_x=1"),
        ((net(8, channels=4), conv(xnor=1, size=1, pad=0)), "not a multiple of 32"),
        ((net(8), section("maxpool", size=2, stride=2, antialiasing=1)), "antialiasing is not supported"),
        ((net(8, channels=4), section("reorg3d", stride=2, reverse=1)), "reverse=1 is not supported"),
        ((net(8), section("local", size=5, pad=1)), r"output size \(8, 8\) and its im2col size \(6, 6\)"),
    ],
    ids=["dilation", "1x1-stride-y", "xnor-channels", "pool-antialiasing", "reorg-reverse", "local-5x5-pad"],
)
def test_refusals_name_the_cfg_line(sections: tuple, message: str) -> None:
    graph = graph_of(*sections)
    with pytest.raises(CfgError, match=message) as error:
        lo.lower(graph.layers[-1])
    assert re.fullmatch(rf"lower\.cfg:\d+: layer {len(graph.layers) - 1} \[\w+\] [^\n]+", str(error.value))


# -- shortcut weights ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "shape", "normalization"),
    [
        ({}, None, "none"),
        ({"weights_type": "per_feature"}, (2, 1), "none"),
        ({"weights_type": "per_layer", "weights_normalization": "relu"}, (2, 1), "relu"),
        (
            {"weights_type": "per_feature", "weights_normalization": "avg_relu"},
            (2, 1),
            "relu",
        ),  # darknet: same
        ({"weights_type": "per_channel", "weights_normalization": "softmax"}, (2, 8), "softmax"),
        ({"weights_normalization": "softmax"}, None, "none"),  # nothing to normalise without weights
    ],
    ids=["none", "per_feature", "per_layer-relu", "avg_relu", "per_channel-softmax", "no-weights-softmax"],
)
def test_shortcut_weights(options: dict, shape: tuple | None, normalization: str) -> None:
    result = lowered(net(8), conv(), conv(), section("shortcut", **{"from": -2, **options}))
    op = result.ops[0]
    assert isinstance(op, lo.WeightedSum) and result.join == 0 and op.normalization == normalization
    assert (op.weights.shape if op.weights else None) == shape
    assert result.params == ({"weights": "weight"} if shape else {})
    if op.weights:
        assert op.weights.value == 1.0  # darknet's fill before a .weights file is read


# -- routing, scaling, crop ------------------------------------------------------------------------------
def test_route_slices_each_input_then_joins() -> None:
    result = lowered(net(8), conv(), conv(), section("route", layers="-1,-2", groups=2, group_id=1))
    assert result.ops == (lo.Slice(2, 1), lo.Concat()) and result.join == 1
    assert lowered(net(8), conv(), section("route", layers=-1)).ops == ()  # one input: passed on


def test_scale_channels_and_sam() -> None:
    sections = [net(8), conv(), section("avgpool"), conv(size=1, pad=0, activation="logistic")]
    assert lowered(*sections, section("scale_channels", **{"from": -3})).ops == (lo.Scale(False),)
    per_pixel = section("scale_channels", **{"from": -2, "scale_wh": 1})
    assert lowered(net(8), conv(), conv(filters=1), per_pixel).ops == (lo.Scale(True),)
    assert lowered(net(8), conv(), conv(), section("sam", **{"from": -2})).ops == (lo.Scale(False),)


def test_crop_is_centred() -> None:
    op = only(lowered(net(7), section("crop", crop_height=4, crop_width=2)), lo.Crop)
    assert op == lo.Crop(top=1, left=2, height=4, width=2, adjust=True)  # (7-4)//2, (7-2)//2
    assert lowered(net(7), section("crop", crop_height=4, crop_width=2, noadjust=1)).ops[0].adjust is False


# -- heads -----------------------------------------------------------------------------------------------
def head(kind: str, channels: int, **options: object) -> tuple[str, ...]:
    return (
        net(8),
        conv(filters=channels, size=1, pad=0),
        section(kind, mask="0,1", num=2, classes=2, **options),
    )


def test_yolo_squashes_all_but_w_and_h() -> None:
    op = lowered(*head("yolo", 14, scale_x_y=1.05)).ops[0]
    assert op == lo.HeadAct(anchors=2, entries=7, logistic=((0, 2), (4, 7)), scaled=(0, 1), scale_x_y=1.05)


def test_yolo_new_coords_squashes_nothing() -> None:
    op = lowered(*head("yolo", 14, new_coords=1, scale_x_y=2.0)).ops[0]
    assert (op.logistic, op.scaled, op.scale_x_y) == ((), (0, 1), 2.0)


def test_gaussian_yolo_squashes_all_but_w_and_h_of_its_entries() -> None:
    op = lowered(*head("Gaussian_yolo", 22)).ops[0]  # x sx y sy w sw h sh obj c0 c1
    assert isinstance(op, lo.GaussianHeadAct)
    assert (op.entries, op.logistic, op.scaled) == (11, ((0, 4), (5, 6), (7, 11)), (0, 2))


def test_region_and_detection() -> None:
    sections = (net(8), conv(filters=18, size=1, pad=0))
    region = lowered(*sections, section("region", num=2, coords=4, classes=4, softmax=1)).ops
    assert region == (lo.RegionAct(anchors=2, coords=4, classes=4, softmax=True, tree=None),)
    detection = section("detection", classes=3, side=2, softmax=1)
    assert lowered(*sections, detection).ops == (lo.DetectionSoftmax(classes=3, side=2),)
    assert lowered(*sections, section("detection")).ops == ()


def test_region_tree_with_other_coords_is_refused(tmp_path) -> None:
    (tmp_path / "t.tree").write_text("a -1\nb -1\nc -1\nd -1\n")
    text = (
        net(8)
        + conv(filters=16, size=1, pad=0)
        + section("region", num=2, coords=3, classes=4, tree="t.tree")
    )
    graph = loads_cfg(text, str(tmp_path / "t.cfg"), warn=quiet)
    with pytest.raises(CfgError, match="coords=3"):
        lo.lower(graph.layers[-1])


# -- the rest --------------------------------------------------------------------------------------------
def test_connected_flattens_and_unflattens() -> None:
    result = lowered(net(2), section("connected", output=5, batch_normalize=1, activation="relu"))
    assert result.ops == (
        lo.Flatten(),
        lo.Linear(12, 5, bias=False),
        lo.BatchNorm(5, spatial=False),
        lo.Act("relu"),
        lo.Unflatten(),
    )
    assert result.params["weights"] == "fc.weight" and result.params["biases"] == "bn.bias"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (section("upsample", stride=-2, scale=0.5), lo.Upsample(-2, 0.5)),
        (section("reorg", stride=2), lo.Reorg(2, (12, 4, 4), old=True)),
        (section("reorg3d", stride=2), lo.Reorg(2, (12, 4, 4), old=False)),
        (section("lrn", size=3, alpha=0.5, beta=0.25, kappa=2), lo.LRN(3, 0.5, 0.25, 2.0)),
        (section("softmax", groups=3, temperature=2), lo.Softmax(3, 2.0)),
        (section("avgpool"), lo.GlobalAvgPool()),
        (section("activation", activation="swish"), lo.Act("swish")),
    ],
    ids=["upsample", "reorg", "reorg3d", "lrn", "softmax", "avgpool", "activation"],
)
def test_one_op_layers(text: str, expected: object) -> None:
    assert lowered(net(8), text).ops == (expected,)


def test_local_binds_one_filter_bank_and_bias_per_output_position() -> None:
    # 4x7x9 input, size 3, stride 2, pad 1: out (7 - 1)//2 + 1 = 4 by (9 - 1)//2 + 1 = 5; im2col pads by pad=1
    result = lowered(
        net(7, 9, channels=4), section("local", filters=5, size=3, stride=2, pad=1, activation="leaky")
    )
    weights = lo.Parameter((4, 5, 5, 4, 3, 3), 0.0, "weights")
    biases = lo.Parameter((5, 4, 5), 0.0, "biases", slot="bias")
    assert result.ops == (lo.LocallyConnected(weights, biases, size=3, stride=2, padding=1), lo.Act("leaky"))
    assert result.params == {"biases": "bias", "weights": "weight"}
    assert [op.slot for op in result.modules()] == ["weight", "bias"]


def test_implicit_and_batchnorm_bind_their_tensors() -> None:
    implicit = lowered(net(8), section("implicit", filters=6, atoms=2))
    assert implicit.ops == (lo.Implicit(lo.Parameter((12,), 0.0, "implicit"), (6, 2, 1)),)
    assert implicit.params == {"weights": "weight"}
    assert lowered(net(8), section("batchnorm")).ops == (lo.BatchNorm(3),)


@pytest.mark.parametrize("kind", ["dropout", "empty", "cost"])
def test_inference_identities(kind: str) -> None:
    assert lowered(net(8), section(kind)).ops == ()
