"""The training loop: ``train(TrainConfig(...)) -> TrainResult``, also behind ``cfgsurgeon train``.

Defaults come from the cfg's ``[net]`` as darknet reads them (``batch``, ``subdivisions``, ``learning_rate``,
``momentum``, ``decay``, ``adam``/``B1``/``B2``/``eps``, ``burn_in``/``power``, ``policy`` with
``steps``/``scales``, ``step``/``scale``, ``learning_rate_min``); every one can be overridden. Darknet's
conventions kept: ``batch`` images per optimizer step, split into ``subdivisions`` accumulated micro-batches;
weight decay on convolution and connected weights only (never BN scales or biases); the burn-in ramp
``lr·(step/burn_in)^power``. The run's length is set in epochs (``max_steps`` can cut it shorter); ``steps=``
positions are given by darknet relative to ``max_batches``, so they are rescaled to the run's length,
and so is ``burn_in`` (capped at a tenth of the run): a cfg's ``burn_in=1000`` of ``max_batches=500200`` is
not a 1,000-step warm-up of a 1,280-step fine-tune. A test cfg's ``batch=1`` is not trained with: the run
uses :data:`DEFAULT_BATCH` instead and says so.

Guards (:mod:`cfgsurgeon.train.monitor`): a loss that climbs well above its running level, or a validation
mAP that collapses (``eval_every``), stops the run with :class:`TrainingDiverged`; ``last.pt`` then still
holds the last healthy epoch and ``best.pt`` the best evaluated one. ``patience`` stops a run that no longer
improves. Without a terminal, progress lines are logged every ``log_every`` seconds.

Outputs (``output`` folder, rank 0 only): ``last.pt`` (our checkpoint format, :mod:`cfgsurgeon.convert`,
plus a ``"train"`` entry with the optimizer, scaler and counters, written every ``checkpoint_every`` epochs
and at the end; ``resume=`` continues from it), ``<cfg name>.weights`` (final darknet weights) with a copy
of the cfg beside it, ``gamma/epoch_NNN.png`` (|γ| histograms of the penalised BN channels) and
``history.json`` with ``history.png`` (loss, lr, validation mAP and sparsity per epoch); with ``eval_every``
also ``best.pt`` and ``<cfg name>_best.weights`` (the epoch of highest validation mAP@0.5); with ``qat``
(quantization-aware training, :mod:`cfgsurgeon.train.qat`) also ``<cfg name>_int8.onnx``, the QDQ model.

Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) the same call runs DDP, gloo on CPU and nccl on CUDA,
each rank taking ``batch / world`` images of every step through a ``DistributedSampler`` (the union over
ranks is the same global batch as a single process with the same seed draws). Batch norm is synchronised
across ranks (``sync_bn``; on CPU by an all-reduce of the per-channel sums, as ``SyncBatchNorm`` only runs on
GPUs), so a 2-process run computes what one process computes, up to float rounding. Mixed precision
(``amp``): bf16 autocast on CPU, fp16 with a ``GradScaler`` on CUDA; the loss is computed in float32 and the
sparsity term is added after unscaling.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..convert import checkpoint_entry, load_checkpoint, save_checkpoint
from ..emit.cfg import cfg_text
from ..emit.torch import DarknetModel, store_darknet_weights
from ..errors import UsageError
from ..files import atomic_output
from ..ir import Graph, load_cfg
from ..layers import AnchorFree, Layer, Yolo
from ..weights import WeightsHeader, read_weights, read_weights_inferred, take_matching, write_weights
from . import options as opt
from .average import WeightAverage
from .distill import Distiller
from .loss import YoloLoss, yolo_heads
from .loss_v8 import AnchorFreeLoss
from .monitor import DivergenceGuard, EarlyStop, ProgressLines, TrainingStopped, format_duration, plot_history
from .options import LR_POLICIES, OPTIMIZERS
from .qat import attach as attach_quantization
from .sparsity import (
    ChannelFade,
    Schedule,
    SparsityPenalty,
    fraction_small,
    plot_gamma_histogram,
    safe_slim_ratio,
)

POLICY_ALIASES = {"sgdr": "cosine"}  # darknet's SGDR with one cycle is a cosine decay
DEFAULT_BATCH = 16  # images per step when the cfg's [net] is a test setting (batch=1)
WARMUP_SHARE = 0.1  # a burn-in taken from the cfg is at most this share of the run


class TrainingDiverged(UsageError):
    """The run stopped because the loss or the validation mAP ran away; the message says what to change."""


@dataclass
class TrainConfig:
    """What to train and how. ``None`` means "as the cfg's ``[net]`` says"."""

    cfg: Path | None = None  # not needed with resume or a .pt weights (they carry their cfg)
    data: Path | None = None  # darknet .data file (its train= list); not needed when train() gets a dataset
    output: Path = Path("runs/train")
    weights: Path | None = None  # start from .weights or a .pt checkpoint; None: from scratch (seeded init)
    resume: Path | None = None  # last.pt of an earlier run: continue it (same settings give the same result)
    epochs: int = 10
    max_steps: int | None = None  # stop after this many optimizer steps in all
    batch: int | None = None  # images per optimizer step, over all processes ([net] batch)
    subdivisions: int | None = None  # micro-batches per step ([net] subdivisions)
    optimizer: str | None = None  # sgd | adam ([net] adam=1 → adam)
    lr: float | None = None  # [net] learning_rate
    momentum: float | None = None  # [net] momentum (SGD), B1 (Adam)
    weight_decay: float | None = None  # [net] decay
    warmup: int | None = None  # burn-in steps ([net] burn_in)
    lr_policy: str | None = None  # constant | steps | step | poly | cosine ([net] policy)
    sparsity: float = 0.0  # s of the L1 penalty on BN γ (0: off)
    sparsity_schedule: str = "constant"  # constant | global-decay | local-decay | layer-decay
    sparsity_scope: str = "slim"  # normal | shortcut | slim | all (which BN layers are penalised)
    sparsity_decay_start: float = 0.5  # share of the run after which the decaying schedules decay
    sparsity_protect: float = 0.3  # local-decay: share of penalised channels (largest |γ|) spared
    fade: dict[int, list[int]] | None = None  # layer → BN channels whose γ shrink linearly to 0 (ChannelFade)
    ema: float = 0.0  # decay of the weights' moving average that is evaluated and written (0: off)
    teacher_cfg: Path | None = None
    teacher_weights: Path | None = None
    distill: str = "detection"  # detection | soft
    distill_weight: float = 1.0
    distill_temperature: float = 1.0
    amp: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    workers: int = 0
    augment: bool = True
    bn_momentum: float = 0.03  # running-statistics update per step (darknet: 0.01; short runs need faster)
    sync_bn: bool = True
    gamma_plots: bool = True
    progress: bool = True
    checkpoint_every: int = 1  # epochs
    eval_every: int = 0  # evaluate on the data's valid split every N epochs (0: never); keeps best.pt
    patience: int | None = None  # stop after this many evaluations without a better mAP@0.5
    max_map_drop: float = 0.5  # a validation mAP@0.5 below (1 - this) × the best counts as divergence
    diverge_factor: float = 3.0  # smoothed loss above this × its lowest level ... (0: never)
    diverge_steps: int = 10  # ... for this many consecutive steps counts as divergence
    log_every: float = 30.0  # seconds between progress lines when stderr is not a terminal
    multiscale: bool | None = None  # darknet's random=1 input sizes; None: as the cfg's heads say
    qat: str | None = None  # int8 | dorefa | pow2: quantization-aware training (train/qat.py); None: off
    qat_bits: int | None = None  # dorefa's bit width (default 4); int8 and pow2 are 8-bit
    qat_calibration: int = 8  # batches that start the activation ranges, quantization off
    qat_freeze_bn: float = 0.5  # share of the run after which BN statistics are frozen (folded for good)
    qat_freeze_ranges: float = 0.75  # share of the run after which the activation ranges stop moving


@dataclass
class EpochRecord:
    epoch: int
    steps: int  # optimizer steps done at the end of the epoch
    loss: float  # mean per-image loss over the epoch's steps
    box: float
    obj: float
    cls: float
    distill: float
    lr: float  # at the last step
    small_gamma: float  # share of penalised |γ| < 0.01
    seconds: float
    epoch_steps: int = 0  # optimizer steps run in this epoch
    safe_ratio: float | None = None  # slim ratio removable at no predicted cost (sparse training only)
    P: float | None = None  # validation metrics, on evaluated epochs
    R: float | None = None
    map50: float | None = None
    map50_95: float | None = None
    dfl: float = 0.0  # distribution focal loss of [anchor_free] heads (which have no obj term; [yolo]: 0)


@dataclass
class TrainResult:
    graph: Graph  # the trained network, weights loaded
    step_losses: list[float]  # per optimizer step, the global batch's per-image loss
    epochs: list[EpochRecord]
    output: Path
    weights: Path | None = None  # final .weights (None on ranks other than 0)
    checkpoint: Path | None = None
    plots: list[Path] = field(default_factory=list)
    best: Path | None = None  # best.pt of the highest validation mAP@0.5 (with eval_every)
    stopped: str | None = None  # why the run ended before its last step (early stopping)
    int8: Path | None = None  # the QDQ ONNX model of a quantization-aware run


# -- schedules ---------------------------------------------------------------------------------------------


@dataclass
class LearningRate:
    """The learning rate at each optimizer step (0-based): burn-in, then the policy."""

    base: float
    total: int
    warmup: int = 0
    power: float = 4.0
    policy: str = "constant"
    steps: tuple[int, ...] = ()
    scales: tuple[float, ...] = ()
    step_size: int = 1
    step_scale: float = 1.0
    minimum: float = 0.0
    warmup_note: str = ""  # where the warm-up length came from

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.base * ((step + 1) / self.warmup) ** self.power
        if self.policy == "steps":
            passed = [scale for at, scale in zip(self.steps, self.scales, strict=False) if at <= step]
            return self.base * math.prod(passed)
        if self.policy == "step":
            return self.base * self.step_scale ** (step // max(1, self.step_size))
        if self.policy == "poly":
            return self.base * (1 - step / max(1, self.total)) ** self.power
        if self.policy == "cosine":
            return self.minimum + 0.5 * (self.base - self.minimum) * (
                1 + math.cos(math.pi * step / self.total)
            )
        return self.base

    def describe(self) -> str:
        """One line: warm-up, then the policy, as this run applies them."""
        warm = "no warm-up, "
        if self.warmup:
            ramp = f"lr·(step/{self.warmup})^{self.power:g}{self.warmup_note}"
            warm = f"warm-up {self.warmup} steps ({ramp}), then "
        if self.policy == "steps":
            changes = ", ".join(
                f"×{s:g} at step {at}" for at, s in zip(self.steps, self.scales, strict=False)
            )
            policy = f"steps ({changes or 'no change'})"
        elif self.policy == "step":
            policy = f"×{self.step_scale:g} every {self.step_size} steps"
        elif self.policy == "cosine":
            policy = f"cosine to {self.minimum:g}"
        else:
            policy = self.policy
        return f"lr {self.base:g}: {warm}{policy}; {self.total} steps"


def learning_rate(graph: Graph, config: TrainConfig, total: int) -> LearningRate:
    net = graph.net
    policy = config.lr_policy or opt.text(net, "policy", "constant")
    policy = POLICY_ALIASES.get(policy, policy)
    if policy not in LR_POLICIES:
        raise UsageError(
            f"learning-rate policy '{policy}' is not supported (one of: {', '.join(LR_POLICIES)})"
        )
    max_batches = opt.integer(net, "max_batches", 0)
    stretch = total / max_batches if max_batches > 0 else 1.0
    steps = tuple(round(s * stretch) for s in opt.numbers(net, "steps"))
    scales = tuple(opt.numbers(net, "scales"))
    if policy == "steps" and len(scales) < len(steps):
        raise UsageError("[net] steps= and scales= need the same number of values", net.where("scales"))
    warmup, note = _warmup(net, config, total, stretch)
    return LearningRate(
        base=config.lr if config.lr is not None else opt.number(net, "learning_rate", 0.001),
        total=total,
        warmup=warmup,
        warmup_note=note,
        power=opt.number(net, "power", 4.0),
        policy=policy,
        steps=steps,
        scales=scales,
        step_size=max(1, round(opt.integer(net, "step", 1) * stretch)),
        step_scale=opt.number(net, "scale", 1.0),
        minimum=opt.number(net, "learning_rate_min", 0.00001),
    )


def _warmup(net, config: TrainConfig, total: int, stretch: float) -> tuple[int, str]:
    """The warm-up steps and a note on where they came from: ``--warmup`` as given, else the cfg's
    ``burn_in`` rescaled like ``steps=`` and capped at :data:`WARMUP_SHARE` of the run."""
    if config.warmup is not None:
        return config.warmup, ""
    burn_in = opt.integer(net, "burn_in", 0)
    if burn_in <= 0:
        return 0, ""
    scaled = round(burn_in * stretch) if opt.integer(net, "max_batches", 0) > 0 else burn_in
    warmup = min(scaled, int(WARMUP_SHARE * total))
    how = "rescaled from max_batches" if scaled != burn_in else "as given"
    cap = f", capped at {WARMUP_SHARE:.0%} of the run" if warmup < scaled else ""
    return warmup, f"; the cfg's burn_in={burn_in} {how}{cap}"


def make_optimizer(model: nn.Module, graph: Graph, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (darknet's momentum update) or Adam (``B1``, ``B2``, ``eps``); decay on conv/fc weights only."""
    net = graph.net
    kind = config.optimizer or ("adam" if opt.integer(net, "adam", 0) else "sgd")
    if kind not in OPTIMIZERS:
        raise UsageError(f"unknown optimizer '{kind}' (one of: {', '.join(OPTIMIZERS)})")
    decay = config.weight_decay if config.weight_decay is not None else opt.number(net, "decay", 0.0001)
    decayed = [p for name, p in model.named_parameters() if name.endswith(("conv.weight", "fc.weight"))]
    ids = {id(p) for p in decayed}
    others = [p for p in model.parameters() if id(p) not in ids]
    groups = [{"params": decayed, "weight_decay": decay}, {"params": others, "weight_decay": 0.0}]
    if kind == "adam":
        beta1 = config.momentum if config.momentum is not None else opt.number(net, "B1", 0.9)
        betas = (beta1, opt.number(net, "B2", 0.999))
        return torch.optim.Adam(groups, lr=1.0, betas=betas, eps=opt.number(net, "eps", 0.000001))
    momentum = config.momentum if config.momentum is not None else opt.number(net, "momentum", 0.9)
    return torch.optim.SGD(groups, lr=1.0, momentum=momentum)


