"""The iterative loop: analyse → plan → prune → fine-tune → evaluate, one BFLOPs step at a time, until the
target share of the starting model's BFLOPs.

Every step lives in its own folder (``step-1/`` …) with its sensitivity analysis, plan, pruned cfg/weights,
fine-tuning run and a ``step.json`` written last; ``iterate.json`` holds the settings and every finished step.
A killed run started again with the same settings skips the finished steps and continues the unfinished one
where its parts stopped (the analysis resumes from its state file, fine-tuning from its ``last.pt``).

Selection is on the data's valid split only (the step's best fine-tuning epoch, the stop rule); reporting on a
held-out split is the caller's business.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..files import atomic_output
from ..ir import Graph

Log = Callable[[str], None]
STATE_NAME = "iterate.json"
SHARE_TOLERANCE = 0.01  # a step whose plan lands within 1 % of its share counts as reaching it


@dataclass(frozen=True)
class IterateSettings:
    target_bflops: float = 0.5  # share of the starting model's BFLOPs to reach
    step: float = 0.1  # share of the starting model's BFLOPs removed per step
    epochs_per_step: int = 2  # fine-tuning after each prune (0: none)
    max_drop: float = 0.05  # relative valid mAP@0.5 loss (against the start) that stops the loop
    criterion: str = "bn-gamma"
    # small rates: a step cuts each unit by at most the largest, so the cuts spread over the units instead of
    # emptying the few that an analysis without fine-tuning finds least sensitive
    rates: tuple[float, ...] = (0.1, 0.2, 0.3)
    proxy: bool = True  # analyse with the label-free proxy (fast) instead of valid mAP
    images: int | None = 64  # images per analysis (calibration images for the proxy)
    optimizer: str = "greedy"  # how the plan chooses rates
    round_to: int | str = 1
    seed: int = 0
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields for fine-tuning (lr, batch, …)

    def __post_init__(self) -> None:
        if not 0 < self.target_bflops < 1:
            raise UsageError(f"`target_bflops` must be in (0, 1), found {self.target_bflops}")
        if not 0 < self.step < 1:
            raise UsageError(f"`step` must be in (0, 1), found {self.step}")
        if self.epochs_per_step < 0:
            raise UsageError(f"`epochs_per_step` must be ≥ 0, found {self.epochs_per_step}")
        if not 0 < self.max_drop <= 1:
            raise UsageError(f"`max_drop` must be in (0, 1], found {self.max_drop}")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(
            json.dumps(asdict(self), default=str)
        )  # as the state file has them: lists, str paths

    def shares(self) -> list[float]:
        """The BFLOPs share each step aims at: 1 − step, 1 − 2·step, …, ending exactly at the target."""
        shares, share = [], 1.0
        while share - self.step > self.target_bflops + 1e-9:
            share = round(share - self.step, 6)
            shares.append(share)
        return [*shares, self.target_bflops]


@dataclass
class IterateResult:
    steps: list[dict[str, Any]]  # step 0 is the starting model
    stopped: str | None  # why the loop ended before the target (None: target reached)
    output: Path

    @property
    def final(self) -> dict[str, Any]:
        """The last step within the allowed mAP drop."""
        return last_within_drop(self.steps)


def iterate(
    cfg: Path,
    weights: Path,
    data: Path,
    output: Path,
    settings: IterateSettings = IterateSettings(),
    log: Log | None = None,
) -> IterateResult:
    """Prune ``cfg``/``weights`` step by step to ``settings.target_bflops`` of its BFLOPs, fine-tuning on
    ``data`` after every step; see the module docstring for the files and resuming."""
    say = log or (lambda line: None)
    output.mkdir(parents=True, exist_ok=True)
    state = _open_state(output, cfg, weights, data, settings)
    steps: list[dict[str, Any]] = state["steps"]
    if not steps:
        steps.append(_start(cfg, weights, data))
        _save_state(output, state)
    base = steps[0]
    say(f"start: {_describe(base, base)}")
    shares = settings.shares()
    durations: list[float] = []  # of the steps run by this call
    for number, share in enumerate(shares, start=1):
        if number < len(steps):
            say(f"step {number}: done before ({_describe(steps[number], base)})")
            if not steps[number]["within_drop"]:
                break
            continue
        parent = steps[-1]
        step = _run_step(number, share, parent, base, data, output, settings, say)
        steps.append(step)
        _save_state(output, state)
        durations.append(step["seconds"])
        remaining = sum(durations) / len(durations) * (len(shares) - number)
        say(f"step {number}/{len(shares)}: {_describe(step, base)}" + _eta(remaining, number, len(shares)))
        if not step["within_drop"]:
            break
    last = steps[-1]
    stopped = None
    if not last["within_drop"]:
        stopped = (
            f"stopped at step {len(steps) - 1}: valid mAP@0.5 {last['valid']['mAP50']:.4f} is "
            f"{_drop(last, base):.1%} below the start's {base['valid']['mAP50']:.4f} (max_drop "
            f"{settings.max_drop:.1%}); the last step within it is step {last_within_drop(steps)['step']}"
        )
        say(stopped)
    state["stopped"] = stopped
    _save_state(output, state)
    _write_report(output, steps, stopped)
    return IterateResult(steps, stopped, output)


# -- one step ----------------------------------------------------------------------------------------------


def _run_step(
    number: int,
    share: float,
    parent: dict[str, Any],
    base: dict[str, Any],
    data: Path,
    output: Path,
    settings: IterateSettings,
    say: Log,
) -> dict[str, Any]:
    from ..emit.cfg import write_cfg
    from ..surgery.plan import make_plan, prune_units
    from ..train.importance import with_importance
    from ..weights import write_weights
    from .sensitivity import sensitivity

    folder = output / f"step-{number}"
    folder.mkdir(exist_ok=True)
    started = time.perf_counter()
    graph = _load(Path(parent["cfg"]), Path(parent["weights"]))
    target = share * base["bflops"] / graph.bflops  # the share asked of the parent model
    say(f"step {number}: analysing {len(settings.rates)} rates per unit, aiming at {share:.0%} of the BFLOPs")
    analysis = sensitivity(
        graph,
        data,
        rates=settings.rates,
        criterion=settings.criterion,
        images=settings.images,
        proxy=settings.proxy,
        state=folder / "sensitivity.json",
        progress=_analysis_progress(number, say),
        warn=say,
    )
    graph = with_importance(graph, settings.criterion, known=analysis.get("importance"))
    plan = make_plan(
        analysis,
        graph,
        target_bflops=target,
        optimizer=settings.optimizer,
        round_to=settings.round_to,
        seed=settings.seed,
    )
    _write_json(folder / "plan.json", plan)
    pruned = prune_units(graph, plan["rates"], settings.criterion, settings.round_to, settings.seed).pruned
    stem = Path(parent["cfg"]).stem  # every step's files keep the model's name
    cfg, weights = folder / f"{stem}.cfg", folder / f"{stem}.weights"
    write_cfg(pruned, cfg)
    write_weights(pruned, weights)
    before = after = _valid_metrics(pruned, data)
    if settings.epochs_per_step:
        tuned_cfg, tuned_weights = _finetune(cfg, weights, data, folder / "finetune", settings, say)
        after = _valid_metrics(_load(tuned_cfg, tuned_weights), data)
        if after["mAP50"] >= before["mAP50"]:  # the pruned model itself competes as fine-tuning's epoch 0
            cfg, weights = tuned_cfg, tuned_weights
        else:
            lowered = f"{before['mAP50']:.4f} → {after['mAP50']:.4f}"
            say(f"  fine-tuning lowered valid mAP@0.5 ({lowered}): the step keeps the pruned weights")
            after = before
    step = {
        "step": number,
        "target_share": share,
        "cfg": str(cfg),
        "weights": str(weights),
        "params": pruned.params,
        "bflops": round(pruned.bflops, 6),
        "valid_pruned": before,
        "valid": after,
        "seconds": round(time.perf_counter() - started, 1),
    }
    step["within_drop"] = _drop(step, base) <= settings.max_drop
    _write_json(folder / "step.json", step)
    return step


def _analysis_progress(number: int, say: Log) -> Callable[[int, int, str], None]:
    """A line at every tenth of the analysis, with its ETA."""
    started, shown = time.perf_counter(), set()

    def progress(done: int, total: int, what: str) -> None:
        tenth = 10 * done // total
        if done and tenth not in shown:
            shown.add(tenth)
            eta = (time.perf_counter() - started) / done * (total - done)
            say(f"  analysis {done}/{total}" + _eta(eta, done, total))

    return progress


def _finetune(
    cfg: Path, weights: Path, data: Path, folder: Path, settings: IterateSettings, say: Log
) -> tuple[Path, Path]:
    """Fine-tune and return the best valid epoch's cfg and weights; a killed run continues from last.pt."""
    from ..train.trainer import TrainConfig, train

    options = {"eval_every": 1, "progress": False, "seed": settings.seed, **settings.train}
    last = folder / "last.pt"
    config = TrainConfig(
        cfg=cfg,
        weights=weights,
        data=data,
        output=folder,
        epochs=settings.epochs_per_step,
        resume=last if last.exists() else None,
        **options,
    )
    from ..train.trainer import TrainingDiverged

    if not (folder / f"{cfg.stem}.weights").exists():  # the run's final weights: it finished before
        try:
            train(config, log=lambda line: say(f"  {line}"))
        except TrainingDiverged as stop:  # its best epoch is kept and used
            say(f"  {stop}")
    return folder / cfg.name, folder / f"{cfg.stem}_best.weights"


