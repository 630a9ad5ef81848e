"""Watching a training run: divergence and early stopping, progress lines for logs, the history plot.

* :class:`DivergenceGuard`: the per-step loss is smoothed (an exponential moving average); the run has
  diverged when the smoothed loss stays above ``factor`` × the lowest smoothed level seen so far for
  ``patience`` consecutive steps, or when a loss is not finite. One noisy batch does not trip it; a run whose
  loss climbs steadily (a learning rate or sparsity penalty too strong for the model) does.
* :class:`EarlyStop`: the validation mAP@0.5 of each evaluation; the best is kept, the run stops after
  ``patience`` evaluations without improvement, or as diverged when mAP falls below ``(1 − max_drop)`` × best.
* :class:`ProgressLines`: without a terminal (a log file, ``nohup``), one line every ``every`` seconds with
  step, loss, learning rate, speed and ETA; on a terminal the tqdm bar does this job.
* :func:`plot_history`: loss and learning rate per step, validation mAP per evaluation, and the sparsity
  diagnostics per epoch (share of penalised |γ| below ε, the safe slim ratio), as one PNG.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class TrainingStopped(Exception):
    """Raised inside the loop to end the run early; ``diverged`` runs end with an error, others normally."""

    def __init__(self, reason: str, diverged: bool):
        super().__init__(reason)
        self.reason, self.diverged = reason, diverged


@dataclass
class DivergenceGuard:
    factor: float = 3.0
    patience: int = 10  # consecutive steps above factor × the best level
    smoothing: float = 0.1  # weight of the newest step in the moving average
    level: float | None = None
    best: float = math.inf
    above: int = 0

    def update(self, step: int, loss: float) -> None:
        """Record the loss of optimizer step ``step`` (1-based); raises :class:`TrainingStopped`."""
        if not math.isfinite(loss):
            raise TrainingStopped(f"the loss became {loss} at step {step}", diverged=True)
        self.level = loss if self.level is None else self.level + self.smoothing * (loss - self.level)
        self.best = min(self.best, self.level)
        self.above = self.above + 1 if self.factor > 0 and self.level > self.factor * self.best else 0
        if self.above >= self.patience:
            raise TrainingStopped(
                f"the loss rose to {self.level:.4g} (moving average) at step {step}, "
                f"{self.level / self.best:.1f}× its lowest level {self.best:.4g}, for {self.above} steps",
                diverged=True,
            )


@dataclass
class EarlyStop:
    patience: int | None = None  # evaluations without a new best before stopping; None: never
    max_drop: float = 0.5  # relative fall of mAP@0.5 from its best that counts as divergence
    best: float = -math.inf
    best_epoch: int = 0
    waited: int = 0

    def update(self, epoch: int, map50: float) -> bool:
        """Record an evaluation; True when it is the best so far. Raises :class:`TrainingStopped`."""
        value = map50 if math.isfinite(map50) else 0.0
        if value > self.best:
            self.best, self.best_epoch, self.waited = value, epoch, 0
            return True
        self.waited += 1
        if self.best > 0 and value < (1 - self.max_drop) * self.best:
            raise TrainingStopped(
                f"validation mAP@0.5 fell to {value:.4f} at epoch {epoch}, below {1 - self.max_drop:.0%} of "
                f"its best {self.best:.4f} (epoch {self.best_epoch})",
                diverged=True,
            )
        if self.patience is not None and self.waited >= self.patience:
            raise TrainingStopped(
                f"no better validation mAP@0.5 for {self.waited} evaluations (best {self.best:.4f} at epoch "
                f"{self.best_epoch}): stopped early (--patience {self.patience})",
                diverged=False,
            )
        return False


@dataclass
class ProgressLines:
    """Timed progress lines (no terminal): at most one per ``every`` seconds, and always the first step."""

    log: Callable[[str], None]
    total: int  # optimizer steps of the whole run
    every: float = 30.0
    clock: Callable[[], float] = time.monotonic
    started: float = field(default=0.0)
    first_step: int = 0
    last: float | None = None

    def start(self, step: int) -> None:
        self.started, self.first_step, self.last = self.clock(), step, None

    def step(self, epoch: str, step: int, loss: float, lr: float) -> None:
        now = self.clock()
        if self.last is not None and now - self.last < self.every:
            return
        self.last = now
        done = step - self.first_step
        per_step = (now - self.started) / max(done, 1)
        eta = per_step * (self.total - step)
        self.log(
            f"{epoch} step {step}/{self.total} ({100 * step / self.total:.0f}%): loss {loss:.4f}, "
            f"lr {lr:.3g}, {per_step:.2f} s/step, ETA {format_duration(eta)}"
        )


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _smoothed(values: Sequence[float], weight: float = DivergenceGuard.smoothing) -> list[float]:
    """The moving average the divergence guard watches."""
    out: list[float] = []
    for value in values:
        out.append(value if not out else out[-1] + weight * (value - out[-1]))
    return out


def plot_history(
    step_losses: Sequence[float], lrs: Sequence[float], epochs: Sequence[dict[str, Any]], path: str | Path
) -> Path:
    """The run at a glance (PNG, written atomically): loss and lr per step, mAP and sparsity per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..files import atomic_output

    figure, axes = plt.subplots(2, 2, figsize=(10, 6), dpi=100)
    steps = range(1, len(step_losses) + 1)
    axes[0, 0].plot(steps, step_losses, color="#9bb7d8", linewidth=0.8, label="step")
    axes[0, 0].plot(steps, _smoothed(step_losses), color="#1d4f8c", linewidth=1.5, label="moving average")
    axes[0, 0].legend(loc="upper right")
    axes[0, 0].set(
        title="loss per image", xlabel="step", yscale="log" if min(step_losses, default=1) > 0 else "linear"
    )
    axes[0, 1].plot(range(1, len(lrs) + 1), lrs, color="#a83b3b")
    axes[0, 1].set(title="learning rate", xlabel="step")
    evaluated = [e for e in epochs if e.get("map50") is not None]
    for key, label in (("map50", "mAP@0.5"), ("map50_95", "mAP@0.5:0.95")):
        axes[1, 0].plot([e["epoch"] for e in evaluated], [e[key] for e in evaluated], marker="o", label=label)
    axes[1, 0].set(title="validation", xlabel="epoch", ylim=(0, 1))
    axes[1, 0].legend(loc="lower right")
    x = [e["epoch"] for e in epochs]
    axes[1, 1].plot(x, [e["small_gamma"] for e in epochs], marker="o", label="share of |γ| < 0.01")
    axes[1, 1].plot(x, [e.get("safe_ratio") or 0.0 for e in epochs], marker="s", label="safe slim ratio")
    axes[1, 1].set(title="sparsity (penalised BN channels)", xlabel="epoch", ylim=(0, 1))
    axes[1, 1].legend(loc="upper left")
    figure.tight_layout()
    path = Path(path)
    with atomic_output(path, "wb") as out:
        figure.savefig(out, format="png")
    plt.close(figure)
    return path
