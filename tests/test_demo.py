"""The demo pipeline (synthetic data → baseline → sparse → slim prune → fine-tune → table) at toy size: a
64×64 yolo-nano, 16 training images, one step per training stage. The full demo's acceptance figures come
from running ``cfgsurgeon demo`` itself (README)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from conftest import REPORT  # noqa: E402

from cfgsurgeon.demo import DemoPlan, run_demo  # noqa: E402
from cfgsurgeon.ir import load_cfg  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ROW_KEYS = {"model", "P", "R", "mAP50", "params", "size_bytes", "bflops", "latency_ms"}
TINY = DemoPlan(
    train_images=16,
    valid_images=4,
    batch=16,
    baseline_epochs=1,
    sparse_epochs=1,
    finetune_epochs=1,
    warmup=0,
    latency_runs=2,
    latency_warmup=1,
    progress=False,
)
WEIGHTS_HEADER = 20  # darknet's .weights: major, minor, revision (int32) and seen (int64), then float32s


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    cfg = root / "yolo-nano-64.cfg"
    text = (REPO / "cfg" / "yolo-nano.cfg").read_text()
    cfg.write_text(text.replace("width=128", "width=64").replace("height=128", "height=64"))
    lines: list[str] = []
    result = run_demo(root / "out", lines.append, cfg=cfg, plan=TINY, json_path=root / "demo.json")
    return root, result, lines


def test_demo_json_rows(tiny_demo):
    """``--json``: four rows in stage order with the documented keys and types; sizes are darknet's layout
    (header + 4 bytes per parameter); the pruned model is smaller in BFLOPs and params, fine-tuning keeps
    its shape; the copy in the output folder is the same document."""
    root, _, _ = tiny_demo
    document = json.loads((root / "demo.json").read_text())
    rows = document["rows"]
    assert [row["model"] for row in rows] == ["baseline", "sparse", "pruned", "finetuned"]
    for row in rows:
        assert set(row) == ROW_KEYS
        assert all(row[key] is None or 0 <= row[key] <= 1 for key in ("P", "R", "mAP50"))
        assert isinstance(row["params"], int) and isinstance(row["size_bytes"], int)
        assert row["size_bytes"] == WEIGHTS_HEADER + 4 * row["params"]
        assert row["latency_ms"] > 0
    baseline, sparse, pruned, finetuned = rows
    assert sparse["bflops"] == baseline["bflops"] and sparse["params"] == baseline["params"]
    assert pruned["bflops"] < baseline["bflops"] and pruned["params"] < baseline["params"]
    assert (finetuned["bflops"], finetuned["params"]) == (pruned["bflops"], pruned["params"])
    assert json.loads((root / "out" / "results.json").read_text()) == document
    REPORT["tiny demo: pruned / baseline BFLOPs"] = f"{pruned['bflops'] / baseline['bflops']:.3f}"


def test_demo_outputs_and_table(tiny_demo):
    """The pruned cfg on disk is the model of the table (BFLOPs recomputed from it), the prune ratio respects
    the safe bound and meets the BFLOPs target, the γ plots are PNGs, and the table lists every stage."""
    root, result, lines = tiny_demo
    out = root / "out"
    pruned = load_cfg(out / "pruned" / "pruned.cfg", warn=lambda m: None)
    assert pruned.bflops == pytest.approx(result.rows[2].bflops)
    assert 0 < result.prune.ratio <= result.prune.bound
    assert result.rows[2].bflops <= TINY.bflops_target * result.rows[0].bflops
    for name in ("gamma_before.png", "gamma_after.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = "\n".join(lines)
    for stage in ("baseline", "sparse", "pruned", "finetuned"):
        assert f"| {stage} |" in table
    assert set(result.seconds) >= {"data", "slim pruning", "evaluation", "latency", "total"}
