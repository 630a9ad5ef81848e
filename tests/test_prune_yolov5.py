"""Slim pruning of the imported YOLOv5n (``cfgsurgeon import --checkpoint``), proved on the real weights:

* the compact model equals the unpruned one with the removed channels switched off by hand (the independent
  reference of tests/test_prune.py), on a real zoo photo, for ``slim`` and for the C3 shortcut-coupled
  channels (``shortcut``; ``layer-channel`` removes whole bottlenecks first);
* the pruned cfg/weights load in OpenCV's darknet importer, whose heads equal our torch backend's;
* ``prune --dry-run --target-bflops 0.6`` plans a model within 1 % of the target.

Which methods apply: the backbone's C3 bottlenecks add their input (7 ``[shortcut]`` layers), which couples
each C3's cv1 with its bottlenecks' second convs; ``normal`` leaves those coupled channels alone,
``shortcut``, ``slim`` and ``regular`` prune them as one unit, and ``layer``/``layer-channel`` can remove
whole bottlenecks (residual units).

The model runs at 320×320 (set in the written cfg's ``[net]``) so that each test takes a few CPU-seconds.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import MODELS_DIR, REPORT, SHARED_MARK, ZOO, quiet

from cfgsurgeon.ir import Graph, loads_cfg
from cfgsurgeon.weights import read_weights

torch = pytest.importorskip("torch")
F = torch.nn.functional

pytestmark = SHARED_MARK

YOLOV5N = MODELS_DIR / "yolov5n.pt"
SIZE = 320
TOLERANCE = 1e-4
SAFE_SLIM = 0.2  # below slim's safe bound on yolov5n (0.218); 0.3 would empty a layer


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkpoint imported once, its files written as ``cfgsurgeon import`` writes them."""
    if not YOLOV5N.is_file():
        pytest.skip(f"needs {YOLOV5N} (the read-only shared folder)")
    from cfgsurgeon.api.importing import import_checkpoint

    directory = tmp_path_factory.mktemp("yolov5n")
    import_checkpoint(YOLOV5N).save(directory)
    return directory


@pytest.fixture(scope="module")
def small(written: Path) -> Graph:
    """The imported model at ``SIZE``×``SIZE``: the written cfg with its ``[net]`` size changed."""
    text = (written / "yolov5n.cfg").read_text()
    text, count = re.subn(r"^(width|height)=640$", rf"\1={SIZE}", text, count=2, flags=re.M)
    assert count == 2
    graph = loads_cfg(text, "yolov5n.cfg", warn=quiet)
    read_weights(graph, written / "yolov5n.weights")
    return graph


def photo(graph: Graph, name: str = "dog.jpg") -> np.ndarray:
    from cfgsurgeon.images import load_image, network_input

    return network_input(graph, load_image(ZOO / "images" / name))[None]


