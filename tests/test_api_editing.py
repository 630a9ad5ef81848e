"""The editing API (``Model.summary/save/retarget/init_weights/write/prune/prune_preview``) against the
commands it serves: for each command, the CLI's stdout is ``str(report)`` and the files it writes are the
API's, byte for byte (written into two folders). Each method's values are also checked against something
independent of it: OpenCV's darknet importer (parameter counts, forward outputs), the cfg text read with a
regular expression, counts worked out by hand, file sizes from the OS and ``torch.load``. Uses the
repository's cfg/yolo-nano*.cfg with ``init`` weights, so nothing here needs ../shared."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import REPO_CFG_DIR

from cfgsurgeon import Model, UsageError
from cfgsurgeon.cli import main
from cfgsurgeon.surgery.plan import prunable_units

NANO = REPO_CFG_DIR / "yolo-nano.cfg"
RES = REPO_CFG_DIR / "yolo-nano-res.cfg"
PRUNED = ("pruned.cfg", "pruned.weights", "report.md", "report.json")


def cli(*args: object) -> str:
    result = CliRunner().invoke(main, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    return result.stdout


def cli_error(*args: object) -> str:
    result = CliRunner().invoke(main, [str(arg) for arg in args])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    return result.output


def same_output(stdout: str, report: object, cli_dir: Path, api_dir: Path) -> None:
    """The CLI wrote into ``cli_dir`` and the API into ``api_dir``: the same text but for that folder."""
    assert stdout.replace(str(cli_dir), str(api_dir)) == f"{report}\n"


def same_files(a: Path, b: Path) -> None:
    names = sorted(path.name for path in a.iterdir())
    assert names == sorted(path.name for path in b.iterdir()) and names
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[Path, Path]:
    """``cfgsurgeon init`` weights with 30 % dead channels per BN layer, for each repository cfg."""
    folder = tmp_path_factory.mktemp("init")
    found = {}
    for cfg in (NANO, RES):
        found[cfg] = folder / f"{cfg.stem}.weights"
        cli("init", "--cfg", cfg, "-o", found[cfg], "--seed", 3, "--dead-fraction", 0.3)
    return found


def opencv_params(cfg: Path, weights: Path) -> int:
    """Floats in OpenCV's convolution and batch-norm blobs of the model (its own reading of the files)."""
    cv2 = pytest.importorskip("cv2")
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.enableFusion(False)
    layers = [net.getLayer(net.getLayerId(name)) for name in net.getLayerNames()]
    kept = [layer for layer in layers if layer.type in ("Convolution", "BatchNorm")]
    return sum(np.asarray(blob).size for layer in kept for blob in layer.blobs)


def opencv_outputs(cfg: Path, weights: Path) -> list[np.ndarray]:
    cv2 = pytest.importorskip("cv2")
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setInput(np.random.default_rng(0).random((1, 3, 128, 128), dtype=np.float32))
    return [np.asarray(out) for out in net.forward(net.getUnconnectedOutLayersNames())]


def cfg_values(cfg: Path, key: str) -> list[int]:
    return [int(value) for value in re.findall(rf"^{key}=(\d+)$", cfg.read_text(), flags=re.M)]


# -- inspect, rewrite --------------------------------------------------------------------------------------


def test_inspect_prints_the_summary(weights):
    model = Model.load(NANO, weights[NANO])
    assert cli("inspect", "--cfg", NANO, "--weights", weights[NANO]) == f"{model.summary()}\n"
    assert cli("inspect", "--cfg", NANO, "--json") == f"{Model.load(NANO).summary().json()}\n"


def test_summary_counts_what_opencv_reads(weights):
    data = Model.load(NANO, weights[NANO]).summary().data
    assert data["params"] == opencv_params(NANO, weights[NANO])
    convs = [layer for layer in data["layers"] if layer["type"] == "convolutional"]
    assert [layer["output"][0] for layer in convs] == cfg_values(NANO, "filters")


def test_rewrite_is_save(weights, tmp_path: Path):
    stdout = cli("rewrite", "--cfg", RES, "--weights", weights[RES], "-o", tmp_path / "cli")
    saved = Model.load(RES, weights[RES]).save(tmp_path / "api")
    same_output(stdout, saved, tmp_path / "cli", tmp_path / "api")
    same_files(tmp_path / "cli", tmp_path / "api")


# -- retarget ----------------------------------------------------------------------------------------------


def test_retarget_command_is_the_api(weights, tmp_path: Path):
    names, old = tmp_path / "new.names", tmp_path / "old.names"
    names.write_text("car\nzebra\nbus\n")
    old.write_text("bus\ncar\ndog\n")
    args = ("--names", names, "--old-names", old, "--seed", 5, "-o", tmp_path / "cli")
    stdout = cli("retarget", "--cfg", NANO, "--weights", weights[NANO], *args)
    report = Model.load(NANO, weights[NANO]).retarget(names=names, old_names=old, seed=5)
    same_output(stdout, report.save(tmp_path / "api"), tmp_path / "cli", tmp_path / "api")
    same_files(tmp_path / "cli", tmp_path / "api")


