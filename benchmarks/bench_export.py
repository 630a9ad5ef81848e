"""Export memory and time: each exporter as a process against the numpy read+write floor (not a test).

Each `cfgsurgeon export --format F` of the cfg (default: full-size yolov4, random well-conditioned weights
written by `cfgsurgeon init`) runs as a child process measured alone (``os.wait4``: wall time, CPU time,
peak RSS; started from bench_prune's small launcher so the RSS is the child's own), interleaved with a child
that reads and writes the same .weights file with numpy (the floor). TF1's export writes only the graph code;
its weights go in when the generated file freezes the graph (`python FILE.py MODEL.weights MODEL.pb`), which
is measured as `tf1 freeze`. Prints each exporter's time ÷ the floor's and peak RSS ÷ the weights file.

    python benchmarks/bench_export.py [--cfg ../shared/zoo/cfg/yolov4.cfg] [--formats onnx openvino ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from bench_infer import cpu_model
from bench_prune import Run, child

SHARED = Path(__file__).resolve().parents[2] / "shared" / "zoo" / "cfg"
CLI = [sys.executable, "-m", "cfgsurgeon"]
OUTPUTS = {"onnx": "model.onnx", "openvino": "model.xml", "tf1": "model_tf1.py", "keras": "model.keras"}


def commands(cfg: Path, weights: Path, formats: list[str], tmp: Path) -> dict[str, list[str]]:
    floor = f"import numpy as np; np.fromfile({str(weights)!r}, dtype=np.uint8).tofile({str(tmp / 'copy')!r})"
    found = {"numpy read+write": [sys.executable, "-c", floor]}
    for name in formats:
        output = ["-o", str(tmp / OUTPUTS[name])]
        found[name] = [
            *CLI,
            "export",
            "--format",
            name,
            "--cfg",
            str(cfg),
            "--weights",
            str(weights),
            *output,
        ]
        if name == "tf1":
            found["tf1 freeze"] = [
                sys.executable,
                str(tmp / OUTPUTS[name]),
                str(weights),
                str(tmp / "model.pb"),
            ]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg", type=Path, default=SHARED / "yolov4.cfg")
    parser.add_argument("--weights", type=Path, help="default: random weights written by `cfgsurgeon init`")
    parser.add_argument("--formats", nargs="+", default=list(OUTPUTS), choices=list(OUTPUTS))
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    print(f"{cpu_model()}, load average {os.getloadavg()[0]:.1f} at the start", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench_export."))
    try:
        weights = args.weights
        if weights is None:
            weights = tmp / "model.weights"
            child([*CLI, "init", "--cfg", str(args.cfg), "-o", str(weights)])
        size = weights.stat().st_size
        runs: dict[str, list[Run]] = {}
        for _ in range(args.repeat):
            for name, command in commands(args.cfg, weights, args.formats, tmp).items():
                runs.setdefault(name, []).append(child(command))
                found = runs[name][-1]
                print(
                    f"  {name}: {found.wall:.1f} s, CPU {found.cpu:.1f} s, "
                    f"peak RSS {found.peak_rss / 2**20:.0f} MiB (load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
        floor = min(run.wall for run in runs["numpy read+write"])
        floor_cpu = min(run.cpu for run in runs["numpy read+write"])
        print(
            f"best of {args.repeat}; the floor: {floor:.2f} s (CPU {floor_cpu:.2f} s); "
            f"weights {size / 2**20:.0f} MiB"
        )
        for name, found in runs.items():
            wall, cpu, rss = (
                min(r.wall for r in found),
                min(r.cpu for r in found),
                max(r.peak_rss for r in found),
            )
            print(
                f"  {name}: time {wall / floor:.1f}x the floor (CPU {cpu / floor_cpu:.1f}x), "
                f"peak RSS {rss / 2**20:.0f} MiB = {rss / size:.2f}x the weights file"
            )
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
