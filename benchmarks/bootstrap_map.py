"""How much of a test-mAP ratio is the split's noise: a paired bootstrap over the test photos.

    python benchmarks/bootstrap_map.py BASE.cfg BASE.weights OTHER.cfg OTHER.weights [--split test]

Both models predict once on every photo of ``../shared/data/vehicles`` (``--split``); then ``--samples``
times the same photos are drawn with replacement for both models, and the ratio OTHER ÷ BASE of mAP@0.5
is scored on each draw (``cfgsurgeon.train.evaluate.score``, the evaluator every table here uses). It prints
the ratio on the whole split and the 2.5/50/97.5 percentiles of the drawn ratios: a ratio whose interval is
wide says the split cannot tell the models apart at that precision. Seeded: the same files print the same.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_vehicles import DATA, split  # noqa: E402

from cfgsurgeon import load_cfg, read_weights  # noqa: E402
from cfgsurgeon.train.dataset import read_data_file  # noqa: E402
from cfgsurgeon.train.evaluate import predict, score  # noqa: E402


def detections(cfg: Path, weights: Path, split_name: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    graph = load_cfg(cfg, warn=lambda m: None)
    read_weights(graph, weights)
    return predict(graph, split(graph, split_name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name in ("base_cfg", "base_weights", "other_cfg", "other_weights"):
        parser.add_argument(name, type=Path)
    parser.add_argument("--split", default="test", choices=("valid", "test"))
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    names = read_data_file(DATA).names
    base, truths = detections(args.base_cfg, args.base_weights, args.split)
    other, same_truths = detections(args.other_cfg, args.other_weights, args.split)
    assert all(np.array_equal(a, b) for a, b in zip(truths, same_truths, strict=True))

    def ratio(picked: np.ndarray) -> float:
        chosen = [truths[i] for i in picked]
        return (
            score([other[i] for i in picked], chosen, names).mAP50
            / score([base[i] for i in picked], chosen, names).mAP50
        )

    whole = np.arange(len(truths))
    rng = np.random.default_rng(args.seed)
    drawn = np.array([ratio(rng.integers(0, len(truths), len(truths))) for _ in range(args.samples)])
    low, mid, high = np.percentile(drawn, [2.5, 50, 97.5])
    print(
        f"{args.split}: {len(truths)} photos; mAP@0.5 ratio {ratio(whole):.3f}; paired bootstrap "
        f"({args.samples} draws, seed {args.seed}): median {mid:.3f}, 95% interval {low:.3f}–{high:.3f}; "
        f"share of draws ≥ 0.95: {np.mean(drawn >= 0.95):.2f}"
    )


if __name__ == "__main__":
    main()
