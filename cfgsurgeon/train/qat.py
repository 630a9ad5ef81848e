"""Quantization-aware training (``train --qat {int8,dorefa,pow2}``): fake quantization inside the trainer's
own :class:`~cfgsurgeon.emit.torch.DarknetModel`, starting from float weights, and the QDQ ONNX model the
run writes at the end (:mod:`cfgsurgeon.emit.qdq`).

Every convolutional layer computes, in the forward pass, what an integer kernel computes: its input
fake-quantized per tensor, its weights per output channel, and its output (before the activation) per
tensor again, so that ONNX Runtime fuses each ``DequantizeLinear → Conv → QuantizeLinear`` into one int8
``QLinearConv`` and OpenVINO runs the convolution on int8 inputs. Rounding passes gradients straight
through (the straight-through estimator; values clipped by a range get none).

* ``int8`` (the Google scheme of Jacob et al., 2018): batch norm folded into the convolution for the
  forward — weights ``w·γ/σ`` quantized symmetrically to [−127, 127] with a scale per output channel, the
  output divided back and normalised with the batch's statistics while BN still learns, then the folded
  convolution itself (bias ``β − γμ/σ`` on the int32 grid of input × weight scale) once BN is frozen and at
  inference. Activations: asymmetric uint8 over a moving range.
* ``pow2``: the same with every scale rounded up to a power of two, so requantizing an accumulator is a
  shift (FPGAs without multipliers for it).
* ``dorefa`` (Zhou et al., 2016): ``k``-bit weights ``2·round_k(tanh w / 2max|tanh w| + ½) − 1`` (2^k
  levels, odd multiples of ``1/(2^k − 1)``), rescaled per channel by ``max|w|`` so that a convolution
  without batch norm keeps its magnitude; activations ``k``-bit over their moving range. The first
  convolution and those feeding the heads stay int8, as DoReFa's authors keep the first and last layers.
  Gradients are not quantized (that part of DoReFa is for training hardware). The levels are written into
  int8, which holds ``k`` up to 7.

Activation ranges are moving averages (:data:`RANGE_MOMENTUM` per step) of each batch's min and max,
started by a short calibration on the first training batches with quantization off; batch norm and then
the ranges freeze for the end of the run (``qat_freeze_bn``, ``qat_freeze_ranges``: shares of the run), so
the last steps train exactly the network that is exported.

Why torch's fake-quantization ops and not NNCF's PyTorch QAT: NNCF's torch quantizers (3.4) are symmetric or
asymmetric with freely learned scales, with neither DoReFa's levels nor power-of-two scales; it wraps the
model in its own traced graph, which the trainer's checkpoints, ``--resume`` and darknet ``.weights`` would
have to learn; and NNCF must not run in the test process (tests/test_int8.py). torch's
``fake_quantize_per_{tensor,channel}_affine`` are a few lines inside the existing blocks, keep every
parameter and state_dict key, and give the straight-through gradients. torch's ONNX exporter only writes
8-bit ranges, so the export builds the QDQ graph itself from the scales this module holds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import layers as L
from ..emit.darknet_rules import is_binary_conv
from ..emit.torch import Block, DarknetModel, store_darknet_weights
from ..errors import UsageError
from ..ir import Graph
from .options import QAT_SCHEMES

RANGE_MOMENTUM = 0.01  # the activation ranges' moving average moves this far towards each batch's
WEIGHT_LEVELS = 127  # int8 weights use the symmetric range [-127, 127]
DOREFA_BITS = (2, 7)  # k-bit DoReFa weights are odd integers up to 2^k - 1: int8 holds k <= 7
TINY = 1e-12


@dataclass(frozen=True)
class Scheme:
    """A QAT scheme and its bit width (activations; the weights' too for DoReFa)."""

    name: str
    bits: int

    @property
    def activation_levels(self) -> int:
        """The largest uint8 code an activation uses (its codes are 0 … this)."""
        return 2**self.bits - 1

    @property
    def pow2(self) -> bool:
        return self.name == "pow2"


def scheme_of(name: str, bits: int | None) -> Scheme:
    if name not in QAT_SCHEMES:
        raise UsageError(f"`qat` must be one of {', '.join(QAT_SCHEMES)}, got '{name}'")
    if name != "dorefa":
        if bits not in (None, 8):
            raise UsageError(f"`qat_bits` sets DoReFa's bit width; {name} is 8-bit (got {bits})")
        return Scheme(name, 8)
    bits = 4 if bits is None else bits
    low, high = DOREFA_BITS
    if not low <= bits <= high:
        raise UsageError(f"`qat_bits` of dorefa must be {low} to {high} (int8 holds its levels), got {bits}")
    return Scheme(name, bits)


def check_config(config: Any, world: int) -> Scheme:
    """The run's scheme; one line for what does not go with ``--qat``."""
    scheme = scheme_of(config.qat, config.qat_bits)
    if config.fade:
        raise UsageError("`qat` cannot be combined with `fade`: fading γ to 0 leaves folded scales of 0")
    if config.ema:
        raise UsageError(
            "`qat` cannot be combined with `ema`: the average's weights round to other integers than any "
            "trained step, and its activation ranges were never observed"
        )
    if config.amp:
        raise UsageError("`qat` cannot be combined with `amp`: fake quantization runs in float32")
    if world > 1:
        raise UsageError("`qat` runs in one process (each process would observe its own activation ranges)")
    for name in ("qat_freeze_bn", "qat_freeze_ranges"):
        if not 0 <= getattr(config, name) <= 1:
            raise UsageError(f"`{name}` is a share of the run, in [0, 1]: found {getattr(config, name)}")
    if config.qat_calibration < 1:
        raise UsageError(f"`qat_calibration` must be at least 1 batch, got {config.qat_calibration}")
    return scheme


# -- activation ranges ---------------------------------------------------------------------------------------


class ActivationRange:
    """One tensor's per-tensor quantization: a moving min/max and the uint8 grid over it."""

    def __init__(self, scheme: Scheme):
        self.scheme = scheme
        self.low = 0.0
        self.high = 0.0
        self.seen: list[tuple[float, float]] = []  # calibration batches
        self.frozen = False

    def grid(self) -> tuple[float, int]:
        """(scale, zero point) of the uint8 codes 0 … levels over the range, which always holds 0."""
        levels = self.scheme.activation_levels
        low, high = min(self.low, 0.0), max(self.high, 0.0)
        scale = max(high - low, TINY) / levels
        if self.scheme.pow2:
            scale = 2.0 ** math.ceil(math.log2(scale))
        return scale, int(min(levels, max(0, round(-low / scale))))

    def observe(self, x: Tensor) -> None:
        """Calibration: remember this batch's range."""
        self.seen.append((float(x.min()), float(x.max())))

    def end_calibration(self) -> None:
        self.low = float(np.mean([low for low, _ in self.seen]))
        self.high = float(np.mean([high for _, high in self.seen]))
        self.seen = []

    def update(self, x: Tensor) -> None:
        if self.frozen:
            return
        self.low += RANGE_MOMENTUM * (float(x.detach().min()) - self.low)
        self.high += RANGE_MOMENTUM * (float(x.detach().max()) - self.high)

    def __call__(self, x: Tensor) -> Tensor:
        scale, zero = self.grid()
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, self.scheme.activation_levels)

    def state(self) -> list[float]:
        return [self.low, self.high, float(self.frozen)]

    def load(self, saved: list[float]) -> None:
        self.low, self.high, self.frozen = saved[0], saved[1], bool(saved[2])