def test_retarget_inherits_by_name_and_resizes_the_heads(weights, tmp_path: Path):
    model = Model.load(NANO, weights[NANO])
    report = model.retarget(names=["Car", "zebra"], old_names=["bus", "car", "dog"])
    assert report.classes == 2 and report.sources == [1, None] and report.inherited == {"Car": 1}
    assert str(report) == "inherited: Car <- 1; initialised afresh: 1"
    report.save(tmp_path)
    written = tmp_path / "yolo-nano.cfg"
    assert set(cfg_values(written, "classes")) == {2}
    assert cfg_values(written, "filters")[-1] == 3 * (5 + 2)  # the last conv feeds the last [yolo]
    assert set(cfg_values(NANO, "classes")) == {3} and model.params == Model.load(NANO).params


def test_retarget_needs_classes_or_names(weights):
    with pytest.raises(UsageError, match="`classes`"):
        Model.load(NANO).retarget()
    assert "give --classes N or --names FILE" in cli_error("retarget", "--cfg", NANO, "-o", "unused")


# -- init --------------------------------------------------------------------------------------------------


def test_init_command_is_the_api(tmp_path: Path):
    for folder in ("cli", "api"):
        (tmp_path / folder).mkdir()
    args = ("--seed", 2, "--dead-fraction", 0.25)
    stdout = cli("init", "--cfg", RES, "-o", tmp_path / "cli" / "res.weights", *args)
    report = Model.load(RES).init_weights(seed=2, dead_fraction=0.25)
    same_output(stdout, report.save(tmp_path / "api" / "res.weights"), tmp_path / "cli", tmp_path / "api")
    same_files(tmp_path / "cli", tmp_path / "api")


def test_init_weights_kills_exactly_the_dead_fraction():
    model = Model.load(NANO)
    fresh = model.init_weights(seed=1, dead_fraction=0.3).model
    assert not model.has_weights and fresh.has_weights
    bn = [layer for layer in fresh.layers if layer.weights and "scales" in layer.weights]
    assert len(bn) == 11
    for layer in bn:
        dead = (layer.weights["scales"] == 0) & (layer.weights["biases"] == 0)
        assert dead.sum() == round(0.3 * layer.filters), layer.index
    with pytest.raises(UsageError, match="`dead_fraction`"):
        model.init_weights(dead_fraction=1.0)


# -- convert -----------------------------------------------------------------------------------------------


def test_convert_command_is_write(weights, tmp_path: Path):
    for folder in ("cli", "api"):
        (tmp_path / folder).mkdir()
    stdout = cli("convert", "--cfg", NANO, "--weights", weights[NANO], "-o", tmp_path / "cli" / "m.pt")
    written = Model.load(NANO, weights[NANO]).write(tmp_path / "api" / "m.pt")
    same_output(stdout, written, tmp_path / "cli", tmp_path / "api")
    stdout = cli("convert", "--checkpoint", tmp_path / "cli" / "m.pt", "-o", tmp_path / "cli" / "m.weights")
    written = Model.load(None, tmp_path / "api" / "m.pt").write(tmp_path / "api" / "m.weights")
    same_output(stdout, written, tmp_path / "cli", tmp_path / "api")
    same_files(tmp_path / "cli", tmp_path / "api")


def test_write_round_trips_through_a_checkpoint(weights, tmp_path: Path):
    torch = pytest.importorskip("torch")
    model = Model.load(NANO, weights[NANO])
    written = model.write(tmp_path / "m.pt")
    assert written.size == (tmp_path / "m.pt").stat().st_size and written.params == model.params
    checkpoint = torch.load(tmp_path / "m.pt", weights_only=True)
    assert checkpoint["format"] == "cfgsurgeon"
    bn_counters = sum(
        value.numel() for key, value in checkpoint["state_dict"].items() if "num_batches" in key
    )
    assert sum(value.numel() for value in checkpoint["state_dict"].values()) - bn_counters == model.params
    Model.load(None, tmp_path / "m.pt").write(tmp_path / "back.weights")
    assert (tmp_path / "back.weights").read_bytes() == weights[NANO].read_bytes()
    with pytest.raises(UsageError, match="refusing to overwrite"):
        model.write(weights[NANO])


# -- prune -------------------------------------------------------------------------------------------------


def hand_plan() -> dict:
    graph = Model.load(RES).graph
    single = [unit for unit in prunable_units(graph) if len(unit.producers) == 1 and unit.channels >= 8]
    return {"rates": {single[0].key: 0.5, single[1].key: 0.25}}


REQUESTS = {
    "slim": {"method": "slim", "percent": 0.2, "criterion": "l1"},
    "borders": {"method": "shortcut", "percent": 0.5},  # verified: the note with the measured deviation
    "target": {"method": "shortcut", "target_bflops": 0.6},
    "regular": {"method": "regular", "percent": 0.4, "round_to": "pow2"},
}


def flags(request: dict) -> list[object]:
    found: list[object] = []
    for key, value in request.items():
        found += [f"--{key.replace('_', '-')}", value]
    return found


