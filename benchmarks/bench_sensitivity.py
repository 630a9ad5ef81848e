"""Sensitivity analysis on real data: does the label-free proxy rank units as the mAP analysis does?

On the fine-tuned vehicles model (``bench_vehicles.py``'s ``finetune`` stage), two analyses of every prunable
unit at each rate, no fine-tuning (:mod:`cfgsurgeon.workflow.sensitivity`):

* ``full/``: mAP@0.5 etc. on the whole valid split, with the proxy of the same forward passes;
* ``proxy/``: the proxy alone on the first ``--proxy-images`` valid images (what ``--proxy`` costs).

Printed: Spearman's ρ between each proxy and the mAP@0.5 drop (baseline − unit), over the units at each rate,
over the units ranked by their mean over the rates, and over all unit × rate pairs; the time of both
analyses. The drop is what the planner minimises, so a proxy that ranks well can stand in for it.

The full analysis also scores a second proxy form from the same outputs, the relative change of the raw
head outputs (``‖y − y₀‖ / ‖y₀‖``), to show why the library compares decoded detection scores instead.

Each analysis resumes from its ``sensitivity.json`` (timings are kept in ``timings.json`` beside it).

    python benchmarks/bench_sensitivity.py --out runs/vehicles/sensitivity
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from cfgsurgeon import load_cfg, read_weights
from cfgsurgeon.workflow import sensitivity as sens

SHARED = Path(__file__).resolve().parents[2] / "shared"
DATA = SHARED / "data" / "vehicles" / "vehicles.data"
MODEL = Path("runs/vehicles/finetune")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def output_change(reference: sens.Outputs, outputs: sens.Outputs) -> float:
    """``‖y − y₀‖ / ‖y₀‖`` over every raw head output of every image."""
    changed = sum(
        float(np.sum((y - y0) ** 2))
        for b, b0 in zip(outputs, reference, strict=True)
        for y, y0 in zip(b, b0, strict=True)
    )
    total = sum(float(np.sum(y0**2)) for b0 in reference for y0 in b0)
    return math.sqrt(changed / total)


class RawForm:
    """``sens.score_change`` that also computes :func:`output_change` of the same outputs; each value is kept
    in ``path`` (a line per unit × rate, so that a continued run still has those of the finished ones)."""

    def __init__(self, path: Path):
        self.path, self.last = path, math.nan
        self.original = sens.score_change

    def __call__(self, graph, reference, outputs):
        self.last = output_change(reference, outputs)
        return self.original(graph, reference, outputs)

    def keep(self, what: str) -> None:
        with self.path.open("a") as out:
            out.write(json.dumps({"entry": what, "raw": self.last}) + "\n")

    def values(self) -> dict[tuple[str, float], float]:
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        found = {}
        for row in map(json.loads, lines):
            key, rate = row["entry"].split(" at ")
            found[(key, float(rate))] = row["raw"]
        return found


def analyse(
    graph, args, folder: Path, proxy: bool, images: int | None, raw: RawForm | None = None
) -> tuple[dict, dict]:
    """Run (or continue) one analysis; its JSON, Markdown and PNG go to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    timings_path = folder / "timings.json"
    _, before = read_state(folder)
    timings = {"seconds": before["seconds"], "runs": before["runs"] + 1}
    started = time.perf_counter()
    last = [started]

    def progress(done: int, total: int, what: str) -> None:
        """Log the entry; keep the time spent (a killed run keeps it too) and the raw-output form."""
        now = time.perf_counter()
        log(f"{folder.name}: {done}/{total} {what} ({now - last[0]:.1f} s)")
        last[0] = now
        timings["seconds"] = before["seconds"] + now - started
        timings_path.write_text(json.dumps(timings))
        if raw is not None and what != "baseline":
            raw.keep(what)

    result = sens.sensitivity(
        graph,
        args.data,
        rates=args.rates,
        images=images,
        proxy=proxy,
        state=folder / "sensitivity.json",
        progress=progress,
        weights=args.weights,
    )
    (folder / "sensitivity.md").write_text(sens.markdown_table(result))
    sens.plot_sensitivity(result, folder / "sensitivity.png")
    return result, timings


def pairs(result: dict, key: str) -> dict[tuple[str, float], float]:
    return {(u["key"], r["rate"]): r[key] for u in result["units"] for r in u["results"]}


