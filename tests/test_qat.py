"""Quantization-aware training (``train --qat``): the QDQ ONNX model a run writes is what ONNX Runtime and
OpenVINO execute as int8 (read from the runtimes: ONNX Runtime's optimised graph, OpenVINO's runtime
precision per convolution), and both runtimes compute what the fake-quantized torch model computes, within one
quantization step of each output; power-of-two scales and DoReFa's levels read from the file's initializers
and from the int8 codes ONNX Runtime produces; one-line refusals; same seed → the same bytes, also resumed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import nano_config, quiet

from cfgsurgeon import Model
from cfgsurgeon.cli import main
from cfgsurgeon.convert import save_checkpoint
from cfgsurgeon.errors import UsageError
from cfgsurgeon.int8 import calibration_images, network_batch
from cfgsurgeon.train.qat import quantized_model
from cfgsurgeon.train.trainer import train

QAT_RUN = dict(qat_calibration=2)  # nano: 8 images, batch 4, 2 steps an epoch


class Run(NamedTuple):
    output: Path
    onnx: Path
    data: Path


def _trained(nano, out: Path, **overrides) -> Run:
    result = train(nano_config(nano, out, **QAT_RUN, **overrides), log=quiet)
    assert result.int8 == out / f"{nano[0].stem}_int8.onnx"
    return Run(out, result.int8, nano[1])


@pytest.fixture(scope="module")
def int8_run(nano, tmp_path_factory) -> Run:
    return _trained(nano, tmp_path_factory.mktemp("qat_int8"), qat="int8")


@pytest.fixture(scope="module")
def dorefa_run(nano, tmp_path_factory) -> Run:
    cfg, data = nano
    out = tmp_path_factory.mktemp("qat_dorefa")
    trained = Model.load(cfg).train(
        data, out, epochs=1, batch=4, warmup=0, lr=0.005, lr_policy="constant", qat="dorefa", qat_bits=4,
        qat_calibration=2,
    )  # fmt: skip
    assert trained.int8 == out / f"{cfg.stem}_int8.onnx" and str(trained).endswith(
        f"int8 model {trained.int8}"
    )
    return Run(out, trained.int8, data)


@pytest.fixture(scope="module")
def pow2_run(nano, tmp_path_factory) -> Run:
    cfg, data = nano
    out = tmp_path_factory.mktemp("qat_pow2") / "run"
    result = CliRunner().invoke(main, [
        "train", "--cfg", str(cfg), "--data", str(data), "-o", str(out), "--epochs", "1", "--batch", "4",
        "--warmup", "0", "--lr", "0.005", "--lr-policy", "constant", "--no-progress", "--qat", "pow2",
        "--qat-calibration", "2",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    return Run(out, out / f"{cfg.stem}_int8.onnx", data)


def photos(run: Run) -> list[np.ndarray]:
    graph = Model.load(weights=run.output / "last.pt").graph
    listed = [
        *calibration_images(run.data.parent / "valid.txt"),
        *calibration_images(run.data.parent / "train.txt"),
    ]
    return [network_batch(graph, path) for path in listed]


def initializers(path: Path) -> dict[str, np.ndarray]:
    import onnx

    return {init.name: onnx.numpy_helper.to_array(init) for init in onnx.load(str(path)).graph.initializer}


def head_steps(path: Path) -> list[float]:
    """The quantization step of each model output: the output scale of the convolution feeding each head."""
    found = initializers(path)
    return [float(found[f"/blocks.{conv}/conv/Conv/out_scale"]) for conv in (15, 22)]  # nano's head convs


def torch_outputs(run: Run, batches: list[np.ndarray]) -> list[np.ndarray]:
    model, _ = quantized_model(run.output / "last.pt")
    with torch.no_grad():
        outputs = [model(torch.from_numpy(batch)) for batch in batches]
    return [np.concatenate([out[k].numpy() for out in outputs]) for k in range(2)]


def assert_within_one_step(ours: list[np.ndarray], theirs: list[np.ndarray], steps: list[float]) -> None:
    for mine, other, step in zip(ours, theirs, steps, strict=True):
        off = np.abs(mine - other) / step
        assert np.mean(off <= 1 + 1e-4) >= 0.999, (off.max(), np.mean(off > 1))


SCHEMES = ["int8_run", "pow2_run", "dorefa_run"]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_onnx_runtime_runs_every_conv_as_int8_and_agrees_with_the_fake_quantized_model(
    scheme, request, tmp_path
):
    import onnx
    import onnxruntime as ort

    run: Run = request.getfixturevalue(scheme)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    session = ort.InferenceSession(str(run.onnx), options, providers=["CPUExecutionProvider"])
    fused = [node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert fused.count("QLinearConv") == 13 and "Conv" not in fused  # nano's 13 convolutions, all int8

    batches = photos(run)
    theirs = [session.run(None, {"images": batch}) for batch in batches]
    ours = torch_outputs(run, batches)
    assert_within_one_step(
        ours, [np.concatenate(out) for out in zip(*theirs, strict=True)], head_steps(run.onnx)
    )


@pytest.mark.parametrize("scheme", SCHEMES)
def test_openvino_runs_every_conv_in_int8_and_agrees_with_the_fake_quantized_model(scheme, request):
    from cfgsurgeon.emit.openvino import compile_model

    run: Run = request.getfixturevalue(scheme)
    compiled = compile_model(str(run.onnx))
    precisions = [
        op.get_rt_info()["runtimePrecision"].astype(str)
        for op in compiled.get_runtime_model().get_ops()
        if op.get_rt_info()["layerType"].astype(str) == "Convolution"
    ]
    assert len(precisions) == 13 and set(precisions) <= {"u8", "i8"}, precisions

    batches = photos(run)
    request_ = compiled.create_infer_request()
    theirs = [[np.array(value) for value in request_.infer({0: batch}).to_tuple()] for batch in batches]
    ours = torch_outputs(run, batches)
    assert_within_one_step(
        ours, [np.concatenate(out) for out in zip(*theirs, strict=True)], head_steps(run.onnx)
    )


def test_weights_are_int8_per_channel_and_no_float_weight_is_left(int8_run: Run):
    import onnx

    graph = onnx.load(str(int8_run.onnx)).graph
    found = initializers(int8_run.onnx)
    producers = {node.output[0]: node for node in graph.node}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    assert len(convs) == 13
    for conv in convs:
        weight, bias = (producers[name] for name in conv.input[1:])
        assert weight.op_type == bias.op_type == "DequantizeLinear"
        assert found[weight.input[0]].dtype == np.int8 and found[bias.input[0]].dtype == np.int32
        channels = found[weight.input[0]].shape[0]
        assert found[weight.input[1]].shape == (channels,)  # a scale per output channel
        assert (
            np.abs(found[weight.input[0]]).max() == 127
        )  # symmetric: the largest weight of a channel is ±127
        assert producers[conv.input[0]].op_type == "DequantizeLinear"  # the input comes quantized
    assert not any(array.dtype == np.float32 and array.ndim == 4 for array in found.values())


def test_pow2_scales_are_exact_powers_of_two(pow2_run: Run):
    scales = {name: array for name, array in initializers(pow2_run.onnx).items() if name.endswith("scale")}
    assert len(scales) == 4 * 13  # input, weights, bias and output of each convolution
    for name, array in scales.items():
        mantissas = [math.frexp(float(value))[0] for value in np.ravel(array)]
        assert set(mantissas) == {0.5}, name


def test_dorefa_4_bits_uses_16_levels(dorefa_run: Run):
    import onnx
    import onnxruntime as ort

    found = initializers(dorefa_run.onnx)
    eight_bit = ("/blocks.0/", "/blocks.15/", "/blocks.22/")  # nano's first conv and the heads' stay int8
    for name, weights in found.items():
        if name.endswith("/w") and not name.startswith(eight_bit):
            levels = np.unique(weights)
            assert len(levels) <= 16 and set(levels) <= set(range(-15, 16, 2)), name  # odd codes: 2^4 levels
    four_bit = [w for name, w in found.items() if name.endswith("/w") and not name.startswith(eight_bit)]
    assert len(four_bit) == 10 and max(len(np.unique(w)) for w in four_bit) == 16

    model = onnx.load(str(dorefa_run.onnx))
    # what each convolution reads (its output's codes are clipped after DequantizeLinear, so that ONNX
    # Runtime still fuses the conv with the QuantizeLinear that reads it)
    reads = [node for node in model.graph.node if node.name.endswith("/in_Q")]
    codes = [node.output[0] for node in reads if not node.name.startswith(eight_bit)]
    assert len(codes) == 10
    for name in codes:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    values = session.run(codes, {"images": photos(dorefa_run)[0]})
    assert all(value.dtype == np.uint8 and value.max() <= 15 for value in values)  # 4-bit activations
    assert max(len(np.unique(value)) for value in values) > 8  # more than 3 bits' worth in use


class Interrupted(Exception):
    pass


def interrupt(record, graph) -> None:
    raise Interrupted


def test_same_seed_gives_the_same_bytes_also_through_a_resume(nano, int8_run: Run, tmp_path: Path):
    """A run interrupted after its first epoch (last.pt written) and resumed writes the same QDQ file as
    the uninterrupted run: the ranges, frozen BN and the scheme travel in last.pt."""
    with pytest.raises(Interrupted):
        train(nano_config(nano, tmp_path / "part", qat="int8", **QAT_RUN), log=quiet, on_epoch=interrupt)
    part = tmp_path / "part" / "last.pt"
    resumed = _trained(nano, tmp_path / "resumed", qat="int8", resume=part)
    assert resumed.onnx.read_bytes() == int8_run.onnx.read_bytes()
    saved = torch.load(int8_run.output / "last.pt", weights_only=True)["train"]["qat"]
    assert saved["scheme"] == "int8" and all(conv["bn_frozen"] for conv in saved["convs"].values())


def test_the_weights_stay_float_for_darknet(int8_run: Run, nano):
    weights = int8_run.output / f"{nano[0].stem}.weights"
    values = np.concatenate([np.ravel(v) for layer in Model.load(nano[0], weights).graph.layers
                             for v in (layer.weights or {}).values()])  # fmt: skip
    assert len(np.unique(values)) > 10_000  # not a grid of 256 levels per channel


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--qat", "int8", "--ema", "0.9"], "Error: --qat cannot be combined with --ema: "),
        (["--qat", "int8", "--amp"], "Error: --qat cannot be combined with --amp: "),
        (["--qat", "pow2", "--bits", "4"], "Error: --bits sets DoReFa's bit width; pow2 is 8-bit (got 4)"),
        (
            ["--qat", "dorefa", "--bits", "8"],
            "Error: --bits of dorefa must be 2 to 7 (int8 holds its levels), got 8",
        ),
    ],
)
def test_incompatible_options_are_one_line(nano, tmp_path: Path, flags: list[str], message: str):
    cfg, data = nano
    args = [
        "train",
        "--cfg",
        str(cfg),
        "--data",
        str(data),
        "-o",
        str(tmp_path / "x"),
        "--no-progress",
        *flags,
    ]
    result = CliRunner().invoke(main, args)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith(message), result.output
    assert not (tmp_path / "x" / "last.pt").exists()


def test_fading_channels_are_refused(nano, tmp_path: Path):
    with pytest.raises(UsageError, match="`qat` cannot be combined with `fade`"):
        train(nano_config(nano, tmp_path / "x", qat="int8", fade={0: [0]}), log=quiet)


def test_a_checkpoint_without_qat_is_refused(tmp_path: Path, int8_run: Run):
    plain = tmp_path / "plain.pt"
    save_checkpoint(Model.load(weights=int8_run.output / "last.pt").graph, plain)
    with pytest.raises(UsageError, match="not from a quantization-aware run"):
        quantized_model(plain)