# -- losses ------------------------------------------------------------------------------------------------

# The training loss of each detection head type: the model's heads decide.
LOSSES: dict[type[Layer], Callable[[Graph], YoloLoss | AnchorFreeLoss]] = {
    Yolo: YoloLoss,
    AnchorFree: AnchorFreeLoss,
}


def loss_for(graph: Graph) -> YoloLoss | AnchorFreeLoss:
    """The loss of the graph's heads (:data:`LOSSES`); without any of those, the [yolo] loss, which says
    what it refuses."""
    kinds = sorted({type(layer) for layer in graph.layers if type(layer) in LOSSES}, key=str)
    if len(kinds) > 1:
        found = " and ".join(f"[{kind.kind}]" for kind in kinds)
        raise UsageError(f"the model has {found} heads: training supports one kind of head", graph.source)
    return LOSSES[kinds[0] if kinds else Yolo](graph)


# -- distributed -------------------------------------------------------------------------------------------


@dataclass
class Ranks:
    rank: int = 0
    world: int = 1
    local: int = 0
    started: bool = False  # whether this run initialised the process group (and so tears it down)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: torch.device) -> Ranks:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        started = not dist.is_initialized()
        if started:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(rank, world, local, started)

    def mean(self, values: Tensor) -> Tensor:
        if self.world > 1:
            values = values.clone()
            dist.all_reduce(values)
            values /= self.world
        return values