# -- weights ------------------------------------------------------------------------------------------------


def _round_ste(x: Tensor) -> Tensor:
    """round(x) forward, identity backward (the straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def quantized_weights(weight: Tensor, fold: Tensor, scheme: Scheme, floor: Tensor) -> tuple[Tensor, Tensor]:
    """(the folded weights ``weight·fold`` as the integer kernel sees them, their scale per output channel):
    the first divided by the second is integer. No scale is below ``floor`` (see :func:`scale_floor`)."""
    if scheme.name == "dorefa":
        quantized, scale = _dorefa_weights(weight, fold, scheme.bits)
        small = (scale < floor).view(-1, 1, 1, 1)  # its weights are nothing beside its bias: 0
        return torch.where(small, torch.zeros_like(quantized), quantized), torch.maximum(scale, floor)
    folded = weight * fold.view(-1, 1, 1, 1)
    scale = torch.maximum(_nonzero(folded.detach().abs().amax(dim=(1, 2, 3)) / WEIGHT_LEVELS), floor)
    if scheme.pow2:
        scale = torch.exp2(torch.ceil(torch.log2(scale)))
    zeros = torch.zeros_like(scale, dtype=torch.int32)
    quantized = torch.fake_quantize_per_channel_affine(folded, scale, zeros, 0, -WEIGHT_LEVELS, WEIGHT_LEVELS)
    return quantized, scale


def _dorefa_weights(weight: Tensor, fold: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    levels = 2**bits - 1
    squashed = torch.tanh(weight)
    largest = squashed.abs().amax(dim=(1, 2, 3), keepdim=True).clamp(min=TINY)
    unit = 2 * _round_ste((squashed / (2 * largest) + 0.5) * levels) / levels - 1  # 2^k levels in [-1, 1]
    magnitude = weight.detach().abs().amax(dim=(1, 2, 3))
    quantized = unit * (magnitude * fold).view(-1, 1, 1, 1)
    return quantized, _nonzero((magnitude * fold.detach()).abs() / levels)


def scale_floor(bias: Tensor, input_scale: float) -> Tensor:
    """The smallest weight scale per output channel that keeps the bias, on the grid input scale × weight
    scale, within int32 (with a factor 2 to spare): a channel whose weights all but vanished (a head's unused
    output, a γ near 0) would otherwise need a bias of 10^14 codes."""
    return bias.detach().abs() / (input_scale * 2.0**30)


def _nonzero(scale: Tensor) -> Tensor:
    """Scales of all-zero channels (a γ of 0) set to 1: their integers are 0 whatever it is, and the bias
    stays on a grid it fits in."""
    return torch.where(scale == 0, torch.ones_like(scale), scale)


# -- the quantized convolution ------------------------------------------------------------------------------


class QuantizedConv:
    """What one convolutional layer's fake quantization holds: its input's and output's ranges and whether
    its batch norm is frozen. Kept out of the module tree so checkpoints keep their darknet keys."""

    def __init__(self, scheme: Scheme):
        self.scheme = scheme
        self.input = ActivationRange(scheme)
        self.output = ActivationRange(scheme)
        self.bn_frozen = False
        self.calibrating = False


def _fold(block: Block) -> tuple[Tensor, Tensor]:
    """(γ/σ per output channel, folded bias β − γμ/σ) from the running statistics; (1, bias) without BN."""
    conv: nn.Conv2d = block.conv
    bn: nn.BatchNorm2d | None = getattr(block, "bn", None)
    if bn is None:
        return torch.ones(conv.out_channels, device=conv.weight.device), conv.bias
    factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return factor, bn.bias - factor * bn.running_mean


def _bias_on_grid(bias: Tensor, step: Tensor) -> Tensor:
    """The bias on the accumulator's int32 grid (input scale × weight scale), as integer kernels add it."""
    return bias + (torch.round(bias / step) * step - bias).detach()