def agreement(drops: dict, proxies: dict, rates: list[float]) -> dict[str, float]:
    """Spearman's ρ of proxy against mAP drop over the pairs both have: per rate, per unit (mean over the
    rates, units with every rate), over all pairs."""
    common = [k for k in drops if k in proxies]
    found = {}
    for rate in rates:
        keys = [k for k in common if k[1] == rate]
        found[f"rate {rate:g}"] = sens.spearman([proxies[k] for k in keys], [drops[k] for k in keys])
    units = [u for u in dict.fromkeys(k[0] for k in common) if all((u, r) in proxies for r in rates)]
    mean_proxy = [np.mean([proxies[(u, r)] for r in rates]) for u in units]
    mean_drop = [np.mean([drops[(u, r)] for r in rates]) for u in units]
    found["units (mean over rates)"] = sens.spearman(mean_proxy, mean_drop)
    found["all unit × rate pairs"] = sens.spearman([proxies[k] for k in common], [drops[k] for k in common])
    found["pairs"] = len(common)
    return found


def read_state(folder: Path) -> tuple[dict | None, dict]:
    state, timings = folder / "sensitivity.json", folder / "timings.json"
    result = json.loads(state.read_text()) if state.exists() else None
    return result, json.loads(timings.read_text()) if timings.exists() else {"seconds": 0.0, "runs": 0}


def report(args, raw: RawForm) -> None:
    """Rank agreement and timings of what is finished (all of it after a complete run)."""
    full, full_time = read_state(args.out / "full")
    proxy, proxy_time = read_state(args.out / "proxy")
    if full is None:
        raise SystemExit(f"no analysis in {args.out / 'full'} yet")
    baseline = full["baseline"]["map50"]
    drops = {k: baseline - v for k, v in pairs(full, "map50").items()}
    forms = {f"detection scores, same {full['images']} images": pairs(full, "proxy")}
    if proxy is not None:
        forms[f"detection scores, first {proxy['images']} images (proxy-only run)"] = pairs(proxy, "proxy")
    if raw.values():
        forms[f"raw head outputs, same {full['images']} images"] = raw.values()
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if "Model name" in line), "?")
    print(f"CPU: {model}, Python {platform.python_version()}; model {args.cfg} + {args.weights}")
    print(
        f"baseline valid mAP@0.5 {baseline:.4f} on {full['images']} images; {len(drops)} of "
        f"{len(full['units']) * len(full['rates'])} unit × rate pairs measured"
    )
    done = [
        (name, result, t) for name, result, t in (("full", full, full_time), ("proxy", proxy, proxy_time))
    ]
    for name, result, t in done:
        if result is not None:
            entries = sum(len(u["results"]) for u in result["units"])
            print(
                f"{name} ({result['images']} images): {t['seconds'] / 60:.1f} min for {entries} entries "
                f"in {t['runs']} run(s)"
            )
    print("Spearman's ρ against the mAP@0.5 drop:")
    table = {name: agreement(drops, proxies, full["rates"]) for name, proxies in forms.items()}
    for name, cells in table.items():
        print(
            f"  {name}: "
            + ", ".join(f"{k} {v:+.3f}" for k, v in cells.items() if k != "pairs")
            + f" ({cells['pairs']} pairs)"
        )
    (args.out / "bench.json").write_text(
        json.dumps({"timings": {"full": full_time, "proxy": proxy_time}, "spearman": table}, indent=1)
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cfg", type=Path, default=MODEL / "yolov3-tiny.cfg")
    parser.add_argument("--weights", type=Path, default=MODEL / "yolov3-tiny_best.weights")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=Path("runs/vehicles/sensitivity"))
    parser.add_argument(
        "--rates", type=lambda text: [float(r) for r in text.split(",")], default=[0.25, 0.5, 0.75]
    )
    parser.add_argument("--images", type=int, help="valid images of the mAP analysis (default: all)")
    parser.add_argument("--proxy-images", type=int, default=32, help="calibration images of the proxy run")
    parser.add_argument("--report", action="store_true", help="only report what is finished (no analysis)")
    args = parser.parse_args()
    raw = RawForm(args.out / "full" / "raw_outputs.jsonl")
    if not args.report:
        graph = load_cfg(args.cfg, warn=lambda message: None)
        read_weights(graph, args.weights)
        sens.score_change = raw
        try:
            analyse(graph, args, args.out / "full", proxy=False, images=args.images, raw=raw)
        finally:
            sens.score_change = raw.original
        analyse(graph, args, args.out / "proxy", proxy=True, images=args.proxy_images)
    report(args, raw)


if __name__ == "__main__":
    main()
