"""Training commands: train, sparsify (TF Model Optimization), synth (the synthetic dataset)."""

from __future__ import annotations

from pathlib import Path

import click

from ..emit.quantization import QUANTIZE
from ..errors import UsageError
from ..train.options import (
    DISTILL_MODES,
    LR_POLICIES,
    OPTIMIZERS,
    QAT_SCHEMES,
    SPARSITY_SCHEDULES,
    SPARSITY_SCOPES,
)
from . import main
from .common import CFG, WEIGHTS_REQUIRED, load_model


@main.command()
@click.option(
    "--cfg",
    "cfg",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Darknet model description (.cfg) to train; its [net] gives the defaults below. Not needed with "
    "--resume or a .pt --weights (they carry their cfg).",
)
@click.option(
    "--data",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Darknet .data file: its train= image list is trained on (labels as darknet finds them).",
)
@click.option(
    "--weights",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Start from these weights (.weights or a .pt checkpoint). Heads of another class count (e.g. COCO "
    "weights for a retargeted cfg) are fine: matching layers load, the rest start as from scratch and a "
    "warning names them. Default: from scratch (seeded init).",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for last.pt (resumable), NAME.weights + NAME.cfg (final), gamma/*.png and history.json.",
)
@click.option("--resume", type=click.Path(dir_okay=False, path_type=Path), help="Continue from a last.pt.")
@click.option("--epochs", default=10, show_default=True, type=click.IntRange(1), help="Passes over the data.")
@click.option("--max-steps", type=click.IntRange(1), help="Stop after this many optimizer steps in all.")
@click.option("--batch", type=click.IntRange(1), help="Images per optimizer step, all ranks ([net] batch).")
@click.option("--subdivisions", type=click.IntRange(1), help="Micro-batches per step ([net] subdivisions).")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), help="Default: adam if [net] adam=1, else sgd.")
@click.option("--lr", type=float, help="Base learning rate ([net] learning_rate).")
@click.option("--momentum", type=float, help="SGD momentum / Adam beta1 ([net] momentum / B1).")
@click.option("--weight-decay", type=float, help="L2 decay of conv/fc weights ([net] decay).")
@click.option("--warmup", type=click.IntRange(0), help="Burn-in steps, lr·(step/N)^power ([net] burn_in).")
@click.option(
    "--lr-policy",
    type=click.Choice(LR_POLICIES),
    help="Learning-rate policy after burn-in ([net] policy; its steps= are rescaled from max_batches to the "
    "run's length).",
)
@click.option(
    "--sparsity",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0),
    help="s of the L1 penalty on BN γ (network slimming): s·sign(γ) is added to γ's gradient every step.",
)
@click.option(
    "--sparsity-schedule",
    default="constant",
    show_default=True,
    type=click.Choice(SPARSITY_SCHEDULES),
    help="constant: s throughout; global-decay: s/100 from --sparsity-decay-start on; local-decay: from "
    "then on, s/100 for the --sparsity-protect share of largest |γ| (the channels pruning keeps, chosen "
    "again every epoch), s for the rest; layer-decay: the same share within each layer.",
)
@click.option(
    "--sparsity-decay-start",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Share of the run after which global-/local-decay apply (0: from the start).",
)
@click.option(
    "--sparsity-protect",
    default=0.3,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="local-decay: share of the penalised channels, largest |γ| first, whose penalty decays to s/100.",
)
@click.option(
    "--sparsity-scope",
    default="slim",
    show_default=True,
    type=click.Choice(SPARSITY_SCOPES),
    help="Which BN channels are penalised: those the prune --method of that name may remove (normal leaves "
    "shortcut-coupled layers alone), or all BN layers.",
)
@click.option("--teacher-cfg", type=click.Path(dir_okay=False, path_type=Path), help="Distillation teacher.")
@click.option(
    "--teacher-weights",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Teacher weights (.weights or .pt); the teacher needs the same [yolo] heads as the student.",
)
@click.option(
    "--distill",
    default="detection",
    show_default=True,
    type=click.Choice(DISTILL_MODES),
    help="detection: soft objectness everywhere; classes and boxes weighted by the teacher's objectness, "
    "so the student copies the teacher where it sees objects. soft: soft labels on objectness and class "
    "logits in every slot, background included (on a real pruned yolov3-tiny its term was 100× the "
    "detection loss at weight 1; detection's was 0.5×).",
)
@click.option(
    "--distill-weight",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Factor of the distillation term added to the detection loss.",
)
@click.option(
    "--distill-temperature",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0, min_open=True),
    help="Logits are divided by T (and the term multiplied by T²) before comparing student and teacher.",
)
@click.option(
    "--ema",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 1, max_open=True),
    help="Evaluate and write a moving average of the weights with this decay (it averages about "
    "1/(1-decay) steps: e.g. 0.99 for a few hundred steps, 0.9999 for long runs); 0: off. Resumable; "
    "last.pt holds the average as its model and the live weights for --resume.",
)
@click.option(
    "--qat",
    type=click.Choice(QAT_SCHEMES),
    help="Quantization-aware training from the starting weights: int8 (per-channel weights with BN folded, "
    "per-tensor activations), dorefa (k-bit, --bits) or pow2 (int8 with power-of-two scales: shifts). Also "
    "writes NAME_int8.onnx (QDQ with the learned scales) for ONNX Runtime and OpenVINO; the .weights stay "
    "float.",
)
@click.option("--bits", "qat_bits", type=click.IntRange(2, 8), help="--qat dorefa: bit width (default 4).")
@click.option(
    "--qat-calibration",
    default=8,
    show_default=True,
    type=click.IntRange(1),
    help="--qat: batches that start the activation ranges (float model).",
)
@click.option(
    "--qat-freeze-bn",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="--qat: share of the run after which BN statistics freeze (the conv runs folded from then on).",
)
@click.option(
    "--qat-freeze-ranges",
    default=0.75,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="--qat: share of the run after which the activation ranges stop moving.",
)
@click.option("--amp", is_flag=True, help="Mixed precision: bf16 autocast on CPU, fp16 + GradScaler on CUDA.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--seed", default=0, show_default=True, help="Seed of the init, shuffling and augmentation.")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(0), help="DataLoader workers.")
@click.option("--no-augment", is_flag=True, help="Train on the plain resized images.")
@click.option(
    "--multiscale/--no-multiscale",
    default=None,
    help="darknet's random=1: a new input size (multiples of 32, ×1/1.4…×1.4) every 10 steps. Default: as "
    "the cfg's last [yolo]/[region] random= says.",
)
@click.option(
    "--eval-every",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    help="Score the --data file's valid= images every N epochs (P, R, mAP) and keep the best as best.pt and "
    "NAME_best.weights; 0: never.",
)
@click.option(
    "--patience",
    type=click.IntRange(1),
    help="With --eval-every: stop after this many evaluations without a better mAP@0.5.",
)
@click.option(
    "--max-map-drop",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="With --eval-every: a valid mAP@0.5 below (1 - this) × its best stops the run as diverged.",
)
@click.option(
    "--diverge-factor",
    default=3.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Stop as diverged when the smoothed loss stays above this × its lowest level for 10 steps (0: off).",
)
@click.option(
    "--log-every",
    default=30.0,
    show_default=True,
    type=click.FloatRange(1),
    help="Seconds between progress lines when stderr is not a terminal (a log file, nohup).",
)
@click.option("--no-progress", is_flag=True, help="No progress bar or lines (one line per epoch still).")
def train(
    output: Path,
    cfg: Path | None,
    weights: Path | None,
    resume: Path | None,
    teacher_cfg: Path | None,
    teacher_weights: Path | None,
    no_augment: bool,
    no_progress: bool,
    **options,
) -> None:
    """Train a darknet cfg on a darknet dataset: SGD/Adam with darknet's burn-in and lr policy, optional
    sparse training (BN-L1) and distillation; resumable. Under torchrun it runs DDP (gloo on CPU, nccl on
    CUDA) with the same command line.

    The cfg's [net] gives the defaults, fitted to the run: steps= and burn_in are rescaled from max_batches
    to the run's length (burn-in at most a tenth of it), and a test cfg's batch=1 becomes batch 16. The
    start-up lines print the schedule this run uses. A run whose loss (or valid mAP) runs away stops with a
    non-zero exit, keeping last.pt of the last healthy epoch.

    Recipes measured on real photos (benchmarks/bench_vehicles.py; README "Training on real data"): to
    fine-tune a pretrained or retargeted model, or recover a pruned one, --optimizer sgd --lr 0.001
    --warmup 20 --lr-policy cosine --batch 16 --eval-every 1, 4-6 epochs for a few hundred images. Sparse
    training from a pretrained model at that lr: --sparsity 2 --sparsity-schedule layer-decay
    --sparsity-decay-start 0 --sparsity-protect 0.9 drives about a tenth of the γ toward 0; expect a mAP
    cost (measured there) and let the pruned model's fine-tuning recover it. Plain --sparsity without a
    decay schedule shrinks every γ of a pretrained model (darknet's are about 1) and its mAP collapses: the
    guard stops it."""
    from ..api import Model

    if cfg is None and resume is None and (weights is None or weights.suffix != ".pt"):
        raise UsageError("give --cfg (or --resume / a .pt --weights)")
    if teacher_cfg is not None and teacher_weights is None:
        raise UsageError(
            "--teacher-cfg needs --teacher-weights (a teacher with random weights teaches noise)"
        )
    teacher = None if teacher_weights is None else load_model(teacher_cfg, teacher_weights)
    options.update(
        teacher=teacher,
        augment=not no_augment,
        progress=not no_progress,
        log=lambda message: click.echo(message, err=True),
    )
    if resume is not None:
        trained = Model.resume(resume, output=output, cfg=cfg, **options)
    elif cfg is None:
        trained = load_model(None, weights).train(output=output, **options)
    else:
        trained = load_model(cfg).train(output=output, weights=weights, **options)
    if trained.lines():  # DDP ranks other than 0 write and print nothing
        click.echo(str(trained))


@main.command()
@CFG
@WEIGHTS_REQUIRED
@click.option("--final-sparsity", default=0.5, show_default=True, type=click.FloatRange(0, 1, max_open=True))
@click.option(
    "--initial-sparsity", default=0.0, show_default=True, type=click.FloatRange(0, 1, max_open=True)
)
@click.option("--begin-step", default=0, show_default=True, type=click.IntRange(0))
@click.option(
    "--end-step",
    default=1000,
    show_default=True,
    type=click.IntRange(1),
    help="PolynomialDecay reaches --final-sparsity here (end - begin must be a multiple of --frequency).",
)
@click.option(
    "--frequency", default=100, show_default=True, type=click.IntRange(1), help="Steps between masks."
)
@click.option(
    "--block-size",
    default="1,1",
    show_default=True,
    help="Zeros in whole rows×cols blocks of each kernel's (in × out) matrix, per tap for convolutions "
    "(e.g. 1,16 or 4,4); layers that are no whole number of blocks stay dense.",
)
@click.option(
    "--skip-layers",
    default="",
    help="Layer indices (comma-separated) to keep dense, besides the protected first/last convolutions "
    "and those feeding detection heads.",
)
@click.option("--prune-whole-model", is_flag=True, help="Do not protect first/last/head convolutions.")
@click.option("--fine-tune", is_flag=True, help="Run the schedule while fine-tuning on --data (YOLO loss).")
@click.option(
    "--data", type=click.Path(dir_okay=False, path_type=Path), help="Darknet .data file (--fine-tune)."
)
@click.option("--epochs", default=1, show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1))
@click.option("--lr", default=1e-4, show_default=True, type=click.FloatRange(0, min_open=True))
@click.option("--max-steps", type=click.IntRange(1), help="Stop fine-tuning after this many steps.")
@click.option(
    "--tflite/--no-tflite",
    default=True,
    show_default=True,
    help="Also write sparse.tflite and report its sizes, error and latency against the dense model.",
)
@click.option(
    "--quantize",
    type=click.Choice(QUANTIZE),
    default="none",
    show_default=True,
    help="Quantization of the .tflite files (int8 needs --calibration).",
)
@click.option(
    "--calibration",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A list of real images for int8 calibration (its first image also measures the TFLite error).",
)
@click.option("--num-calibration-images", default=300, show_default=True, type=click.IntRange(1))
@click.option(
    "--runs", default=20, show_default=True, type=click.IntRange(0), help="Timed TFLite runs (0: none)."
)
@click.option(
    "--warmup", default=3, show_default=True, type=click.IntRange(0), help="Untimed TFLite runs first."
)
@click.option(
    "--threads",
    type=click.IntRange(1),
    help="TFLite threads for the latency (default: the idle CPUs, at least 1).",
)
@click.option(
    "-o",
    "--output",
    "outdir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for sparse.weights, sparse.keras, sparse.tflite, report.json and report.md.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def sparsify(
    cfg: Path,
    weights: Path,
    outdir: Path,
    as_json: bool,
    block_size: str,
    skip_layers: str,
    prune_whole_model: bool,
    **options,
) -> None:
    """Magnitude pruning with TF Model Optimization, written back as darknet .weights.

    Without --fine-tune the kernels are pruned once to --final-sparsity (no data needed); with it, the
    PolynomialDecay schedule runs while the model trains on --data. Prints the compression report.
    """
    from ..sparsify.selection import parse_block, parse_indices

    block, skip = parse_block(block_size), parse_indices(skip_layers)
    report = load_model(cfg, weights).sparsify(
        outdir,
        block=block,
        skip=skip,
        whole_model=prune_whole_model,
        progress=True,
        log=lambda message: click.echo(message, err=True),
        **options,
    )
    click.echo(report.json() if as_json else str(report))


@main.command()
@click.option(
    "-o",
    "--output",
    "outdir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the dataset (created; an earlier synthetic dataset there is replaced).",
)
@click.option("--classes", default=3, show_default=True, type=click.IntRange(1, 6), help="Shape classes.")
@click.option("--train", "train_images", default=512, show_default=True, type=click.IntRange(0))
@click.option("--valid", "valid_images", default=128, show_default=True, type=click.IntRange(0))
@click.option("--size", default=128, show_default=True, type=click.IntRange(32), help="Square image size.")
@click.option("--seed", default=0, show_default=True, help="Random seed (same options → identical files).")
def synth(outdir: Path, classes: int, train_images: int, valid_images: int, size: int, seed: int) -> None:
    """Write the synthetic shapes dataset (circle, square, triangle, ...) in darknet format."""
    from ..api.training import synth_dataset

    report = synth_dataset(
        outdir, classes=classes, train=train_images, valid=valid_images, size=size, seed=seed
    )
    click.echo(str(report))