class QuantizedBlock(Block):
    """A convolutional layer's :class:`~cfgsurgeon.emit.torch.Block` with fake quantization: the class of
    the existing block is swapped, so its parameters, buffers and state_dict keys stay as they are."""

    quantized: QuantizedConv

    def forward(self, *xs: Tensor) -> Tensor:
        (x,) = xs
        y = self._convolution(x)
        for step in self.steps[1:]:
            if step[0] != "bn":
                y = self._run(step, y)
        return y

    def _convolution(self, x: Tensor) -> Tensor:
        q, conv = self.quantized, self.conv
        if q.calibrating:
            q.input.observe(x)
            y = self._float_convolution(x)
            q.output.observe(y)
            return y
        if self.training:
            q.input.update(x)
        x = q.input(x)
        y = self._quantized_convolution(x, conv)
        if self.training:
            q.output.update(y)
        return q.output(y)

    def _float_convolution(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return self.bn(y) if hasattr(self, "bn") else y

    def _quantized_convolution(self, x: Tensor, conv: nn.Conv2d) -> Tensor:
        factor, bias = _fold(self)
        safe = torch.where(factor == 0, torch.ones_like(factor), factor)
        input_scale = self.quantized.input.grid()[0]
        floor = scale_floor(bias, input_scale)
        weights, scale = quantized_weights(conv.weight, factor, self.quantized.scheme, floor)
        if self.training and hasattr(self, "bn") and not self.quantized.bn_frozen:
            # BN still learns: the folded conv divided back, normalised with this batch's statistics
            unfolded = self._conv(x, weights, None) / safe.view(1, -1, 1, 1)
            return self.bn(unfolded)
        return self._conv(x, weights, _bias_on_grid(bias, input_scale * scale))

    def _conv(self, x: Tensor, weights: Tensor, bias: Tensor | None) -> Tensor:
        conv = self.conv
        return F.conv2d(x, weights, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


# -- the model ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvQuantization:
    """One convolution of the integer model, as :mod:`cfgsurgeon.emit.qdq` writes it."""

    layer: int
    input_scale: float
    input_zero: int
    weights: np.ndarray  # int8, the conv's weight shape
    weight_scales: np.ndarray  # float32, one per output channel
    bias: np.ndarray  # int32 on the grid input_scale × weight_scales
    output_scale: float
    output_zero: int
    levels: int  # activations use the uint8 codes 0 … levels


def _ends(graph: Graph) -> set[int]:
    """The first convolution and those feeding the detection heads, which DoReFa keeps at 8 bits (its
    authors leave the first and last layers unquantized: at 4 bits the heads' logits would have 16 values)."""
    from ..emit.heads import head_layers

    convs = [layer.index for layer in graph.layers if isinstance(layer, L.Convolutional)]
    feeding = {graph.index_of(node) for head in head_layers(graph) for node in head.inputs}
    return {convs[0], *(index for index in feeding if index in convs)} if convs else set()


def quantizable(graph: Graph) -> list[int]:
    """The layers that get fake quantization: every convolutional layer; one line for those that cannot."""
    found = []
    for layer in graph.layers:
        if not isinstance(layer, L.Convolutional):
            continue
        if layer.shares is not None or is_binary_conv(layer):
            raise UsageError(
                f"`qat`: layer {layer.index} [{layer.header}] (line {layer.line}) shares or binarises its "
                "weights, which fake quantization does not model"
            )
        found.append(layer.index)
    if not found:
        raise UsageError("`qat`: the model has no convolutional layer to quantize")
    return found


class Quantization:
    """The fake quantization of a :class:`DarknetModel`, attached in place by :func:`attach`."""

    def __init__(self, model: DarknetModel, scheme: Scheme, freeze_bn: float, freeze_ranges: float):
        self.model, self.scheme = model, scheme
        self.freeze_bn, self.freeze_ranges = freeze_bn, freeze_ranges
        self.convs: dict[int, QuantizedConv] = {}
        self.eight_bit = _ends(model.graph) if scheme.name == "dorefa" else set()
        for index in quantizable(model.graph):
            block = model.blocks[index]
            block.__class__ = QuantizedBlock
            kept = Scheme("int8", 8) if index in self.eight_bit else scheme
            block.quantized = self.convs[index] = QuantizedConv(kept)

    def describe(self) -> str:
        bits = f", {self.scheme.bits}-bit" if self.scheme.name == "dorefa" else ""
        if self.eight_bit:
            bits += f" (int8: layers {', '.join(map(str, sorted(self.eight_bit)))}, the first and the heads')"
        return (
            f"qat: {self.scheme.name}{bits} fake quantization of {len(self.convs)} convolutions (inputs and "
            f"outputs per tensor, weights per channel); BN frozen after {self.freeze_bn:.0%} of the run, "
            f"activation ranges after {self.freeze_ranges:.0%}"
        )

    @torch.no_grad()
    def calibrate(self, batches: Iterable[Tensor]) -> int:
        """Start the activation ranges from the float model's on ``batches`` (inference mode); how many."""
        was_training = self.model.training
        self.model.eval()
        for q in self.convs.values():
            q.calibrating = True
        count = 0
        try:
            for images in batches:
                self.model(images)
                count += 1
        finally:
            for q in self.convs.values():
                q.calibrating = False
            self.model.train(was_training)
        for q in self.convs.values():
            q.input.end_calibration()
            q.output.end_calibration()
        return count

    def at_step(self, step: int, total: int) -> None:
        """Freeze batch norm and then the ranges once the run has gone far enough."""
        for q in self.convs.values():
            q.bn_frozen = q.bn_frozen or step >= self.freeze_bn * total
            frozen = step >= self.freeze_ranges * total
            q.input.frozen = q.input.frozen or frozen
            q.output.frozen = q.output.frozen or frozen

    def state(self) -> dict[str, Any]:
        """What ``last.pt`` keeps: the scheme, and each convolution's ranges (to resume the run exactly)."""
        convs = {
            str(index): {"input": q.input.state(), "output": q.output.state(), "bn_frozen": q.bn_frozen}
            for index, q in self.convs.items()
        }
        return {"scheme": self.scheme.name, "bits": self.scheme.bits, "convs": convs}

    def load(self, saved: dict[str, Any]) -> None:
        if (saved["scheme"], saved["bits"]) != (self.scheme.name, self.scheme.bits):
            raise UsageError(
                f"this checkpoint was trained with --qat {saved['scheme']} ({saved['bits']} bits), not "
                f"{self.scheme.name} ({self.scheme.bits} bits)"
            )
        for index, q in self.convs.items():
            entry = saved["convs"][str(index)]
            q.input.load(entry["input"])
            q.output.load(entry["output"])
            q.bn_frozen = bool(entry["bn_frozen"])

    @torch.no_grad()
    def integer_model(self) -> list[ConvQuantization]:
        """Each convolution as integers and scales: what the QDQ export writes."""
        found = []
        for index, q in self.convs.items():
            block = self.model.blocks[index]
            factor, bias = _fold(block)
            input_scale, input_zero = q.input.grid()
            weights, scale = quantized_weights(
                block.conv.weight, factor, q.scheme, scale_floor(bias, input_scale)
            )
            output_scale, output_zero = q.output.grid()
            step = input_scale * scale
            found.append(
                ConvQuantization(
                    layer=index,
                    input_scale=input_scale,
                    input_zero=input_zero,
                    weights=_integers(weights / scale.view(-1, 1, 1, 1), np.int8),
                    weight_scales=scale.cpu().numpy().astype(np.float32),
                    bias=_integers(bias / step, np.int32),
                    output_scale=output_scale,
                    output_zero=output_zero,
                    levels=q.scheme.activation_levels,
                )
            )
        return found

    def export(self, path: Path) -> Path:
        """Write the QDQ ONNX model of the current weights and ranges to ``path``."""
        from ..emit.qdq import write_qdq_onnx

        store_darknet_weights(self.model, self.model.graph)
        write_qdq_onnx(self.model.graph, self.integer_model(), path)
        return path


def _integers(values: Tensor, dtype: type) -> np.ndarray:
    return torch.round(values).cpu().numpy().astype(dtype)


def quantized_model(checkpoint: str | Path) -> tuple[DarknetModel, Quantization]:
    """The fake-quantized model of a ``train --qat`` run's ``last.pt`` (inference mode) and its quantization,
    e.g. to export its QDQ model again or compare it with a runtime."""
    from ..convert import checkpoint_entry, load_checkpoint

    checkpoint = Path(checkpoint)
    saved = checkpoint_entry(checkpoint, "train")
    if not isinstance(saved, dict) or not saved.get("qat"):
        raise UsageError("this checkpoint is not from a quantization-aware run (train --qat)", checkpoint)
    model = DarknetModel(load_checkpoint(checkpoint, None, lambda message: None))
    qat = saved["qat"]
    quantization = Quantization(model, scheme_of(qat["scheme"], qat["bits"]), 0.0, 0.0)
    quantization.load(qat)
    return model.eval(), quantization


def attach(model: DarknetModel, config: Any, world: int = 1) -> Quantization | None:
    """Fake quantization for ``model`` as ``config.qat`` asks (None: no QAT)."""
    if not config.qat:
        return None
    scheme = check_config(config, world)
    return Quantization(model, scheme, config.qat_freeze_bn, config.qat_freeze_ranges)
