"""Pruning speed, as ratios measured in one run (never a timed test).

End to end means what `cfgsurgeon prune --no-verify` does to make the pruned model, through the same calls:
load the cfg, read the weights, analyse, select, prune, and write pruned.cfg and pruned.weights. The
reference is a plain numpy read + write of the same .weights file (the floor any tool that rewrites the model
has to pay). The model is full-size yolov4 with random well-conditioned weights (`cfgsurgeon init`), pruned
with slim at 50 % and with layer-channel (residual units removed, then slim). Best of --repeat runs each, in
wall time and in CPU time (this process's user + system time, less disturbed by other load). Printed for
information: the time of each step, what building and writing report.json and report.md add (the CLI writes
them too), and the CLI itself as a subprocess (interpreter start-up and imports included).

Then the default `cfgsurgeon prune` (verification on) as a child process against a child process doing the
numpy read+write, interleaved, each with its own wall time, CPU time and peak RSS (``os.wait4``), the RSS
as a multiple of the weights file.

    python benchmarks/bench_prune.py [--cfg ../shared/zoo/cfg/yolov4.cfg] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cfgsurgeon import load_cfg, read_weights, write_cfg, write_weights
from cfgsurgeon.files import atomic_output
from cfgsurgeon.randinit import random_weights
from cfgsurgeon.surgery.prune import PruneResult, prune, report, report_markdown
from cfgsurgeon.verify import verify_prune

SHARED = Path(__file__).resolve().parents[2] / "shared" / "zoo" / "cfg"

# name → `prune` options (the CLI's flags, as keyword arguments)
CASES: dict[str, dict] = {
    "slim 50%": {"method": "slim", "percent": 0.5},
    "layer-channel (8 units, slim 50%)": {"method": "layer-channel", "percent": 0.5, "shortcuts": 8},
}


def best_of(repeat: int, run: Callable[[], object]) -> tuple[float, float, object]:
    """The shortest wall time of ``repeat`` runs, the least CPU time, and what the fastest run returned."""
    wall, cpu, kept = float("inf"), float("inf"), None
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        value = run()
        cpu = min(cpu, time.process_time() - start_cpu)
        seconds = time.perf_counter() - start
        if seconds < wall:
            wall, kept = seconds, value
    return wall, cpu, kept


class Laps:
    """Seconds per named step."""

    def __init__(self) -> None:
        self.steps: dict[str, float] = {}
        self.clock = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.steps[name], self.clock = now - self.clock, now


def prune_model(
    cfg: Path, weights: Path, outdir: Path, options: dict
) -> tuple[PruneResult, dict[str, float]]:
    """The pruned model, as `prune --no-verify` makes and writes it; returns it and the seconds per step."""
    lap = Laps()
    graph = load_cfg(cfg, warn=lambda message: None)
    lap("load cfg")
    read_weights(graph, weights)
    lap("read weights")
    result = prune(graph, **options)
    lap("analyse+select+prune")
    outdir.mkdir(parents=True, exist_ok=True)
    write_cfg(result.pruned, outdir / "pruned.cfg")
    write_weights(result.pruned, outdir / "pruned.weights")
    lap("write cfg+weights")
    return result, lap.steps


def write_reports(result: PruneResult, cfg: Path, outdir: Path) -> None:
    """report.json and report.md, as the CLI writes them."""
    data = report(result, None)
    with atomic_output(outdir / "report.json", "w") as out:
        json.dump(data, out, indent=1)
    with atomic_output(outdir / "report.md", "w") as out:
        out.write(report_markdown(data, str(cfg)))


def cli_args(cfg: Path, weights: Path, outdir: Path, options: dict, verify: bool = False) -> list[str]:
    args = [sys.executable, "-m", "cfgsurgeon.cli", "prune", "--cfg", str(cfg), "--weights", str(weights)]
    for key, value in options.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return [*args, "--verify" if verify else "--no-verify", "-o", str(outdir)]


def bench(cfg: Path, repeat: int, tmp: Path) -> None:
    graph = load_cfg(cfg, warn=lambda message: None)
    random_weights(graph, seed=0)
    source, plain, outdir = tmp / "model.weights", tmp / "plain.weights", tmp / "pruned"
    write_weights(graph, source)
    size = source.stat().st_size

    def numpy_rw() -> None:
        np.fromfile(source, dtype=np.uint8).tofile(plain)

    numpy_rw()  # warm the page cache
    t_plain, c_plain, _ = best_of(repeat, numpy_rw)
    print(
        f"{cfg.name}, {size / 2**20:.0f} MiB of random weights; plain numpy read+write: {t_plain:.3f} s "
        f"(CPU {c_plain:.3f} s)"
    )
    for name, options in CASES.items():
        prune_model(cfg, source, outdir, options)  # warm

        def model(options: dict = options) -> dict[str, float]:
            return prune_model(cfg, source, outdir, options)[1]

        t_ours, c_ours, steps = best_of(repeat, model)
        result, _ = prune_model(cfg, source, outdir, options)
        t_reports, _, _ = best_of(repeat, lambda result=result: write_reports(result, cfg, outdir))
        t_verify, c_verify, checked = best_of(repeat, lambda result=result: verify_prune(result))
        pruned = (outdir / "pruned.weights").stat().st_size
        t_cli, _, _ = best_of(
            max(1, repeat // 2),
            lambda options=options: subprocess.run(
                cli_args(cfg, source, tmp / "cli", options), check=True, capture_output=True
            ),
        )
        detail = ", ".join(f"{step} {seconds:.3f}" for step, seconds in steps.items())
        print(
            f"  {name}: end to end {t_ours:.3f} s, ratio {t_ours / t_plain:.2f}x "
            f"(CPU {c_ours:.3f} s, ratio {c_ours / c_plain:.2f}x)\n"
            f"    pruned.weights is {pruned / size:.0%} of the input; steps (s): {detail}\n"
            f"    with the verification (the default; {checked.error:.2g} at input "
            f"{'x'.join(map(str, checked.input_shape[1:]))}): +{t_verify:.3f} s, ratio "
            f"{(t_ours + t_verify) / t_plain:.2f}x (CPU {(c_ours + c_verify) / c_plain:.2f}x)\n"
            f"    for information: report.json + report.md add {t_reports:.3f} s "
            f"(ratio with them {(t_ours + t_reports) / t_plain:.2f}x); the CLI as a subprocess: {t_cli:.3f} s"
        )


@dataclass
class Run:
    """One child process: wall seconds, CPU seconds (user + system) and peak resident memory in bytes."""

    wall: float
    cpu: float
    peak_rss: int


# Runs the command and reports it alone. A forked child starts with its parent's peak RSS on Linux, so the
# command is started from this small launcher, not from the benchmark holding the model in memory.
LAUNCHER = """
import json, os, subprocess, sys, time
start = time.perf_counter()
process = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(process.pid, 0)
wall = time.perf_counter() - start
print(json.dumps([os.waitstatus_to_exitcode(status), wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss]))
"""


def child(args: list[str]) -> Run:
    """Run ``args`` to completion in a child process and measure it alone."""
    launched = subprocess.run([sys.executable, "-c", LAUNCHER, *args], capture_output=True, text=True)
    status, wall, cpu, peak_kib = json.loads(launched.stdout)
    if status != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{launched.stderr}")
    return Run(wall, cpu, peak_kib * 1024)  # ru_maxrss is in KiB on Linux


def bench_processes(cfg: Path, source: Path, repeat: int, tmp: Path) -> None:
    """The default `cfgsurgeon prune` (verification on) as a process against a process doing the numpy
    read+write, interleaved run by run so both see the same load; best of ``repeat`` each."""
    size = source.stat().st_size
    floor_code = (
        f"import numpy as np; np.fromfile({str(source)!r}, dtype=np.uint8).tofile({str(tmp / 'p')!r})"
    )
    commands = {"numpy read+write": [sys.executable, "-c", floor_code]}
    for name, options in CASES.items():
        commands[f"prune {name}"] = cli_args(cfg, source, tmp / "default", options, verify=True)
    runs: dict[str, list[Run]] = {name: [] for name in commands}
    for _ in range(repeat):
        for name, args in commands.items():
            shutil.rmtree(tmp / "default", ignore_errors=True)
            runs[name].append(child(args))
    best = {
        name: (min(r.wall for r in found), min(r.cpu for r in found), max(r.peak_rss for r in found))
        for name, found in runs.items()
    }
    wall0, cpu0, rss0 = best["numpy read+write"]
    print(f"processes, interleaved, best of {repeat} (peak RSS: the largest seen):")
    for name, (wall, cpu, rss) in best.items():
        print(
            f"  {name}: {wall:.3f} s (ratio {wall / wall0:.2f}x), CPU {cpu:.3f} s (ratio {cpu / cpu0:.2f}x), "
            f"peak RSS {rss / 2**20:.0f} MiB = {rss / size:.2f}x the weights file"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg", type=Path, default=SHARED / "yolov4.cfg")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_prune."))
    try:
        bench(args.cfg, args.repeat, tmp)
        bench_processes(args.cfg, tmp / "model.weights", args.repeat, tmp)
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
