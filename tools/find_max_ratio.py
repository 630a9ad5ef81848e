"""Find the largest slim-pruning ratio at which the zoo's yolov3-tiny (real weights) still finds the dog.

The model is ``<zoo>/models/yolov3-tiny.{cfg,weights}`` with ``coco.names``, the photo
``<zoo>/images/dog.jpg``. A ratio "keeps the dog" when the pruned model (``prune --method slim --percent P``,
default --layer-keep) detects a 'dog' (probability above --thresh, 0.25 as in darknet) whose box overlaps
darknet's own dog box (from ``<zoo>/darknet_reference/detections/dog.txt``) with IoU ≥ --min-iou (0.5).

Ratios are searched on a grid of --step (0.005) up to the ratio bound (the largest ratio that empties no
layer): first by bisection, which assumes that a ratio that loses the dog is never followed by a larger one
that finds it again; detection is not monotone in the ratio in general, so the whole grid is checked as well,
and the answer is the largest grid ratio below which every grid ratio keeps the dog. Everything runs through
the public API (``Model.prune`` and ``Model.detect`` with the torch backend), in one process.

    .venv/bin/python tools/find_max_ratio.py [--zoo ../shared/zoo] [--step 0.005] [--json result.json]
"""

from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from cfgsurgeon import Model
from cfgsurgeon.api import Pruned

ZOO = Path(__file__).resolve().parents[2] / "shared" / "zoo"
DARKNET_LINE = re.compile(
    r"^(?P<name>[^:]+): (?P<prob>\d+)%\s+\(left_x:\s*(?P<left>-?\d+)\s+top_y:\s*(?P<top>-?\d+)\s+"
    r"width:\s*(?P<width>\d+)\s+height:\s*(?P<height>\d+)\)"
)


@dataclass
class Outcome:
    percent: float
    kept: bool  # a dog overlapping darknet's box was found
    prob: float  # the best such dog's probability (0 when none)
    iou: float
    pruned: Pruned | None = None


