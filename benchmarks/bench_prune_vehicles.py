"""Pruning on real data: the fine-tuned vehicles yolov3-tiny made smaller by ``iterate`` (sensitivity → plan →
prune → fine-tune, step by step) and, at the same BFLOPs with the same fine-tuning epochs, by one uniform
``slim`` prune — on a CPU.

Stages (each a folder and a JSON under ``--out``; a finished stage is not run again, so the script resumes):

* the fine-tuned baseline of ``bench_vehicles.py`` (its ``coco`` and ``finetune`` stages, run if missing);
* ``iterate-50``: ``iterate`` from the baseline to ``--target`` of its BFLOPs (``--step`` per step,
  ``--epochs-per-step`` of fine-tuning after each prune), then ``--final-epochs`` more;
* ``slim-50``: the baseline slim-pruned (``prune_to_target``) to the BFLOPs ``iterate-50`` reached, then
  fine-tuned for as many epochs as ``iterate-50`` had in all;
* ``iterate-30`` / ``slim-30``: the same to ``--second-target`` (iterate continues from ``iterate-50``).

Selection is on the valid split (each fine-tuning keeps its best valid epoch; the loop's stop rule); every
figure of the final table is on the test split. Latency: OpenVINO (or ``--backend``), the models interleaved.

    python benchmarks/bench_prune_vehicles.py --out runs/vehicles
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_vehicles import DATA, cached, log, run_training, scores, stage_coco  # noqa: E402

from cfgsurgeon import load_cfg, read_weights, write_cfg, write_weights  # noqa: E402
from cfgsurgeon.bench import ModelSpec, bench, table_lines  # noqa: E402
from cfgsurgeon.errors import UsageError  # noqa: E402
from cfgsurgeon.surgery.criteria import attach_importance  # noqa: E402
from cfgsurgeon.surgery.plan import make_plan, plan_channels, prune_units  # noqa: E402
from cfgsurgeon.surgery.target import prune_to_target  # noqa: E402
from cfgsurgeon.train.importance import taylor_importance  # noqa: E402
from cfgsurgeon.train.options import DISTILL_MODES  # noqa: E402
from cfgsurgeon.workflow.iterate import IterateSettings, iterate  # noqa: E402
from cfgsurgeon.workflow.sensitivity import sensitivity  # noqa: E402


def baseline(out: Path, args) -> dict:
    coco = cached(out / "coco.json", lambda: stage_coco(out))
    return cached(out / "finetune.json", lambda: run_training(coco, out / "finetune", args, args.epochs))


def stage_iterate(start: dict, folder: Path, target: float, step: float, args) -> dict:
    settings = IterateSettings(
        target_bflops=target,
        step=step,
        epochs_per_step=args.epochs_per_step,
        max_drop=args.max_drop,
        criterion=args.criterion,
        proxy=not args.map_analysis,
        images=args.images,
        rates=tuple(args.rates),
        train={**training_options(args), **teacher(args), "warmup": args.step_warmup},
    )
    result = iterate(Path(start["cfg"]), Path(start["weights"]), DATA, folder, settings, log=log)
    final = result.final
    row = (
        run_training(final, folder / "final", args, args.final_epochs, **teacher(args))
        if args.final_epochs
        else scores(Path(final["cfg"]), Path(final["weights"]))
    )
    row["steps"] = [
        {k: s[k] for k in ("step", "bflops", "params", "valid_pruned", "valid", "seconds")}
        for s in result.steps
    ]
    row["stopped"] = result.stopped
    row["epochs"] = args.epochs_per_step * (len(result.steps) - 1) + args.final_epochs
    return row


def stage_plan(start: dict, folder: Path, target: float, epochs: int, args) -> dict:
    """[importance on training images (``--criterion taylor``)] → sensitivity → plan → [prune-aware
    training: the plan's channels fade to 0 over ``--fade-epochs``] → the plan's prune →
    ``epochs`` of fine-tuning; ``target``: share of ``start``'s BFLOPs. Wall and CPU time of the
    whole recipe are recorded."""
    wall, cpu = time.perf_counter(), time.process_time()
    graph = load_cfg(Path(start["cfg"]), warn=lambda m: None)
    read_weights(graph, Path(start["weights"]))
    folder.mkdir(parents=True, exist_ok=True)
    if args.criterion == "taylor":
        graph = attach_importance(graph, taylor_importance(graph, DATA, images=args.importance_images))
    analysis = sensitivity(
        graph,
        DATA,
        rates=args.rates,
        criterion=args.criterion,
        images=args.images,
        proxy=not args.map_analysis,
        state=folder / "sensitivity.json",
        warn=log,
    )
    plan = make_plan(analysis, graph, target_bflops=target, round_to=args.round_to)
    result = prune_units(graph, plan["rates"], plan["criterion"], plan["round_to"])
    row = {"plan": plan["rates"], "epochs": args.fade_epochs + epochs}
    if args.fade_epochs:
        channels = plan_channels(graph, plan)
        log(f"plan: {plan['rates']}; fading {sum(map(len, channels.values()))} channels")
        faded = run_training(
            start, folder / "fade", args, args.fade_epochs, final=True, fade=channels, max_map_drop=1.0
        )
        graph = load_cfg(Path(faded["cfg"]), warn=lambda m: None)
        read_weights(graph, Path(faded["weights"]))
        result = prune_units(graph, plan["rates"], "bn-gamma", plan["round_to"])  # the faded γ are 0
        row["faded"] = faded
    (folder / "pruned").mkdir(exist_ok=True)
    write_cfg(result.pruned, folder / "pruned" / "yolov3-tiny.cfg")
    write_weights(result.pruned, folder / "pruned" / "yolov3-tiny.weights")
    row["pruned"] = scores(folder / "pruned" / "yolov3-tiny.cfg", folder / "pruned" / "yolov3-tiny.weights")
    log(f"plan {plan['rates']}: pruned valid mAP@0.5 {row['pruned']['valid']['mAP50']:.3f}")
    finetune = run_training(row["pruned"], folder / "finetune", args, epochs, **after_prune(args))
    row = {**finetune, **row}
    row["recipe_seconds"] = round(time.perf_counter() - wall, 1)
    row["recipe_cpu_seconds"] = round(time.process_time() - cpu, 1)
    return row


def stage_slim(start: dict, folder: Path, bflops: float, epochs: int, args) -> dict:
    graph = load_cfg(Path(start["cfg"]), warn=lambda m: None)
    read_weights(graph, Path(start["weights"]))
    share = bflops / graph.bflops
    try:  # uniform slim as darknet users run it: one global γ threshold
        result = prune_to_target(graph, "slim", target_bflops=share, criterion="bn-gamma")
    except UsageError as refused:  # slim's bound leaves more than the share: past it, as the user would force
        log(f"{refused}; forcing")
        result = prune_to_target(graph, "slim", target_bflops=share, criterion="bn-gamma", force=True)
    folder.mkdir(parents=True, exist_ok=True)
    write_cfg(result.pruned, folder / "yolov3-tiny.cfg")
    write_weights(result.pruned, folder / "yolov3-tiny.weights")
    pruned = scores(folder / "yolov3-tiny.cfg", folder / "yolov3-tiny.weights")
    # its valid mAP is so low that noise halves it: the guard against divergence would stop it at random
    row = run_training(pruned, folder / "finetune", args, epochs, max_map_drop=1.0, **after_prune(args))
    row["pruned"] = pruned
    return row


def after_prune(args) -> dict:
    """The options of every fine-tuning after a prune: the teacher, and ``--ema``'s averaged weights."""
    return {**teacher(args), **({"ema": args.ema} if args.ema else {})}


def teacher(args) -> dict:
    """Every fine-tuning after a prune (the recipe's and uniform slim's alike) distils from the fine-tuned
    baseline in ``--distill`` mode (``none``: labels only)."""
    if args.distill == "none":
        return {}
    folder = args.out / "finetune"
    return {
        "teacher_cfg": folder / "yolov3-tiny.cfg",
        "teacher_weights": folder / "yolov3-tiny_best.weights",
        "distill": args.distill,
    }


def training_options(args) -> dict:
    return {
        "batch": args.batch,
        "optimizer": "sgd",
        "lr": args.lr,
        "warmup": args.warmup,
        "lr_policy": "cosine",
        "multiscale": False,
    }


def latency(rows: list[tuple[str, dict]], backend: str) -> dict:
    specs = [ModelSpec(Path(row["cfg"]), Path(row["weights"])) for _, row in rows]
    report = bench(specs, backend=backend, runs=30, warmup=5, interleave=True)
    print("\n".join(table_lines(report)))
    return {
        name: model["latency_ms"]["median"] for (name, _), model in zip(rows, report["models"], strict=True)
    }


def table(rows: list[tuple[str, dict]], base: dict, ms: dict) -> list[str]:
    lines = [
        "| model | params | BFLOPs | test mAP@0.5 | × baseline | test mAP@0.5:0.95 | valid mAP@0.5 "
        "| latency ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows:
        lines.append(
            f"| {name} | {row['params']:,} | {row['bflops']:.3f} ({row['bflops'] / base['bflops']:.0%}) | "
            f"{row['test']['mAP50']:.3f} | {row['test']['mAP50'] / base['test']['mAP50']:.3f} | "
            f"{row['test']['mAP50_95']:.3f} | {row['valid']['mAP50']:.3f} | "
            f"{ms.get(name, float('nan')):.1f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("runs/vehicles"))
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--second-target", type=float, default=0.3)
    parser.add_argument("--step", type=float, default=0.25)
    parser.add_argument("--epochs-per-step", type=int, default=3)
    parser.add_argument("--final-epochs", type=int, default=2)
    parser.add_argument("--criterion", default="bn-gamma")
    parser.add_argument("--map-analysis", action="store_true", help="analyse with valid mAP, not the proxy")
    parser.add_argument("--images", type=int, default=64, help="images per sensitivity analysis")
    parser.add_argument("--max-drop", type=float, default=0.1)
    parser.add_argument("--rates", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.5])
    parser.add_argument("--step-warmup", type=int, default=5, help="warm-up steps of each step's fine-tuning")
    parser.add_argument("--backend", default="openvino")
    parser.add_argument("--epochs", type=int, default=6, help="baseline fine-tuning epochs (bench_vehicles)")
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-second", action="store_true")
    parser.add_argument(
        "--skip-second-slim", action="store_true", help="no uniform slim at the second target"
    )
    parser.add_argument(
        "--distill",
        choices=("none", *DISTILL_MODES),
        default="detection",
        help="distillation from the baseline in every fine-tuning after a prune",
    )
    parser.add_argument(
        "--recipe",
        choices=("plan", "iterate"),
        default="plan",
        help="plan: sensitivity → plan → [prune-aware training] → prune → fine-tune; iterate: the loop",
    )
    parser.add_argument("--fade-epochs", type=int, default=0, help="prune-aware training before the prune")
    parser.add_argument("--importance-images", type=int, default=128, help="--criterion taylor: images")
    parser.add_argument("--finetune-epochs", type=int, default=8)
    parser.add_argument(
        "--second-epochs", type=int, default=0, help="fine-tuning at the second target (0: --finetune-epochs)"
    )
    parser.add_argument("--round-to", type=int, default=1)
    parser.add_argument(
        "--ema", type=float, default=0.0, help="fine-tune after each prune with train's --ema DECAY (0: off)"
    )
    args = parser.parse_args()
    out = args.out
    base = baseline(out, args)
    recipe = args.recipe
    if recipe == "plan":  # the folders say what ran; iterate's keep their first names
        recipe = f"plan-{args.criterion}" + (f"-fade{args.fade_epochs}" if args.fade_epochs else "")
        recipe += "" if args.distill == "none" else f"-kd-{args.distill}"
        recipe += f"-e{args.finetune_epochs}" + (f"-ema{args.ema:g}" if args.ema else "")
    slim_tag = "slim" if recipe == "iterate" else f"slim-{recipe}"

    def reduce(start: dict, tag: str, share: float, step: float, epochs: int) -> dict:
        if recipe != "iterate":
            return stage_plan(start, out / tag, share, epochs, args)
        return stage_iterate(start, out / tag, share, step, args)

    first = cached(
        out / f"{recipe}-50.json",
        lambda: reduce(base, f"{recipe}-50", args.target, args.step, args.finetune_epochs),
    )
    rows = [("fine-tuned baseline", base), (f"{recipe} to {args.target:.0%}", first)]
    slim = cached(
        out / f"{slim_tag}-50.json",
        lambda: stage_slim(base, out / f"{slim_tag}-50", first["bflops"], first["epochs"], args),
    )
    rows.append((f"uniform slim, same BFLOPs, {first['epochs']} epochs", slim))
    if not args.skip_second:
        share = args.second_target * base["bflops"] / first["bflops"]
        second_epochs = args.second_epochs or args.finetune_epochs
        second = cached(
            out / f"{recipe}-30.json",
            lambda: reduce(first, f"{recipe}-30", share, min(args.step * 2, 1 - share), second_epochs),
        )
        rows.append((f"{recipe} to {args.second_target:.0%}", second))
        if not args.skip_second_slim:
            both = first["epochs"] + second["epochs"]
            slim2 = cached(
                out / f"{slim_tag}-30.json",
                lambda: stage_slim(base, out / f"{slim_tag}-30", second["bflops"], both, args),
            )
            rows.append((f"uniform slim, same BFLOPs, {both} epochs", slim2))
    latency_file = "latency.json" if recipe == "iterate" else f"latency-{recipe}.json"
    ms = cached(out / latency_file, lambda: latency(rows, args.backend))
    steps = []
    for name, row in rows:
        if "pruned" in row and recipe != "iterate":
            steps.append((f"{name}: pruned, before fine-tuning", row["pruned"]))
        steps.append((name, row))
    print("\n".join(table(steps, base, ms)))
    for name, row in rows[1:]:
        print(
            f"{name}: test mAP@0.5 {row['test']['mAP50'] / base['test']['mAP50']:.3f}× the baseline at "
            f"{row['bflops'] / base['bflops']:.3f}× its BFLOPs"
            + (
                f"; the recipe took {row['recipe_cpu_seconds'] / 60:.1f} CPU-minutes, "
                f"{row['recipe_seconds'] / 60:.1f} minutes"
                if "recipe_seconds" in row
                else ""
            )
        )


if __name__ == "__main__":
    main()
