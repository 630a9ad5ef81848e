"""Training on real data: the zoo's COCO yolov3-tiny on ``../shared/data/vehicles`` (4 classes), on a CPU.

Stages (each a folder under ``--out``; a finished stage is not run again, so the script resumes):

* ``coco``: the COCO model retargeted to bus/car/motorbike/truck by name (``retarget``: the four classes keep
  their COCO rows, so this *is* the COCO model's own score on those classes);
* ``finetune``: that model fine-tuned (``--ft-*`` recipe);
* ``sparse-sS-pP``: sparse training from the same pretrained model, one run per ``--sparsity`` value S and
  ``--protect`` share P (BN-L1 on slim's candidate channels, local decay from the start: the share P of the
  channels with the largest |γ|, chosen again every epoch, get s/100, the rest s — so the penalty drives the
  weakest channels to zero instead of shrinking every γ);
* ``pruned``: the chosen sparse model slim-pruned at its safe ratio (the share of |γ| < 0.01, capped at the
  bound that leaves every layer a channel) or ``--prune-ratio`` when that is larger, scored before and after
  ``--recover-epochs`` of fine-tuning.

Selection is on the valid split only (each run keeps its best epoch by valid mAP@0.5, and the sparse run is
the one with the most |γ| < 0.01 whose valid mAP@0.5 is within ``--max-drop`` of the fine-tuned baseline's);
every figure of the final table is on the test split, which nothing trains or selects on.

    python benchmarks/bench_vehicles.py --out runs/vehicles            # all stages, one after another
    python benchmarks/bench_vehicles.py --out runs/vehicles --stage sparse --sparsity 1.5   # one stage

The stages that train take minutes per epoch on a 2-core CPU (about 2.5 min for yolov3-tiny at 416×416);
``--stage`` lets independent ones (finetune and each sparse-S) run side by side.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

from cfgsurgeon import load_cfg, read_weights, write_cfg, write_weights
from cfgsurgeon.images import load_names
from cfgsurgeon.surgery.prune import prune
from cfgsurgeon.surgery.retarget import match_classes, retarget
from cfgsurgeon.train.dataset import DetectionDataset, read_data_file, read_image_list
from cfgsurgeon.train.evaluate import Metrics, evaluate
from cfgsurgeon.train.sparsity import safe_slim_ratio, slim_gammas
from cfgsurgeon.train.trainer import TrainConfig, TrainingDiverged, train

SHARED = Path(__file__).resolve().parents[2] / "shared"
MODELS = SHARED / "zoo" / "models"
DATA = SHARED / "data" / "vehicles" / "vehicles.data"
SMALL = 0.01


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def split(graph, name: str) -> DetectionDataset:
    """The un-augmented images of a split of the .data file (``test`` from test.txt beside it)."""
    spec = read_data_file(DATA)
    if name in ("train", "valid"):
        return DetectionDataset.from_data(spec, name, graph, augment=False)
    net = graph.net
    images = read_image_list(DATA.parent / f"{name}.txt")
    return DetectionDataset(images, (net.width, net.height), spec.classes, net.channels, bool(net.letter_box))


def scores(cfg: Path, weights: Path) -> dict:
    """valid and test metrics, params and BFLOPs of a model."""
    graph = load_cfg(cfg, warn=lambda m: None)
    read_weights(graph, weights)
    names = read_data_file(DATA).names
    row = {"cfg": str(cfg), "weights": str(weights), "params": graph.params, "bflops": round(graph.bflops, 4)}
    for name in ("valid", "test"):
        metrics: Metrics = evaluate(graph, split(graph, name), names=names)
        row[name] = {"P": metrics.P, "R": metrics.R, "mAP50": metrics.mAP50, "mAP50_95": metrics.mAP50_95}
    row["small_gamma"] = float(np.mean(slim_gammas(graph) < SMALL))
    return row


def stage_coco(out: Path) -> dict:
    graph = load_cfg(MODELS / "yolov3-tiny.cfg", warn=lambda m: None)
    read_weights(graph, MODELS / "yolov3-tiny.weights")
    spec = read_data_file(DATA)
    sources = match_classes(spec.names, load_names(MODELS / "coco.names"))
    folder = out / "coco"
    folder.mkdir(parents=True, exist_ok=True)
    retargeted = retarget(graph, spec.classes, sources)
    write_cfg(retargeted, folder / "yolov3-tiny.cfg")
    write_weights(retargeted, folder / "yolov3-tiny.weights")
    return scores(folder / "yolov3-tiny.cfg", folder / "yolov3-tiny.weights")


def run_training(start: dict, folder: Path, args, epochs: int, final: bool = False, **extra) -> dict:
    """Train from ``start``'s model into ``folder`` (a run that finished already is only scored again) and
    score the best valid epoch's weights, or with ``final`` the last epoch's (a sparse model to prune)."""
    config = TrainConfig(
        cfg=Path(start["cfg"]),
        weights=Path(start["weights"]),
        data=DATA,
        output=folder,
        epochs=epochs,
        batch=args.batch,
        optimizer="sgd",
        lr=args.lr,
        warmup=args.warmup,
        lr_policy="cosine",
        multiscale=False,
        eval_every=1,
        seed=args.seed,
        **extra,
    )
    last = folder / "yolov3-tiny.weights"
    if not last.exists():
        try:
            train(config, log=log)
        except TrainingDiverged as stop:  # its best epoch (and last.pt) are still there
            log(str(stop))
    history = json.loads((folder / "history.json").read_text())
    weights = last if final and last.exists() else folder / "yolov3-tiny_best.weights"
    row = scores(folder / "yolov3-tiny.cfg", weights)
    row["train_seconds"] = round(sum(e["seconds"] for e in history["epochs"]), 1)
    row["stopped"] = history["stopped"]
    row["settings"] = {"epochs": epochs, "lr": args.lr, "warmup": args.warmup, "batch": args.batch, **extra}
    row["history"] = [
        {"epoch": e["epoch"], "loss": e["loss"], "small_gamma": e["small_gamma"], "valid_map50": e["map50"]}
        for e in history["epochs"]
    ]
    return row


def stage_pruned(out: Path, sparse: dict, args) -> dict:
    graph = load_cfg(sparse["cfg"], warn=lambda m: None)
    read_weights(graph, sparse["weights"])
    safe = safe_slim_ratio(graph)
    ratio = max(safe, args.prune_ratio or 0.0)
    result = prune(graph, "slim", percent=ratio)
    folder = out / "pruned"
    folder.mkdir(parents=True, exist_ok=True)
    write_cfg(result.pruned, folder / "yolov3-tiny.cfg")
    write_weights(result.pruned, folder / "yolov3-tiny.weights")
    row = {"ratio": ratio, "safe_ratio": safe, "achieved": result.selection.achieved_ratio}
    row["before"] = scores(folder / "yolov3-tiny.cfg", folder / "yolov3-tiny.weights")
    row["after"] = run_training(row["before"], out / "recovered", args, args.recover_epochs)
    return row


def cached(path: Path, make) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    row = make()
    path.write_text(json.dumps(row, indent=1, default=str))
    return row


def choose_sparse(out: Path, baseline: dict, max_drop: float) -> dict:
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("sparse-*.json"))]
    within = [r for r in rows if r["valid"]["mAP50"] >= (1 - max_drop) * baseline["valid"]["mAP50"]]
    if within:
        return max(within, key=lambda r: r["small_gamma"])
    log(f"no sparse run kept its valid mAP@0.5 within {max_drop:.0%} of the baseline: the best one goes on")
    return max(rows, key=lambda r: r["valid"]["mAP50"])


def table(rows: list[tuple[str, dict]]) -> list[str]:
    lines = [
        "| model | test P | test R | test mAP@0.5 | test mAP@0.5:0.95 | valid mAP@0.5 | params | BFLOPs | "
        "|γ|<0.01 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows:
        t = r["test"]
        lines.append(
            f"| {name} | {t['P']:.3f} | {t['R']:.3f} | {t['mAP50']:.3f} | "
            f"{t['mAP50_95']:.3f} | {r['valid']['mAP50']:.3f} | {r['params']:,} | {r['bflops']:.3f} | "
            f"{100 * r['small_gamma']:.1f}% |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("runs/vehicles"))
    parser.add_argument("--stage", choices=("all", "finetune", "sparse", "report"), default="all")
    parser.add_argument("--epochs", type=int, default=6, help="fine-tuning and sparse-training epochs")
    parser.add_argument("--recover-epochs", type=int, default=4)
    parser.add_argument("--sparsity", type=float, nargs="+", default=[2.0])
    parser.add_argument("--protect", type=float, nargs="+", default=[0.8, 0.9])
    parser.add_argument("--schedule", choices=("local-decay", "layer-decay"), default="layer-decay")
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-drop", type=float, default=0.03)
    parser.add_argument(
        "--prune-ratio",
        type=float,
        help="slim ratio when above the sparse model's safe ratio (default: safe)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    coco = cached(out / "coco.json", lambda: stage_coco(out))
    if args.stage in ("all", "finetune"):
        cached(out / "finetune.json", lambda: run_training(coco, out / "finetune", args, args.epochs))
    if args.stage in ("all", "sparse"):
        for s, p in [(s, p) for s in args.sparsity for p in args.protect]:
            name = f"sparse-s{s:g}-p{p:g}" + ("-layer" if args.schedule == "layer-decay" else "")
            extra = {"sparsity": s, "sparsity_schedule": args.schedule, "sparsity_decay_start": 0.0}
            extra["sparsity_protect"] = p
            cached(
                out / f"{name}.json",
                lambda n=name, e=extra: run_training(coco, out / n, args, args.epochs, final=True, **e),
            )
    if args.stage not in ("all", "report"):
        return
    baseline = json.loads((out / "finetune.json").read_text())
    sparse = choose_sparse(out, baseline, args.max_drop)
    pruned = cached(out / "pruned.json", lambda: stage_pruned(out, sparse, args))
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if "Model name" in line), "?")
    print(f"CPU: {model} ({'AVX-512' if 'avx512f' in cpu else 'AVX2'}), {platform.python_version()}")
    rows = [
        ("COCO yolov3-tiny (retargeted, no training)", coco),
        ("fine-tuned", baseline),
        (
            f"sparse-trained (s={sparse['settings']['sparsity']:g}, "
            f"{1 - sparse['settings']['sparsity_protect']:.0%} penalised)",
            sparse,
        ),
        (f"slim {pruned['achieved']:.3f}, not fine-tuned", pruned["before"]),
        ("slim, recovered", pruned["after"]),
    ]
    print("\n".join(table(rows)))
    print(
        f"fine-tuned vs COCO (test mAP@0.5): {baseline['test']['mAP50'] / coco['test']['mAP50']:.3f}×; "
        f"recovered vs fine-tuned: {pruned['after']['test']['mAP50'] / baseline['test']['mAP50']:.3f}× at "
        f"{pruned['after']['bflops'] / baseline['bflops']:.3f}× the BFLOPs"
    )


if __name__ == "__main__":
    main()