@pytest.mark.parametrize("name", list(REQUESTS))
def test_prune_command_is_the_api(weights, tmp_path: Path, name: str):
    request, verify = REQUESTS[name], name == "borders"
    args = ("--cfg", RES, "--weights", weights[RES], *flags(request), "-o", tmp_path / "cli")
    stdout = cli("prune", *args, *([] if verify else ["--no-verify"]))
    pruned = Model.load(RES, weights[RES]).prune(**request, verify=verify)
    same_output(stdout, pruned.save(tmp_path / "api"), tmp_path / "cli", tmp_path / "api")
    same_files(tmp_path / "cli", tmp_path / "api")
    assert pruned.report == json.loads((tmp_path / "api" / "report.json").read_text())


def test_prune_by_a_plan_dict_is_the_command_by_its_file(weights, tmp_path: Path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(hand_plan()))
    args = ("--cfg", RES, "--weights", weights[RES], "--plan", plan, "--keep-seen", "--no-verify")
    stdout = cli("prune", *args, "-o", tmp_path / "cli")
    pruned = Model.load(RES, weights[RES]).prune(plan=hand_plan(), verify=False)
    same_output(stdout, pruned.save(tmp_path / "api", keep_seen=True), tmp_path / "cli", tmp_path / "api")
    same_files(tmp_path / "cli", tmp_path / "api")


PREVIEWS = {
    "slim": {"method": "slim", "percent": 0.3, "normalize": "mean"},
    "refused": {"method": "slim", "percent": 0.99},
    "target": {"method": "shortcut", "target_params": 0.5},
}


@pytest.mark.parametrize("name", list(PREVIEWS))
def test_dry_run_is_prune_preview(weights, name: str):
    request = PREVIEWS[name]
    stdout = cli("prune", "--cfg", RES, "--weights", weights[RES], *flags(request), "--dry-run")
    assert stdout == f"{Model.load(RES, weights[RES]).prune_preview(**request)}\n"


def test_dry_run_of_a_plan_is_prune_preview(weights, tmp_path: Path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(hand_plan()))
    stdout = cli("prune", "--cfg", RES, "--weights", weights[RES], "--plan", plan, "--dry-run")
    assert stdout == f"{Model.load(RES, weights[RES]).prune_preview(plan=plan)}\n"


def test_the_preview_predicts_the_written_size(weights, tmp_path: Path):
    model = Model.load(RES, weights[RES])
    preview = model.prune_preview("slim", percent=0.3)
    model.prune("slim", percent=0.3, verify=False).save(tmp_path)
    floats = ((tmp_path / "pruned.weights").stat().st_size - 20) // 4  # darknet 0.2 header: 20 bytes
    assert (
        preview.data["totals"]["params_after"] == floats and preview.data["totals"]["params_before"] > floats
    )
    assert preview.warnings == [] and preview.target is None


def test_a_pruned_model_computes_what_the_original_does_in_opencv(weights, tmp_path: Path):
    """30 % of each BN layer's channels are dead: removing 20 % of the candidates removes only dead
    channels, so OpenCV's outputs of the written model are the original's."""
    model = Model.load(NANO, weights[NANO])
    pruned = model.prune("slim", percent=0.2)
    pruned.save(tmp_path)
    cfg, written = tmp_path / "pruned.cfg", tmp_path / "pruned.weights"
    assert pruned.model.params == pruned.report["totals"]["params_after"] == opencv_params(cfg, written)
    assert pruned.model.params < model.params == Model.load(NANO, weights[NANO]).params
    for ours, theirs in zip(opencv_outputs(cfg, written), opencv_outputs(NANO, weights[NANO]), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
    assert pruned.report["compensation"]["measured_relative_error"] < 1e-5


def test_prune_refusals_name_the_parameters(weights, tmp_path: Path):
    model = Model.load(RES, weights[RES])
    with pytest.raises(UsageError, match="give exactly one of `method` and `plan`"):
        model.prune(percent=0.1)
    with pytest.raises(UsageError, match="give no `percent` or `threshold`"):
        model.prune_preview("slim", percent=0.1, target_bflops=0.5)
    with pytest.raises(UsageError, match='a plan needs "rates"'):
        model.prune(plan={"rate": {}})
    args = ("prune", "--cfg", RES, "--weights", weights[RES], "--percent", 0.1, "-o", tmp_path)
    assert cli_error(*args) == "Error: give exactly one of --method and --plan\n"


def test_pruned_save_never_overwrites_the_parents_files(weights, tmp_path: Path):
    cfg, parent = tmp_path / "pruned.cfg", tmp_path / "pruned.weights"
    cfg.write_bytes(RES.read_bytes())
    parent.write_bytes(weights[RES].read_bytes())
    pruned = Model.load(cfg, parent).prune("slim", percent=0.1, verify=False)
    with pytest.raises(UsageError, match="refusing to overwrite the input file"):
        pruned.save(tmp_path)
    assert (cfg.read_bytes(), parent.read_bytes()) == (RES.read_bytes(), weights[RES].read_bytes())