def darknet_box(path: Path, name: str) -> tuple[float, float, float, float]:
    """The first ``name`` box darknet printed (``-ext_output``): left, top, width, height in pixels."""
    for line in path.read_text().splitlines():
        match = DARKNET_LINE.match(line.strip())
        if match and match["name"] == name:
            return tuple(float(match[key]) for key in ("left", "top", "width", "height"))  # type: ignore[return-value]
    raise SystemExit(f"{path}: no '{name}' line")


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two (left, top, width, height) boxes."""
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(width, 0.0) * max(height, 0.0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


class Search:
    """Prune the model at a ratio, run the detect pipeline on the photo, and look for the dog."""

    def __init__(self, model: Model, image: Path, names: Path, reference: tuple, args) -> None:
        self.model, self.image, self.names, self.args = model, image, names, args
        self.reference = reference
        self.cache: dict[int, Outcome] = {}

    def dog(self, model: Model) -> tuple[float, float]:
        """The probability and IoU of the best 'dog' that overlaps the reference enough (0, 0 if none)."""
        found = model.detect(self.image, names=self.names, thresh=self.args.thresh)
        best = (0.0, 0.0)
        for det in found.detections[0]:
            overlap = iou(self.reference, det.box)
            if det.name == self.args.name and overlap >= self.args.min_iou and det.prob > best[0]:
                best = (det.prob, overlap)
        return best

    def at(self, step_index: int) -> Outcome:
        """The outcome at ratio ``step_index · step`` (cached: bisection and grid share the runs)."""
        if step_index not in self.cache:
            percent = round(step_index * self.args.step, 10)
            pruned = self.model.prune("slim", percent=percent, layer_keep=self.args.layer_keep, verify=False)
            prob, overlap = self.dog(pruned.model)
            self.cache[step_index] = Outcome(percent, prob > 0, prob, overlap, pruned)
        return self.cache[step_index]


def bisect(search: Search, top: int) -> int:
    """The largest grid index that keeps the dog, if keeping is monotone (index 0 must keep it)."""
    if search.at(top).kept:
        return top
    low, high = 0, top  # low keeps the dog, high loses it
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if search.at(middle).kept else (low, middle)
    return low


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, default=ZOO)
    parser.add_argument("--step", type=float, default=0.005, help="resolution of the ratio search")
    parser.add_argument("--thresh", type=float, default=0.25, help="detection threshold (darknet's)")
    parser.add_argument("--min-iou", type=float, default=0.5, help="overlap with darknet's dog box")
    parser.add_argument("--layer-keep", type=float, default=0.01, help="prune --layer-keep")
    parser.add_argument("--name", default="dog", help="the class to keep")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()

    models, image = args.zoo / "models", args.zoo / "images" / "dog.jpg"
    model = Model.load(models / "yolov3-tiny.cfg", models / "yolov3-tiny.weights", warn=print)
    reference = darknet_box(args.zoo / "darknet_reference" / "detections" / "dog.txt", args.name)
    search = Search(model, image, models / "coco.names", reference, args)

    before = search.at(0)
    if not before.kept:
        raise SystemExit("the unpruned model does not find the dog: nothing to search")
    bound = before.pruned.report["ratio_bound"]
    top = math.floor(bound / args.step + 1e-9)  # the largest grid index within the bound
    by_bisection = bisect(search, top)
    grid = [search.at(i) for i in range(top + 1)]
    lost = [o.percent for o in grid if not o.kept]
    monotone_max = next((i - 1 for i, o in enumerate(grid) if not o.kept), top)
    answer = grid[monotone_max]
    print(f"ratio bound (largest ratio that empties no layer): {bound:.4f}; grid step {args.step}")
    print(f"bisection: {by_bisection * args.step:.3f}")
    print(
        f"grid: {len(grid)} ratios, the dog is lost at {len(lost)}: "
        + (", ".join(f"{p:.3f}" for p in lost[:20]) + (" …" if len(lost) > 20 else "") if lost else "none")
    )
    islands = [o.percent for o in grid[monotone_max + 1 :] if o.kept]
    if islands:
        print(
            f"not monotone: above the first loss the dog is found again at {len(islands)} ratios "
            f"(up to {islands[-1]:.3f}); the answer below keeps it at every smaller grid ratio"
        )
    elif by_bisection == monotone_max:
        print("monotone on this grid: bisection and the full grid agree")

    data = answer.pruned.report
    totals = data["totals"]
    header = model.graph.weights_header.size
    figures = {
        "ratio": answer.percent,
        "achieved_ratio": data["achieved_ratio"],
        "ratio_bound": bound,
        "threshold": data["threshold"],
        "dog_prob_before": before.prob,
        "dog_prob_after": answer.prob,
        "dog_iou_after": answer.iou,
        "dog_prob_at_bisection": search.at(by_bisection).prob,
        "bisection_ratio": by_bisection * args.step,
        "lost_at": lost,
        "weights_bytes_before": header + 4 * totals["params_before"],
        "weights_bytes_after": header + 4 * totals["params_after"],
        "totals": totals,
    }
    print(f"\nlargest ratio that keeps the {args.name}: --percent {answer.percent:.3f}")
    print(
        f"  {args.name} probability {before.prob:.4f} -> {answer.prob:.4f} "
        f"(IoU with darknet's box {before.iou:.3f} -> {answer.iou:.3f})"
    )
    print(
        f"  achieved ratio {data['achieved_ratio']:.4f} of {data['candidate_channels']} candidate channels "
        f"(threshold {data['threshold']:.4g})"
    )
    print(
        f"  params {totals['params_before']:,} -> {totals['params_after']:,} "
        f"({totals['params_after'] / totals['params_before']:.1%}); "
        f"BFLOPs {totals['bflops_before']:.3f} -> {totals['bflops_after']:.3f} "
        f"({totals['bflops_after'] / totals['bflops_before']:.1%}); "
        f"layers {totals['layers_before']} -> {totals['layers_after']}"
    )
    print(f"  weights {figures['weights_bytes_before']:,} -> {figures['weights_bytes_after']:,} bytes")
    print(f"  prune report totals: {json.dumps(totals)}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