# -- 1. compact ≡ masked + compensated -----------------------------------------------------------------------
def _pad_constants_then_conv(conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv`` with each spatially constant input channel padded with its own value, the others with 0."""
    flat = x.flatten(2)
    fill = torch.where(flat.amax(-1) == flat.amin(-1), flat[..., 0], 0.0)[..., None, None]
    height, width = conv.padding
    padded = F.pad(x - fill, (width, width, height, height)) + fill
    return F.conv2d(padded, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)


def masked_and_compensated(graph: Graph, removed: dict[int, list[int]], x: torch.Tensor) -> list[np.ndarray]:
    """Head outputs of the keep-size model with the removed channels switched off (test_prune's
    ``masked_reference``: γ = 0, so each outputs its constant act(β) exactly) and every padded conv taking
    such a constant channel padded with that constant: what folding the constant into the consumer's bias
    means at the borders, where zero padding would differ (YOLOv5's 3×3 convs are all padded)."""
    from test_prune import masked_reference, torch_model

    model = torch_model(masked_reference(graph, removed))
    padded = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and any(m.padding)]
    assert all(m.padding_mode == "zeros" for m in padded)
    for conv in padded:
        conv.forward = functools.partial(_pad_constants_then_conv, conv)
    with torch.inference_mode():
        return [y.numpy() for y in model(x)]


def compact_error(result, x: torch.Tensor) -> tuple[float, float]:
    """The compact model vs the masked and compensated reference, and vs the plainly masked one (zero
    padding: how far the border effect alone goes, reported, not asserted)."""
    from test_prune import check_kept_channels, masked_reference, outputs, rel_error

    removed = check_kept_channels(result)
    assert sum(map(len, removed.values())) > 0
    compact = outputs(result.pruned, x)
    plain = rel_error(compact, outputs(masked_reference(result.analysis.graph, removed), x))
    return rel_error(compact, masked_and_compensated(result.analysis.graph, removed, x)), plain


@pytest.mark.parametrize("method", ["slim", "shortcut"])
def test_compact_equals_masked_and_compensated(small: Graph, method: str) -> None:
    from cfgsurgeon.surgery.prune import prune

    result = prune(small, method, percent=SAFE_SLIM)
    coupled = [g for g in result.analysis.groups if g.shortcut_coupled]
    assert coupled  # the C3 bottleneck shortcuts tie channels together
    assert sum(int((~result.keep_unit[g.unit_ids]).sum()) for g in coupled) > 0, "no coupled channel went"
    error, plain = compact_error(result, torch.from_numpy(photo(small)).double())
    REPORT[f"yolov5n {method} {SAFE_SLIM} compact vs masked+compensated (dog.jpg at {SIZE})"] = (
        f"{error:.1e} (vs zero-padded masked: {plain:.2f})"
    )
    assert error <= TOLERANCE


def test_layer_channel_equals_bottlenecks_removed_then_masked(small: Graph) -> None:
    """``layer-channel``: whole bottlenecks go first (reference: their last conv's output switched off by
    hand, test_prune's ``without_units``), then slim channels of what is left, against the reference above."""
    from test_prune import outputs, rel_error, without_units

    from cfgsurgeon.surgery.prune import prune

    result = prune(small, "layer-channel", shortcuts=2, percent=0.1)
    assert len(result.removed_shortcuts) == 2
    x = torch.from_numpy(photo(small)).double()
    reference = outputs(without_units(small, result.removed_shortcuts), x)
    assert rel_error(outputs(result.analysis.graph, x), reference) <= TOLERANCE
    assert compact_error(result, x)[0] <= TOLERANCE


# -- 2. the pruned files in OpenCV's darknet importer --------------------------------------------------------
def test_pruned_files_match_opencv(written: Path, tmp_path: Path) -> None:
    cv2 = pytest.importorskip("cv2")
    from test_import_yolov5 import head_convs
    from test_torch_vs_opencv import opencv_blob_names, opencv_net, relative_error, write_for_opencv

    from cfgsurgeon.api.model import Model
    from cfgsurgeon.emit.torch import to_torch

    pruned = Model.load(written / "yolov5n.cfg", written / "yolov5n.weights").prune("slim", percent=SAFE_SLIM)
    pruned.save(tmp_path / "pruned")
    small_cfg = tmp_path / "small.cfg"
    text = (tmp_path / "pruned" / "pruned.cfg").read_text()
    small_cfg.write_text(re.sub(r"^(width|height)=640$", rf"\1={SIZE}", text, count=2, flags=re.M))
    graph = Model.load(small_cfg, tmp_path / "pruned" / "pruned.weights").graph
    net = opencv_net(*write_for_opencv(graph, tmp_path))
    assert cv2.dnn.readNetFromDarknet(str(small_cfg), str(tmp_path / "pruned" / "pruned.weights")) is not None
    names, heads = opencv_blob_names(net, graph), head_convs(graph)
    x = photo(graph).astype(np.float32)
    net.setInput(x)
    theirs = net.forward([names[i] for i in heads])
    with torch.no_grad():
        ours = to_torch(graph)(torch.from_numpy(x), keep=heads)
    errors = [relative_error(o.numpy().reshape(-1), t.reshape(-1)) for o, t in zip(ours, theirs, strict=True)]
    totals = pruned.report["totals"]
    REPORT[f"yolov5n slim {SAFE_SLIM} vs OpenCV (per head, dog.jpg at {SIZE})"] = ", ".join(
        f"{e:.1e}" for e in errors
    )
    REPORT[f"yolov5n slim {SAFE_SLIM}"] = (
        f"params {totals['params_before']:,} -> {totals['params_after']:,}, "
        f"BFLOPs {totals['bflops_before']:.3f} -> {totals['bflops_after']:.3f}"
    )
    assert max(errors) <= TOLERANCE, errors


# -- 3. a BFLOPs target -------------------------------------------------------------------------------------
def test_dry_run_meets_a_bflops_target(written: Path) -> None:
    from click.testing import CliRunner

    from cfgsurgeon.cli import main

    files = ["--cfg", str(written / "yolov5n.cfg"), "--weights", str(written / "yolov5n.weights")]
    args = [*files, "--method", "slim", "--target-bflops", "0.6", "--dry-run"]
    refused = CliRunner().invoke(main, ["prune", *args])
    assert refused.exit_code != 0 and "largest ratio that keeps every layer (0.218)" in refused.output
    result = CliRunner().invoke(main, ["prune", *args, "--force"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert re.fullmatch(r"target bflops 60\.00%: reached (\d+\.\d+)%", lines[0])
    predicted = re.search(r"BFLOPs ([\d.]+) -> ([\d.]+) \(([\d.]+)%\); nothing written", result.output)
    assert predicted is not None
    before, after = float(predicted[1]), float(predicted[2])
    assert before == pytest.approx(4.473, abs=1e-3)
    assert abs(after / before - 0.6) <= 0.01
    assert lines[2].split()[:3] == ["layer", "channels", "kept"]  # the plan table
    assert not list(written.glob("pruned*"))
    REPORT["yolov5n slim --target-bflops 0.6 (--force)"] = f"{lines[1]}; BFLOPs {before} -> {after}"