def _start(cfg: Path, weights: Path, data: Path) -> dict[str, Any]:
    graph = _load(cfg, weights)
    metrics = _valid_metrics(graph, data)
    return {
        "step": 0,
        "target_share": 1.0,
        "cfg": str(cfg),
        "weights": str(weights),
        "params": graph.params,
        "bflops": round(graph.bflops, 6),
        "valid_pruned": metrics,
        "valid": metrics,
        "seconds": 0.0,
        "within_drop": True,
    }


def _load(cfg: Path, weights: Path) -> Graph:
    from ..train.trainer import load_graph

    return load_graph(cfg, weights, warn=lambda line: None)


def _valid_metrics(graph: Graph, data: Path) -> dict[str, float]:
    from ..train.evaluate import evaluate_data

    metrics = evaluate_data(graph, data, "valid", warn=lambda line: None).metrics
    return {"P": metrics.P, "R": metrics.R, "mAP50": metrics.mAP50, "mAP50_95": metrics.mAP50_95}


# -- state, report -----------------------------------------------------------------------------------------


def _open_state(output: Path, cfg: Path, weights: Path, data: Path, settings: IterateSettings) -> dict:
    inputs = {"cfg": str(cfg), "weights": str(weights), "data": str(data)}
    path = output / STATE_NAME
    if not path.exists():
        return {"version": 1, "inputs": inputs, "settings": settings.to_dict(), "steps": [], "stopped": None}
    state = json.loads(path.read_text())
    asked = {"inputs": inputs, "settings": settings.to_dict()}
    for what, now in asked.items():
        before = state[what]
        changed = sorted(key for key in now.keys() | before.keys() if now.get(key) != before.get(key))
        if changed:
            raise UsageError(
                f"{path} is a run with other {what} ({', '.join(changed)} differ); "
                "use another output folder to start over",
                str(path),
            )
    return state