class _DistributedBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the whole global batch: per-channel sums, sums of
    squares and counts are all-reduced (with autograd, so gradients see the global statistics too)."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        channels = x.shape[1]
        xf = x.float()
        count = torch.full((1,), xf.numel() / channels, device=x.device)
        stats = all_reduce(torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)), count]))
        n = stats[-1]
        mean = stats[:channels] / n
        var = (stats[channels : 2 * channels] / n - mean * mean).clamp(min=0)
        with torch.no_grad():
            m = self.momentum if self.momentum is not None else 0.1
            self.running_mean.mul_(1 - m).add_(m * mean.detach())
            self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1))
            self.num_batches_tracked.add_(1)
        shape = (1, channels, 1, 1)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return (y * self.weight.view(shape) + self.bias.view(shape)).to(x.dtype)


def _synchronise_batchnorm(model: nn.Module, device: torch.device) -> None:
    """Make every BatchNorm2d of ``model`` use the global batch's statistics, in place (same parameters,
    buffers and state_dict keys)."""
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = nn.SyncBatchNorm if device.type == "cuda" else _DistributedBatchNorm
            module.process_group = None  # SyncBatchNorm: the default (whole) group


# -- models ------------------------------------------------------------------------------------------------


def load_graph(
    cfg: Path | None, weights: Path | None, warn: Callable[[str], None] = print, init_seed: int | None = None
) -> Graph:
    """A cfg with weights from ``.weights`` or a ``.pt`` checkpoint (which may carry its own cfg).

    With ``init_seed`` (a model about to be trained) the weights may come from another variant of the cfg,
    e.g. COCO weights for a cfg retargeted to 4 classes: every layer whose tensors match is loaded, the others
    get the init of training from scratch with that seed, ``warn`` names them in one line, and the header's
    ``seen`` restarts at 0 (darknet's burn-in runs again for the changed model)."""
    partial = init_seed is not None and cfg is not None
    if weights is not None and weights.suffix == ".pt" and not (partial and embeds_cfg(weights)):
        return load_checkpoint(weights, cfg, warn)
    if cfg is None:
        raise UsageError("a cfg is needed (--cfg)")
    graph = load_cfg(cfg, warn)
    if weights is None:
        return graph
    if init_seed is None:
        read_weights(graph, weights)
        return graph
    return load_matching(graph, weights, init_seed, warn=lambda message: warn(f"warning: {message}"))


