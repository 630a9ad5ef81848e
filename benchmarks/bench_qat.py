"""Quantization-aware training against float fine-tuning on the demo's yolo-nano (synthetic shapes, 128×128).

From one float start (the demo's baseline: ``cfg/yolo-nano.cfg`` trained from scratch as ``cfgsurgeon demo``
trains it, or ``--start WEIGHTS``), the same fine-tuning (Adam, cosine, same epochs, seed and images) runs
four times: float, ``--qat int8``, ``--qat pow2`` and ``--qat dorefa --bits 4``. Each is scored on the valid
split: the trainer's evaluation of the model it trained (the fake-quantized one for QAT) and, for QAT, the
``NAME_int8.onnx`` it wrote, run by ONNX Runtime (int8 kernels). Targets (issue 16): int8 and pow2 ≥ 0.98 of
the float fine-tune's mAP@0.5, 4-bit DoReFa ≥ 0.90.

    nice -n 19 python benchmarks/bench_qat.py --out runs/qat [--start W] [--epochs 2]

Writes ``OUT/qat.json`` and prints the CPU (``lscpu``'s model name) and a table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from cfgsurgeon import Model
from cfgsurgeon.api.training import synth_dataset
from cfgsurgeon.demo import DEFAULT_CFG, FULL

RUNS = {
    "float": {},
    "int8": {"qat": "int8"},
    "pow2": {"qat": "pow2"},
    "dorefa-4": {"qat": "dorefa", "qat_bits": 4},
}
TARGETS = {"int8": 0.98, "pow2": 0.98, "dorefa-4": 0.90}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cpu_name() -> str:
    found = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in found.splitlines() if "Model name" in line), "?")


def float_start(data: Path, out: Path, seed: int) -> Path:
    """The demo's baseline: trained from scratch with the demo's settings."""
    trained = Model.load(DEFAULT_CFG).train(
        data,
        out / "start",
        epochs=FULL.baseline_epochs,
        batch=FULL.batch,
        optimizer="adam",
        lr=FULL.lr,
        warmup=FULL.warmup,
        lr_policy="cosine",
        seed=seed,
        log=log,
    )
    assert trained.weights is not None
    return trained.weights


def fine_tune(name: str, data: Path, start: Path, out: Path, args: argparse.Namespace) -> dict:
    began = time.process_time()
    trained = Model.load(DEFAULT_CFG).train(
        data,
        out / name,
        weights=start,
        epochs=args.epochs,
        batch=FULL.batch,
        optimizer="adam",
        lr=args.lr,
        warmup=0,
        lr_policy="cosine",
        seed=args.seed,
        eval_every=args.epochs,
        log=log,
        **RUNS[name],
    )
    row = {"model": name, "map50": trained.epochs[-1].map50, "cpu_s": time.process_time() - began}
    if trained.int8 is not None:
        runtime = Model.load(DEFAULT_CFG).evaluate(data, backend="onnxruntime", model=trained.int8)
        row["onnxruntime_map50"] = runtime.mAP50
    log(f"{name}: {row}")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--start", type=Path, help="float weights of yolo-nano to start from (default: train)"
    )
    parser.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs of every run")
    parser.add_argument("--lr", type=float, default=0.0005, help="Adam's lr of the fine-tuning (cosine)")
    parser.add_argument("--train-images", type=int, default=FULL.train_images)
    parser.add_argument("--valid-images", type=int, default=FULL.valid_images)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default=",".join(RUNS), help="which fine-tunes (float is always run)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as the demo: tiny convolutions, a shared CPU, repeatable
    args.out.mkdir(parents=True, exist_ok=True)
    data = synth_dataset(
        args.out / "data", train=args.train_images, valid=args.valid_images, size=128, seed=args.seed
    ).data_file
    start = args.start or float_start(data, args.out, args.seed)
    start_map = Model.load(DEFAULT_CFG, start).evaluate(data).mAP50
    names = ["float", *(name for name in args.runs.split(",") if name != "float")]
    rows = [fine_tune(name, data, start, args.out, args) for name in names]
    base = rows[0]["map50"]
    for row in rows[1:]:
        row["ratio"] = row["map50"] / base
        row["onnxruntime_ratio"] = row["onnxruntime_map50"] / base
        row["target"] = TARGETS[row["model"]]
    result = {"cpu": cpu_name(), "start": str(start), "start_map50": start_map, **vars(args), "rows": rows}
    with open(args.out / "qat.json", "w") as out:
        json.dump(result, out, indent=1, default=str)
    print(
        f"CPU: {result['cpu']}; float start mAP@0.5 {start_map:.4f}; {args.epochs} epochs of fine-tuning each"
    )
    print(f"{'model':10} {'mAP@0.5':>8} {'ratio':>6} {'ORT int8':>9} {'ratio':>6} {'target':>6} {'CPU s':>6}")
    for row in rows:
        nan = float("nan")
        runtime = f"{row.get('onnxruntime_map50', nan):9.4f} {row.get('onnxruntime_ratio', nan):6.3f}"
        print(
            f"{row['model']:10} {row['map50']:8.4f} {row.get('ratio', 1.0):6.3f} {runtime} "
            f"{row.get('target', nan):6.2f} {row['cpu_s']:6.0f}"
        )


if __name__ == "__main__":
    main()