def _save_state(output: Path, state: dict) -> None:
    _write_json(output / STATE_NAME, state)


def _write_json(path: Path, data: Any) -> None:
    with atomic_output(path, "w") as out:
        json.dump(data, out, indent=1)
        out.write("\n")


def _drop(step: dict, base: dict) -> float:
    start = base["valid"]["mAP50"]
    return 0.0 if start <= 0 else (start - step["valid"]["mAP50"]) / start


def last_within_drop(steps: list[dict]) -> dict:
    """The last step whose valid mAP@0.5 stayed within the allowed drop (step 0 always does)."""
    return next(step for step in reversed(steps) if step["within_drop"])


def _describe(step: dict, base: dict) -> str:
    return (
        f"BFLOPs {step['bflops']:.3f} ({step['bflops'] / base['bflops']:.1%}), params {step['params']:,}, "
        f"valid mAP@0.5 {step['valid']['mAP50']:.4f}"
    )


def _eta(seconds: float, done: int, total: int) -> str:
    if done >= total:
        return ""
    minutes, rest = divmod(int(seconds), 60)
    return f", ETA {minutes}:{rest:02d}"


def report_markdown(steps: list[dict], stopped: str | None) -> str:
    base = steps[0]
    lines = [
        "| step | BFLOPs | share | params | valid mAP@0.5 pruned | valid mAP@0.5 | mAP@0.5:0.95 | minutes |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for step in steps:
        lines.append(
            f"| {step['step']} | {step['bflops']:.3f} | {step['bflops'] / base['bflops']:.1%} | "
            f"{step['params']:,} | {step['valid_pruned']['mAP50']:.4f} | {step['valid']['mAP50']:.4f} | "
            f"{step['valid']['mAP50_95']:.4f} | {step['seconds'] / 60:.1f} |"
        )
    if stopped:
        lines += ["", stopped]
    return "\n".join(lines) + "\n"


def _write_report(output: Path, steps: list[dict], stopped: str | None) -> None:
    with atomic_output(output / "iterate.md", "w") as out:
        out.write(report_markdown(steps, stopped))
    plot_steps(steps, output / "iterate.png")


def plot_steps(steps: list[dict], path: Path) -> Path:
    """valid mAP@0.5 (before and after fine-tuning) against the BFLOPs share, params on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = steps[0]
    share = [100 * step["bflops"] / base["bflops"] for step in steps]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.plot(share, [s["valid"]["mAP50"] for s in steps], "o-", label="valid mAP@0.5 (fine-tuned)")
    ax.plot(share, [s["valid_pruned"]["mAP50"] for s in steps], "x--", label="valid mAP@0.5 (pruned, before)")
    for s, x in zip(steps, share, strict=True):
        ax.annotate(str(s["step"]), (x, s["valid"]["mAP50"]), textcoords="offset points", xytext=(0, 6))
    ax.set_xlabel("BFLOPs, % of the start")
    ax.set_ylabel("mAP@0.5")
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    params = ax.twinx()
    params.plot(share, [s["params"] / 1e6 for s in steps], "s:", color="grey", label="params (M)")
    params.set_ylabel("params (M)")
    lines = ax.get_legend_handles_labels()[0] + params.get_legend_handles_labels()[0]
    ax.legend(lines, [line.get_label() for line in lines], loc="lower left", fontsize=8)
    ax.set_title("iterative pruning: one point per step")
    fig.tight_layout()
    with atomic_output(path, "wb") as out:
        fig.savefig(out, format="png")
    plt.close(fig)
    return path