def load_matching(graph: Graph, weights: Path, seed: int, warn: Callable[[str], None]) -> Graph:
    """``graph`` (filled in place) starting from ``weights`` of this cfg or of another variant of it: every
    layer whose tensors match is loaded, the others get the init of training from scratch with ``seed`` and
    ``warn`` names them in one line, and the header's ``seen`` restarts at 0 when any was left out."""
    unmatched, written_for = _load_matching(graph, weights)
    if unmatched:
        if len(unmatched) == sum(bool(layer.weight_layout()) for layer in graph.layers):
            raise UsageError(f"no layer of {graph.source} matches the tensors of {written_for}", weights)
        _initialise_as_from_scratch(graph, unmatched, seed)
        header = graph.weights_header or WeightsHeader()
        graph.weights_header = WeightsHeader(header.major, header.minor, header.revision, seen=0)
        listed = ", ".join(f"layer {layer.index} [{layer.header}] (line {layer.line})" for layer in unmatched)
        warn(
            f"{weights} was written for {written_for}; {len(unmatched)} layers of {graph.source} "
            f"initialised as when training from scratch (seed {seed}): {listed}"
        )
    return graph


def _load_matching(graph: Graph, weights: Path) -> tuple[list[Layer], str]:
    """Load the tensors of ``weights`` that fit ``graph`` layer by layer: (layers left without, what the file
    was written for). A ``.weights`` file's layout is inferred from its size (another class count of the
    heads); our ``.pt`` carries its cfg."""
    from ..surgery.retarget import retarget

    if weights.suffix != ".pt":
        bare = graph.clone()
        found = read_weights_inferred(graph, weights, lambda classes: retarget(bare, classes))
        return found.unmatched, f"{found.value} classes" if found.value is not None else str(graph.source)
    source = load_checkpoint(weights, None, lambda message: None)  # its cfg's warnings are old news
    graph.weights_header = source.weights_header
    return take_matching(graph, source), f"its embedded cfg ({source.source})"


def embeds_cfg(checkpoint: Path) -> bool:
    """Whether ``checkpoint`` is ours, with its cfg; any other (or unreadable) file is left to
    :func:`load_checkpoint`, which reads it against the cfg or says what is wrong with it."""
    try:
        return isinstance(checkpoint_entry(checkpoint, "cfg"), str)
    except UsageError:
        return False


def _initialise_as_from_scratch(graph: Graph, layers: list[Layer], seed: int) -> None:
    """Give ``layers`` (of ``graph``) the tensors a model trained from scratch starts from: torch's default
    init after ``manual_seed(seed)``, over the whole model, as :class:`_Run` builds it."""
    bare = graph.clone()
    for layer in bare.layers:
        layer.weights = None
    torch.manual_seed(seed)
    store_darknet_weights(DarknetModel(bare), bare)
    for layer in layers:
        layer.weights = bare.layers[layer.index].weights


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    return device


# -- data --------------------------------------------------------------------------------------------------


def _micro_batches(images: Tensor, targets: Tensor, parts: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Split a batch (targets M×6, column 0 the image index) into ``parts`` consecutive micro-batches."""
    size = images.shape[0] // parts
    for k in range(parts):
        lo, hi = k * size, (k + 1) * size
        rows = targets[(targets[:, 0] >= lo) & (targets[:, 0] < hi)].clone()
        rows[:, 0] -= lo
        yield images[lo:hi], rows


class _Resumed(torch.utils.data.Sampler):
    """A sampler's order for the epoch, from position ``start`` on (resuming in the middle of an epoch)."""

    def __init__(self, sampler: torch.utils.data.Sampler, start: int):
        self.sampler, self.start = sampler, start

    def __iter__(self) -> Iterator[int]:
        for k, index in enumerate(self.sampler):
            if k >= self.start:
                yield index

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.start)  # type: ignore[arg-type]


def _train_dataset(config: TrainConfig, graph: Graph) -> torch.utils.data.Dataset:
    from .dataset import DetectionDataset

    if config.data is None:
        raise UsageError("give the training data (--data FILE.data)")
    return DetectionDataset.from_data(config.data, "train", graph, augment=config.augment, seed=config.seed)


# -- the loop ----------------------------------------------------------------------------------------------


@dataclass
class _State:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed
    epoch_step: int = 0  # steps completed in the current epoch
    step_losses: list[float] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)


