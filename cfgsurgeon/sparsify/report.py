"""The compression report of ``sparsify``: per-layer kernel sparsity, file sizes raw and gzipped (dense vs
sparse ``.weights`` and ``.tflite``), the TFLite model's output error against the float Keras model, and
TFLite CPU latency measured with ``bench``'s functions. Pure data in, JSON-ready dict and text lines out."""

from __future__ import annotations

import gzip
from typing import Any

import numpy as np

from ..ir import Graph
from .selection import Plan, layer_sparsity, prunable


def gzip_size(data: bytes) -> int:
    """Bytes of ``data`` after gzip at its default level 6 (no timestamp: same bytes, same size)."""
    return len(gzip.compress(data, compresslevel=6, mtime=0))


def sizes(dense: bytes, sparse: bytes) -> dict[str, Any]:
    """Raw and gzipped sizes of a dense and a sparse file, and how much gzip gains on each."""
    dense_gz, sparse_gz = gzip_size(dense), gzip_size(sparse)
    return {
        "dense": {"raw": len(dense), "gzip": dense_gz, "gzip_ratio": dense_gz / len(dense)},
        "sparse": {"raw": len(sparse), "gzip": sparse_gz, "gzip_ratio": sparse_gz / len(sparse)},
        "sparse_vs_dense_gzip": sparse_gz / dense_gz,
    }


def layer_rows(original: Graph, pruned: Graph, plan: Plan, target: float) -> list[dict[str, Any]]:
    """One row per prunable layer: kernel size, sparsity before and after, pruned or why not."""
    before, after = layer_sparsity(original), layer_sparsity(pruned)
    rows = []
    for layer in prunable(pruned):
        rows.append(
            {
                "layer": layer.index,
                "type": layer.kind,
                "kernel": list(layer.weights["weights"].shape),
                "params": int(layer.weights["weights"].size),
                "sparsity_before": before[layer.index],
                "sparsity": after[layer.index],
                "target": target if layer.index in plan.pruned else None,
                "dense_because": plan.dense.get(layer.index),
            }
        )
    return rows


def overall(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Kernel sparsity over the pruned layers and over every prunable layer (zeros / weights)."""

    def share(selected: list[dict[str, Any]]) -> float:
        total = sum(row["params"] for row in selected)
        return sum(row["sparsity"] * row["params"] for row in selected) / total if total else 0.0

    return {"pruned_layers": share([r for r in rows if r["target"] is not None]), "all_kernels": share(rows)}


def relative_error(ours: list[np.ndarray], reference: list[np.ndarray]) -> float:
    """Worst over the heads of ``max|ours − reference| / max|reference|``."""
    return max(
        float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-12))
        for a, b in zip(ours, reference, strict=True)
    )


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _size_line(name: str, figures: dict[str, Any]) -> str:
    dense, sparse = figures["dense"], figures["sparse"]
    return (
        f"{name:<9} dense {_mb(dense['raw'])} → gzip {_mb(dense['gzip'])} ({dense['gzip_ratio']:.3f}); "
        f"sparse {_mb(sparse['raw'])} → gzip {_mb(sparse['gzip'])} ({sparse['gzip_ratio']:.3f}); "
        f"sparse/dense gzipped {figures['sparse_vs_dense_gzip']:.3f}"
    )


def lines(report: dict[str, Any]) -> list[str]:
    """The report as text: settings, per-layer table, sizes, TFLite error and latency."""
    s = report["schedule"]
    out = [
        f"magnitude pruning ({report['mode']}): final sparsity {s['final_sparsity']}, PolynomialDecay "
        f"{s['initial_sparsity']} → {s['final_sparsity']} over steps {s['begin_step']}–{s['end_step']} every "
        f"{s['frequency']}; block {report['block'][0]}×{report['block'][1]}",
        f"{'layer':>5}  {'type':<15}{'kernel':<20}{'params':>10}{'before':>9}{'after':>9}  status",
    ]
    for row in report["layers"]:
        status = "pruned" if row["target"] is not None else f"dense: {row['dense_because']}"
        kernel = "×".join(map(str, row["kernel"]))
        out.append(
            f"{row['layer']:>5}  {row['type']:<15}{kernel:<20}{row['params']:>10,}"
            f"{row['sparsity_before']:>9.3f}{row['sparsity']:>9.3f}  {status}"
        )
    total = report["overall"]
    out.append(
        f"kernel sparsity: {total['pruned_layers']:.4f} over the pruned layers, "
        f"{total['all_kernels']:.4f} over all kernels"
    )
    tuned = report.get("fine_tune")
    if tuned and tuned["steps"]:
        first, last = tuned["steps"][0], tuned["steps"][-1]
        ending = (
            "" if tuned["finished_schedule"] else " (stopped before the end step: final masks applied then)"
        )
        out.append(
            f"fine-tuned {last['step']} steps: loss {first['loss']:.3f} → {last['loss']:.3f}, mean sparsity "
            f"of the pruned kernels {last['sparsity']:.4f} (schedule {last['target']:.4f}){ending}"
        )
    for name, figures in report["sizes"].items():
        out.append(_size_line(name, figures))
    tflite = report.get("tflite")
    if tflite:
        out.append(
            f"tflite ({tflite['quantize']}) vs float Keras, same weights: max relative error "
            f"{tflite['relative_error']:.2e} on {tflite['error_input']}"
        )
        for name, figures in tflite.get("latency", {}).items():
            ms = figures["latency_ms"]
            out.append(
                f"tflite CPU latency, {name}: median {ms['median']:.2f} ms, p90 {ms['p90']:.2f} ms "
                f"({tflite['threads']} threads, {tflite['runs']} runs, input {tflite['input']})"
            )
    return out


def markdown(report: dict[str, Any]) -> str:
    return "# Compression report\n\n```\n" + "\n".join(lines(report)) + "\n```\n"