def train(
    config: TrainConfig,
    dataset: torch.utils.data.Dataset | None = None,
    log: Callable[[str], None] = print,
    on_epoch: Callable[[EpochRecord, Graph], None] | None = None,
    *,
    graph: Graph | None = None,
    teacher: Graph | None = None,
    warn: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train ``config.cfg`` and return the trained graph and what happened. ``dataset`` replaces
    ``config.data`` (any Dataset of ``(image, targets K×5, path)`` samples, with an optional ``set_epoch``);
    ``on_epoch`` is called on rank 0 after every epoch with the record and the current weights.

    ``graph`` / ``teacher``: models already loaded, used instead of reading ``config.cfg`` and
    ``config.weights`` / the teacher's files (``graph`` is trained in place: its weights are replaced).
    ``warn`` receives the warnings (default: ``log`` them as ``warning: ...``)."""
    device = _device(config.device)
    ranks = Ranks.from_env(device)
    if device.type == "cuda":
        device = torch.device("cuda", ranks.local) if device.index is None else device
    if warn is None:
        warn = lambda message: log(f"warning: {message}")  # noqa: E731
    try:
        return _Run(config, device, ranks, log, warn, graph, teacher).run(dataset, on_epoch)
    finally:
        if ranks.started:
            dist.destroy_process_group()


class _Run:
    def __init__(
        self,
        config: TrainConfig,
        device: torch.device,
        ranks: Ranks,
        log: Callable[[str], None],
        warn: Callable[[str], None],
        graph: Graph | None = None,
        teacher: Graph | None = None,
    ):
        self.config, self.device, self.ranks = config, device, ranks
        self.log = log if ranks.main else (lambda message: None)
        self.warn = warn if ranks.main else (lambda message: None)
        self.state = _State()
        resume = config.resume
        if graph is None:
            source = resume if resume is not None else config.weights
            seed = None if resume else config.seed
            graph = load_graph(None if resume else config.cfg, source, warn=self.log, init_seed=seed)
        self.graph = graph
        torch.manual_seed(config.seed)  # a model trained from scratch starts from the same weights everywhere
        self.model = DarknetModel(self.graph).to(device)
        for module in self.model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = config.bn_momentum
        if ranks.world > 1 and config.sync_bn:
            _synchronise_batchnorm(self.model, device)  # in place: the same parameters and module tree
        self.loss = loss_for(self.graph)
        self.penalty = SparsityPenalty(
            self.model,
            self.graph,
            config.sparsity_scope,
            Schedule(
                config.sparsity,
                config.sparsity_schedule,
                decay_start=config.sparsity_decay_start,
                protect=config.sparsity_protect,
            ),
        )
        self.fade = ChannelFade(self.model, self.graph, config.fade or {})
        self.average = self._average()
        self.qat = attach_quantization(self.model, config, ranks.world)
        self.optimizer = make_optimizer(self.model, self.graph, config)
        self.scaler = torch.amp.GradScaler("cuda", enabled=config.amp and device.type == "cuda")
        self.teacher, self.distiller = self._teacher(teacher)
        self.header = self.graph.weights_header or WeightsHeader()
        if resume is not None:
            self._restore(resume)
        self.start_step = self.state.step  # the header of a resumed run already counts the images before it
        net_model: nn.Module = self.model
        if ranks.world > 1:
            ids = [device.index] if device.type == "cuda" else None
            net_model = nn.parallel.DistributedDataParallel(net_model, device_ids=ids)
        self.net_model = net_model

    def _teacher(self, graph: Graph | None) -> tuple[DarknetModel | None, Distiller | None]:
        config = self.config
        if graph is None and config.teacher_cfg is None and config.teacher_weights is None:
            return None, None
        if graph is None and config.teacher_weights is None:
            raise UsageError(
                "--teacher-cfg needs --teacher-weights (a teacher with random weights teaches noise)"
            )
        if not isinstance(self.loss, YoloLoss):
            raise UsageError("distillation (`teacher_weights`) supports models with [yolo] heads only")
        if graph is None:
            graph = load_graph(config.teacher_cfg, config.teacher_weights, warn=self.log)
        distiller = Distiller(
            self.loss.heads, config.distill, config.distill_weight, config.distill_temperature
        )
        teacher_heads = yolo_heads(graph)
        distiller.check_teacher(teacher_heads)
        teacher = DarknetModel(graph).to(self.device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.teacher_sources = [head.source for head in teacher_heads]
        return teacher, distiller

    def _average(self) -> WeightAverage | None:
        """The moving average of the weights (``ema``) that is evaluated and written, if asked for; a resumed
        run's model (the checkpoint's weights) is that average."""
        config = self.config
        if not config.ema:
            return None
        if config.fade:
            raise UsageError("`ema` cannot be combined with `fade`: an average of fading γ never reaches 0")
        return WeightAverage(self.model, config.ema)

    @property
    def deployed(self) -> nn.Module:
        """The weights evaluated and written: the moving average with ``ema``, else the model's own."""
        return self.model if self.average is None else self.average.model

    def _restore(self, path: Path) -> None:
        saved = checkpoint_entry(path, "train")
        if not isinstance(saved, dict):
            raise UsageError("this checkpoint has no training state to resume (not a train() last.pt)", path)
        if saved.get("live") is not None:  # trained with ema: the checkpoint's model is the average
            self.model.load_state_dict(saved["live"])
            if self.average is not None:
                self.average.updates = saved["ema_updates"]
        self.optimizer.load_state_dict(saved["optimizer"])
        if saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        if self.qat is not None:
            self.qat.load(saved["qat"])
        state = self.state
        state.epoch, state.step, state.epoch_step = saved["epoch"], saved["step"], saved["epoch_step"]
        state.step_losses, state.epochs = list(saved["step_losses"]), list(saved["epochs"])
        self.log(f"resuming {path}: epoch {state.epoch + 1}, step {state.step}")

    # -- sizes ----------------------------------------------------------------------------------------------
    def _batching(self, dataset_size: int) -> tuple[int, int, int]:
        """(images per rank per step, subdivisions, steps per epoch)."""
        batch, parts = self._batch_and_parts()
        world = self.ranks.world
        if batch % (world * parts):
            raise UsageError(f"batch {batch} does not split into {world} processes × {parts} subdivisions")
        if dataset_size < batch:
            raise UsageError(f"the training set has {dataset_size} images, fewer than one batch ({batch})")
        return batch // world, parts, dataset_size // batch

    def _batch_and_parts(self) -> tuple[int, int]:
        """``--batch``/``--subdivisions``, else the cfg's, except a test cfg's ``batch=1``."""
        net, config = self.graph.net, self.config
        if config.batch is not None:
            return config.batch, config.subdivisions or 1
        batch = opt.integer(net, "batch", 1)
        if batch > 1:
            return batch, config.subdivisions or opt.integer(net, "subdivisions", 1)
        return DEFAULT_BATCH, config.subdivisions or 1

    def run(self, dataset: torch.utils.data.Dataset | None, on_epoch: Callable | None) -> TrainResult:
        config = self.config
        dataset = dataset if dataset is not None else _train_dataset(config, self.graph)
        per_rank, parts, per_epoch = self._batching(len(dataset))  # type: ignore[arg-type]
        self.per_epoch = per_epoch
        self.stopped: str | None = None
        self.early_stop: TrainingStopped | None = None
        total = per_epoch * config.epochs
        if config.max_steps is not None:
            total = min(total, config.max_steps)
        self.schedule = learning_rate(self.graph, config, total)
        self.valid = self._valid_dataset() if config.eval_every and self.ranks.main else None
        self.multiscale = self._multiscale()
        output = Path(config.output)
        if self.ranks.main:
            output.mkdir(parents=True, exist_ok=True)
            self._start_up(len(dataset), per_rank * self.ranks.world, parts, per_epoch)  # type: ignore[arg-type]
        self.guard = DivergenceGuard(config.diverge_factor, config.diverge_steps)
        self.early = EarlyStop(config.patience, config.max_map_drop)
        self.lines = ProgressLines(self.log, total, config.log_every)
        self.lines.start(self.state.step)
        self.plots: list[Path] = []
        state = self.state
        if self.qat is not None and state.step == 0:
            batches = (images.to(self.device) for images, _, _ in self._loader(dataset, per_rank))
            self.qat.calibrate(islice(batches, config.qat_calibration))
        try:
            while state.step < total:
                record = self._epoch(dataset, per_rank, parts, per_epoch, total)
                if self.ranks.main:
                    self._epoch_outputs(record, output, final=state.step >= total, on_epoch=on_epoch)
        except TrainingStopped as stop:
            if stop.diverged:
                self._diverged(stop, output)
            self.log(f"stopped: {stop.reason}")
            self.stopped = stop.reason
        return self._finish(output)

    # -- start-up -------------------------------------------------------------------------------------------
    def _valid_dataset(self):
        from .dataset import DetectionDataset

        if self.config.data is None:
            raise UsageError("evaluating while training (--eval-every) needs --data with a valid= list")
        return DetectionDataset.from_data(self.config.data, "valid", self.graph, augment=False)

    def _multiscale(self):
        """darknet's random input sizes (:class:`~cfgsurgeon.train.dataset.MultiScale`) when this run uses
        them, else None: as the cfg's ``random=`` says unless ``multiscale`` is given."""
        from .dataset import MultiScale, multiscale_settings

        asked = multiscale_settings(self.graph)
        if self.config.multiscale is None:
            return asked
        return (asked or MultiScale(1.4, 32)) if self.config.multiscale else None

    def _start_up(self, images: int, batch: int, parts: int, per_epoch: int) -> None:
        """Log what this run will do, before it starts (with the warning about a test cfg's batch)."""
        config, graph = self.config, self.graph
        net = graph.net
        self.log(
            f"model: {config.cfg or config.weights or config.resume} ({len(graph.layers)} layers, "
            f"{graph.params:,} params, {graph.bflops:.3f} BFLOPs at {net.width}×{net.height}, "
            f"{self.loss.classes} classes); device {self.device}"
        )
        if config.batch is None and opt.integer(net, "batch", 1) <= 1:
            self.warn(
                f"the cfg's [net] batch=1 is a test setting; training with batch {batch} "
                "(choose with --batch / --subdivisions)"
            )
        for line in self._summary(images, batch, parts, per_epoch):
            self.log(line)

    def _summary(self, images: int, batch: int, parts: int, per_epoch: int) -> list[str]:
        """What this run will do, after the model line."""
        config = self.config
        every = "every epoch" if config.eval_every == 1 else f"every {config.eval_every} epochs"
        valid = f", {len(self.valid)} valid images evaluated {every}" if self.valid else ""
        lines = [
            f"data: {images} training images{valid}; batch {batch} in {parts} subdivisions, "
            f"{per_epoch} steps per epoch, {config.epochs} epochs",
            f"schedule: {self.schedule.describe()}; optimizer {self.optimizer.__class__.__name__.lower()}",
        ]
        if self.multiscale:
            lines.append(
                f"multi-scale: input sizes from ×1/{self.multiscale.factor:g} to ×{self.multiscale.factor:g} "
                f"(multiples of {self.multiscale.resize_step}, a new one every 10 steps)"
            )
        if self.penalty.schedule.strength:
            channels = sum(int(mask.sum()) for _, mask in self.penalty.targets)
            lines.append(
                f"sparsity: s={self.penalty.schedule.strength:g} ({self.penalty.schedule.kind}) on the γ of "
                f"{channels} BN channels in {len(self.penalty.targets)} layers (scope {self.penalty.scope})"
            )
        if self.fade.targets:
            lines.append(
                f"fade: the γ of {self.fade.channels} BN channels in {len(self.fade.targets)} layers shrink "
                "linearly to 0 over the run (prune-aware training)"
            )
        if self.qat is not None:
            lines.append(self.qat.describe())
        if self.average is not None:
            lines.append(
                f"ema: the moving average of the weights (decay {self.average.decay:g}, about "
                f"{1 / (1 - self.average.decay):.0f} steps) is evaluated and written"
            )
        if self.state.step:
            lines.append(f"resuming at epoch {self.state.epoch + 1}, step {self.state.step}")
        return lines

    def _loader(self, dataset: torch.utils.data.Dataset, per_rank: int) -> torch.utils.data.DataLoader:
        from torch.utils.data.distributed import DistributedSampler

        from .dataset import collate

        sampler = DistributedSampler(
            dataset, self.ranks.world, self.ranks.rank, shuffle=True, seed=self.config.seed, drop_last=True
        )
        sampler.set_epoch(self.state.epoch)
        resumed = _Resumed(sampler, self.state.epoch_step * per_rank)
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=per_rank,
            sampler=resumed,
            drop_last=True,
            collate_fn=collate,
            num_workers=self.config.workers,
        )

    def _epoch(self, dataset, per_rank: int, parts: int, per_epoch: int, total: int) -> EpochRecord:
        state = self.state
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(state.epoch)
        self.penalty.start_epoch(state.step / total)
        self.net_model.train()
        started = time.perf_counter()
        sums = np.zeros(6)
        count = 0
        batches = self._loader(dataset, per_rank)
        bar = self._progress(batches, per_epoch)
        label = f"epoch {state.epoch + 1}/{self.config.epochs}"
        for images, targets, _ in bar:
            if state.step >= total:
                break
            if self.qat is not None:
                self.qat.at_step(state.step, total)
            lr = self._step(images, targets, parts, state.step / total)
            self.fade.apply(state.step, total)
            if self.average is not None:
                self.average.update(self.model)
            sums += self._last_parts
            count += 1
            loss = float(self._last_parts[0])
            state.step_losses.append(loss)
            state.step += 1
            state.epoch_step += 1
            if bar is not batches and not bar.disable:
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}")
            elif bar is not batches:
                self.lines.step(label, state.step, loss, lr)
            self.guard.update(state.step, loss)
        if state.epoch_step >= per_epoch:
            state.epoch += 1
            state.epoch_step = 0
        means = sums / max(1, count)
        record = EpochRecord(
            epoch=state.epoch if state.epoch_step == 0 else state.epoch + 1,
            steps=state.step,
            loss=float(means[0]),
            box=float(means[1]),
            obj=float(means[2]),
            cls=float(means[3]),
            dfl=float(means[4]),
            distill=float(means[5]),
            lr=self.schedule(max(0, state.step - 1)),
            small_gamma=fraction_small(self.penalty.gammas()),
            seconds=time.perf_counter() - started,
            epoch_steps=count,
        )
        return record

    def _progress(self, batches, per_epoch: int):
        if not (self.config.progress and self.ranks.main):
            return batches
        from tqdm import tqdm

        epoch = self.state.epoch + 1
        # disable=None: a bar only on a terminal; elsewhere ProgressLines logs a line every log_every seconds
        label = f"epoch {epoch}/{self.config.epochs}"
        return tqdm(batches, desc=label, leave=False, dynamic_ncols=True, disable=None)

    def _step(self, images: Tensor, targets: Tensor, parts: int, progress: float) -> float:
        lr = self.schedule(self.state.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        totals = torch.zeros(6, device=self.device)
        chunks = list(_micro_batches(self._rescaled(images), targets, parts))
        for k, (chunk, rows) in enumerate(chunks):
            syncing = k == len(chunks) - 1 or not isinstance(
                self.net_model, nn.parallel.DistributedDataParallel
            )
            with contextlib.nullcontext() if syncing else self.net_model.no_sync():
                parts_now = self._forward(chunk.to(self.device), rows.to(self.device))
                self.scaler.scale(parts_now[0] / len(chunks)).backward()
            totals += torch.stack([p.detach() for p in parts_now]) / len(chunks)
        self.scaler.unscale_(self.optimizer)
        self.penalty.apply(progress)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self._last_parts = self.ranks.mean(totals).cpu().double().numpy()
        return lr

    def _rescaled(self, images: Tensor) -> Tensor:
        """The batch at this step's multi-scale input size (targets are normalised: they do not change)."""
        if self.multiscale is None:
            return images
        from .dataset import multiscale_size, resize_batch

        net, (factor, resize_step) = self.graph.net, self.multiscale
        size = multiscale_size(
            (net.width, net.height), self.state.step, self.config.seed, factor=factor, resize_step=resize_step
        )
        return resize_batch(images, size)

    def _autocast(self):
        dtype = torch.bfloat16 if self.device.type == "cpu" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.config.amp)

    def _forward(self, images: Tensor, targets: Tensor) -> tuple[Tensor, ...]:
        """(total, box, obj, cls, dfl, distill) of a micro-batch, the total with gradient."""
        with self._autocast():
            outputs = self.net_model(images, keep=self.loss.sources)
        terms = self.loss(outputs, targets)
        kd = terms.total.new_zeros(())
        if self.teacher is not None and self.distiller is not None:
            with torch.no_grad(), self._autocast():
                taught = self.teacher(images, keep=self.teacher_sources)
            kd = self.distiller(outputs, taught)
        dfl = terms.dfl if terms.dfl is not None else kd.new_zeros(())
        return terms.total + kd, terms.box, terms.obj, terms.cls, dfl, kd

    # -- outputs --------------------------------------------------------------------------------------------
    def _epoch_outputs(self, record: EpochRecord, output: Path, final: bool, on_epoch) -> None:
        config = self.config
        store_darknet_weights(self.deployed, self.graph)
        if self.penalty.schedule.strength and self.penalty.targets:
            record.safe_ratio = safe_slim_ratio(self.graph)
        try:
            best = self._evaluate(record, final) if self.valid is not None else False
        finally:  # a collapsed epoch is kept in the history too, though not in last.pt
            self.state.epochs.append(asdict(record))
        self.log(self._epoch_line(record))
        if config.gamma_plots and self.penalty.targets:
            path = output / "gamma" / f"epoch_{record.epoch:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            self.plots.append(plot_gamma_histogram(self.penalty.gammas(), path, f"epoch {record.epoch}"))
        if final or record.epoch % max(1, config.checkpoint_every) == 0:
            self._save_checkpoint(output / "last.pt")
        if best:
            self._save_best(output)
        self._write_history(output)
        if on_epoch is not None:
            on_epoch(record, self.graph)
        if self.early_stop is not None:
            raise self.early_stop

    def _evaluate(self, record: EpochRecord, final: bool) -> bool:
        """Validation metrics into ``record`` on evaluated epochs; True when they are the best so far."""
        from .evaluate import evaluate

        self.early_stop = None
        if not (final or record.epoch % self.config.eval_every == 0):
            return False
        metrics = evaluate(self.deployed, self.valid, names=self._names())
        record.P, record.R = _finite(metrics.P), _finite(metrics.R)
        record.map50, record.map50_95 = _finite(metrics.mAP50), _finite(metrics.mAP50_95)
        try:
            return self.early.update(record.epoch, metrics.mAP50)
        except TrainingStopped as stop:
            if stop.diverged:
                raise
            self.early_stop = stop  # after this epoch's outputs are written
            return False

    def _names(self) -> list[str] | None:
        from .dataset import read_data_file

        return read_data_file(self.config.data).names if self.config.data else None

    def _epoch_line(self, record: EpochRecord) -> str:
        steps = (
            f" ({record.epoch_steps} of {self.per_epoch} steps)"
            if record.epoch_steps < self.per_epoch
            else ""
        )
        line = (
            f"epoch {record.epoch}{steps}: loss {record.loss:.4f} ("
            + " ".join(f"{name} {getattr(record, name):.4f}" for name in self.loss.terms)
            + (f" distill {record.distill:.4f}" if self.teacher is not None else "")
            + f"), lr {record.lr:.3g}, |γ|<0.01: {100 * record.small_gamma:.1f}%"
        )
        if record.safe_ratio is not None:
            line += f", safe slim ratio {record.safe_ratio:.3f}"
        if record.map50 is not None:
            line += f"; valid P {_fmt(record.P)} R {_fmt(record.R)} mAP@0.5 {record.map50:.4f}"
            line += " (best)" if self.early.best_epoch == record.epoch else f" (best {self.early.best:.4f})"
        return line + f", {format_duration(record.seconds)}"

    def _save_checkpoint(self, path: Path) -> None:
        state = self.state
        self.graph.weights_header = self._header()
        extra = {
            "train": {
                "epoch": state.epoch,
                "step": state.step,
                "epoch_step": state.epoch_step,
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                "step_losses": list(state.step_losses),
                "epochs": list(state.epochs),
            }
        }
        if self.average is not None:  # the file's model is the average; training continues from these
            live = {key: value.detach().cpu() for key, value in self.model.state_dict().items()}
            extra["train"].update(live=live, ema_updates=self.average.updates)
        if self.qat is not None:
            extra["train"]["qat"] = self.qat.state()
        save_checkpoint(self.deployed, path, extra)

    def _save_best(self, output: Path) -> None:
        self._save_checkpoint(output / "best.pt")
        write_weights(self.graph, output / f"{self._stem()}_best.weights", self.graph.weights_header)

    def _stem(self) -> str:
        return Path(self.config.cfg).stem if self.config.cfg else "model"

    def _write_history(self, output: Path) -> None:
        state = self.state
        history = {"step_losses": state.step_losses, "epochs": state.epochs, "stopped": self.stopped}
        with atomic_output(output / "history.json", "w") as out:
            json.dump(history, out, indent=1)
        lrs = [self.schedule(step) for step in range(len(state.step_losses))]
        plot_history(state.step_losses, lrs, state.epochs, output / "history.png")

    def _diverged(self, stop: TrainingStopped, output: Path) -> None:
        """Write what happened and raise :class:`TrainingDiverged` with what to change."""
        self.stopped = stop.reason
        if self.ranks.main:
            self._write_history(output)
        config = self.config
        kept = [str(p) for p in (output / "last.pt", output / "best.pt") if p.exists()]
        advice = (
            f"lower --lr (this run: {self.schedule.base:g}) or lengthen --warmup "
            f"({self.schedule.warmup} steps)"
        )
        if self.penalty.schedule.strength:
            advice += f", or lower --sparsity (s={config.sparsity:g})"
        keep = f"kept {' and '.join(kept)} from before it" if kept else "no healthy epoch was saved"
        raise TrainingDiverged(f"training diverged: {stop.reason}; {keep}; {advice}")

    def _header(self) -> WeightsHeader:
        batch, _ = self._batch_and_parts()
        seen = self.header.seen + batch * (self.state.step - self.start_step)
        return WeightsHeader(self.header.major, self.header.minor, self.header.revision, seen)

    def _finish(self, output: Path) -> TrainResult:
        store_darknet_weights(self.deployed, self.graph)
        result = TrainResult(self.graph, list(self.state.step_losses), [], output, plots=self.plots)
        result.epochs = [EpochRecord(**entry) for entry in self.state.epochs]
        result.stopped = self.stopped
        if not self.ranks.main:
            return result
        self.graph.weights_header = self._header()
        result.weights = output / f"{self._stem()}.weights"
        write_weights(self.graph, result.weights, self.graph.weights_header)
        with atomic_output(output / f"{self._stem()}.cfg", "w") as out:
            out.write(cfg_text(self.graph))
        result.checkpoint = output / "last.pt"
        self._save_checkpoint(result.checkpoint)
        self._write_history(output)
        if (output / "best.pt").exists() and self.valid is not None:
            result.best = output / "best.pt"
        if self.qat is not None:
            result.int8 = self.qat.export(output / f"{self._stem()}_int8.onnx")
        return result


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
