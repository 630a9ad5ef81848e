"""Acceptance 3: conversions between darknet ``.weights``, our ``.pt`` checkpoints and the ultralytics/yolov3
archive's ``module_list`` state_dicts, exact to the bit; and the safety of reading checkpoints (never
unpickling code).

3a: ``.weights`` → module → ``.weights`` is byte-identical (the official yolov3-tiny and random-weight models
    with weighted shortcuts, [connected], [batchnorm], [implicit], share_index and old headers).
3b: ``.pt`` (ours or the archive layout) → ``.weights`` → module gives outputs identical to the module the
    checkpoint came from.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import MODELS_DIR, REPORT, quiet
from test_torch_source import ANCHORS, bit_equal, conv, load_graph, net, randomize, section

from cfgsurgeon import (
    Graph,
    UsageError,
    WeightsHeader,
    cfg_text,
    load_cfg,
    loads_cfg,
    read_weights,
    write_weights,
)
from cfgsurgeon.layers import BatchNorm, Convolutional, Shortcut

torch = pytest.importorskip("torch")

from cfgsurgeon.cli import main  # noqa: E402
from cfgsurgeon.convert import load_checkpoint, save_checkpoint  # noqa: E402
from cfgsurgeon.emit.torch import DarknetModel, store_darknet_weights, to_torch  # noqa: E402

TINY_CFG = MODELS_DIR / "yolov3-tiny.cfg"
TINY_WEIGHTS = MODELS_DIR / "yolov3-tiny.weights"


def need_tiny() -> None:
    if not TINY_WEIGHTS.is_file():
        pytest.skip(f"needs the read-only shared folder ({TINY_WEIGHTS} is absent)")


def outputs(model: DarknetModel, seed: int = 3) -> list[torch.Tensor]:
    shape = model.graph.input_shape
    x = torch.from_numpy(np.random.default_rng(seed).random((2, *shape), dtype=np.float32))
    with torch.no_grad():
        return model(x)


def assert_same_outputs(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert bit_equal(a.numpy(), b.numpy()), f"max |diff| {float((a - b).abs().max())}"


def reload(graph: Graph, weights: Path) -> Graph:
    """A fresh graph of the same cfg with ``weights`` read into it."""
    fresh = loads_cfg(cfg_text(graph), graph.source, warn=quiet)
    read_weights(fresh, weights)
    return fresh


# -- 3a: .weights → module → .weights ------------------------------------------------------------------------
@pytest.mark.shared
def test_real_yolov3_tiny_round_trips_byte_identical(tmp_path: Path) -> None:
    need_tiny()
    graph = load_cfg(TINY_CFG, warn=quiet)
    header = read_weights(graph, TINY_WEIGHTS)
    model = to_torch(graph)
    fresh = load_cfg(TINY_CFG, warn=quiet)
    store_darknet_weights(model, fresh)
    out = tmp_path / "again.weights"
    size = write_weights(fresh, out, header)
    assert out.read_bytes() == TINY_WEIGHTS.read_bytes()
    REPORT["3a yolov3-tiny .weights → module → .weights"] = f"byte-identical ({size:,} bytes)"


ROUND_TRIPS = {  # id: (cfg, input size, header written first)
    "yolov4-tiny": ("yolov4-tiny", 128, None),
    "efficientnet_b0": ("efficientnet_b0", 64, None),
    "ops_a-weighted-shortcuts-connected": ("ops_a", None, None),
    "ops_a-header-0.1": ("ops_a", None, WeightsHeader(0, 1, 0, 123)),
    "ops_a-transposed-connected": ("ops_a", None, WeightsHeader(1001, 0, 0, 5)),
    "ops_b-implicit-share_index": ("ops_b", None, None),
}


@pytest.mark.parametrize("case", list(ROUND_TRIPS))
def test_random_weights_round_trip_byte_identical(case: str, tmp_path: Path) -> None:
    name, size, header = ROUND_TRIPS[case]
    graph = randomize(load_graph(name, size), seed=7)
    first = tmp_path / "first.weights"
    write_weights(graph, first, header)
    loaded = reload(graph, first)
    model = to_torch(loaded)
    target = loads_cfg(cfg_text(graph), graph.source, warn=quiet)
    store_darknet_weights(model, target)
    second = tmp_path / "second.weights"
    write_weights(target, second, loaded.weights_header)
    assert second.read_bytes() == first.read_bytes()
    REPORT[f"3a {case}"] = f"byte-identical ({first.stat().st_size:,} bytes)"


def test_the_synthetic_cfgs_have_what_3a_needs() -> None:
    graph = load_graph("ops_a")
    shortcuts = [layer for layer in graph.layers if isinstance(layer, Shortcut)]
    assert {layer.weights_type for layer in shortcuts} == {"per_channel", "per_feature"}
    assert {layer.kind for layer in graph.layers} >= {"connected", "batchnorm", "softmax"}


# -- 3b: our .pt → .weights → module -------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "size"), [("ops_a", None), ("ops_b", None), ("yolov4-tiny", 96)])
def test_our_checkpoint_to_weights_gives_the_same_module(name: str, size: int | None, tmp_path: Path) -> None:
    graph = randomize(load_graph(name, size), seed=11)
    graph.weights_header = WeightsHeader(0, 2, 5, 123_456_789_012)
    model = to_torch(graph)
    checkpoint = tmp_path / "model.pt"
    save_checkpoint(model, checkpoint)
    from_pt = load_checkpoint(checkpoint, warn=quiet)
    assert from_pt.weights_header == graph.weights_header
    assert from_pt.signature() == graph.signature()
    weights = tmp_path / "model.weights"
    write_weights(from_pt, weights)
    assert_same_outputs(outputs(to_torch(reload(graph, weights))), outputs(model))
    REPORT[f"3b .pt → .weights → module ({name})"] = "outputs bit-identical"


def test_our_checkpoint_is_a_plain_dict(tmp_path: Path) -> None:
    graph = randomize(load_graph("ops_b"))
    save_checkpoint(graph, tmp_path / "m.pt")
    saved = torch.load(tmp_path / "m.pt", map_location="cpu", weights_only=True)
    assert set(saved) == {"format", "version", "cfg", "header", "state_dict"}
    assert (saved["format"], saved["version"]) == ("cfgsurgeon", 1)
    assert saved["header"] == {"major": 0, "minor": 2, "revision": 5, "seen": 0}
    assert saved["cfg"] == cfg_text(graph)
    model = to_torch(loads_cfg(saved["cfg"], warn=quiet))
    model.load_state_dict(saved["state_dict"])  # loads straight into the module


def test_a_given_cfg_replaces_the_embedded_one(tmp_path: Path) -> None:
    graph = randomize(load_graph("ops_a"))
    save_checkpoint(graph, tmp_path / "m.pt")
    cfg = tmp_path / "renamed.cfg"
    cfg.write_text(cfg_text(graph))
    assert load_checkpoint(tmp_path / "m.pt", cfg, warn=quiet).source == str(cfg)


def test_future_checkpoint_versions_are_refused(tmp_path: Path) -> None:
    torch.save({"format": "cfgsurgeon", "version": 2, "cfg": "", "state_dict": {}}, tmp_path / "v2.pt")
    with pytest.raises(UsageError, match="version 2 is not supported"):
        load_checkpoint(tmp_path / "v2.pt")


# -- 3b: the ultralytics/yolov3 archive layout ---------------------------------------------------------------
ARCHIVE_CFG = "\n".join(  # what the archive's create_modules builds: conv/bn, maxpool, shortcut, route, yolo
    [
        net(32),
        conv(8, 3, "leaky", bn=1),  # 0
        section("maxpool", size=2, stride=2),  # 1
        conv(16, 3, "leaky", bn=1),  # 2
        conv(16, 1, "leaky", bn=1),  # 3
        section("shortcut", **{"from": -2}, weights_type="per_feature", activation="linear"),  # 4
        section("batchnorm"),  # 5
        conv(16, 3, "leaky", bn=1),  # 6
        section("shortcut", **{"from": -3}, activation="linear"),  # 7
        conv(14, 1),  # 8
        section("yolo", mask="0,1", num=2, classes=2, anchors=ANCHORS),  # 9
        section("route", layers=7),  # 10
        section("upsample", stride=2),  # 11
        section("route", layers="-1,0"),  # 12
        conv(14, 1),  # 13
        section("yolo", mask="0,1", num=2, classes=2, anchors=ANCHORS),  # 14
    ]
)

_BN = {
    "bias": "biases",
    "weight": "scales",
    "running_mean": "rolling_mean",
    "running_var": "rolling_variance",
}


def archive_model(seed: int = 5) -> tuple[Graph, DarknetModel, torch.Tensor]:
    """A random model of ARCHIVE_CFG, and the raw ``w`` the archive's weighted shortcut would hold for it
    (darknet's weights are ``sigmoid(w)·2/n``)."""
    graph = randomize(loads_cfg(ARCHIVE_CFG, "archive.cfg", warn=quiet), seed=seed)
    raw_w = torch.from_numpy(np.random.default_rng(seed).normal(0, 1, 2).astype(np.float32))
    graph[4].weights = {"weights": (torch.sigmoid(raw_w) * (2 / 2)).numpy().reshape(2, 1)}
    return graph, to_torch(graph), raw_w


def archive_state_dict(
    graph: Graph, raw_w: torch.Tensor | None = None, conv: str = "Conv2d", bn: str = "BatchNorm2d"
) -> dict[str, torch.Tensor]:
    """The state_dict the archive's ``Darknet`` would hold for ``graph`` (its ``module_list`` naming)."""
    state: dict[str, torch.Tensor] = {}
    for layer in graph.layers:
        i, weights = layer.index, layer.weights or {}
        prefix = f"module_list.{i}"
        conv_name, bn_name = conv.format(i=i), bn.format(i=i)
        if isinstance(layer, Convolutional):
            state[f"{prefix}.{conv_name}.weight"] = torch.tensor(np.asarray(weights["weights"]))
            if not layer.batch_normalize:
                state[f"{prefix}.{conv_name}.bias"] = torch.tensor(np.asarray(weights["biases"]))
                continue
        if isinstance(layer, Convolutional | BatchNorm):
            owner = f"{prefix}.{bn_name}" if isinstance(layer, Convolutional) else prefix
            for key, name in _BN.items():
                state[f"{owner}.{key}"] = torch.tensor(np.asarray(weights[name]))
            state[f"{owner}.num_batches_tracked"] = torch.tensor(1000)
    if raw_w is not None:
        state["module_list.4.w"] = raw_w
    return state


def archive_checkpoint(state: dict, **extra: object) -> dict:
    sgd = torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=0.01, momentum=0.9)
    checkpoint = {"epoch": 41, "best_fitness": np.array([0.731]), "training_results": "  41/272  ...\n"}
    return {**checkpoint, "model": state, "optimizer": sgd.state_dict(), **extra}


def _prefixed(state: dict) -> dict:
    return {f"module.{key}": value for key, value in state.items()}


ARCHIVE_VARIANTS = {
    "train.py-checkpoint": lambda state: archive_checkpoint(state),
    "DataParallel-prefix-optimizer-None": lambda state: archive_checkpoint(_prefixed(state), optimizer=None),
    "bare-state_dict": lambda state: state,
    "with-seen": lambda state: archive_checkpoint(state, seen=torch.tensor(64_000)),
}


@pytest.mark.parametrize("variant", list(ARCHIVE_VARIANTS))
def test_archive_checkpoint_to_weights_gives_the_same_module(variant: str, tmp_path: Path) -> None:
    graph, model, raw_w = archive_model()
    checkpoint, cfg = tmp_path / "last.pt", tmp_path / "archive.cfg"
    torch.save(ARCHIVE_VARIANTS[variant](archive_state_dict(graph, raw_w)), checkpoint)
    cfg.write_text(ARCHIVE_CFG)
    converted = load_checkpoint(checkpoint, cfg, warn=quiet)
    assert converted.weights_header.seen == (64_000 if variant == "with-seen" else 0)
    weights = tmp_path / "last.weights"
    write_weights(converted, weights)
    assert_same_outputs(outputs(to_torch(reload(graph, weights))), outputs(model))
    REPORT[f"3b archive .pt ({variant}) → .weights → module"] = "outputs bit-identical"


def test_eriklindernoren_style_names_are_read(tmp_path: Path) -> None:
    """``conv_N`` / ``batch_norm_N`` (early ultralytics, eriklindernoren and pruning forks built on it)."""
    graph, model, raw_w = archive_model()
    state = archive_state_dict(graph, raw_w, conv="conv_{i}", bn="batch_norm_{i}")
    torch.save(state, tmp_path / "yolov3_ckpt_9.pth")
    (tmp_path / "archive.cfg").write_text(ARCHIVE_CFG)
    converted = load_checkpoint(tmp_path / "yolov3_ckpt_9.pth", tmp_path / "archive.cfg", warn=quiet)
    np.testing.assert_array_equal(converted[2].weights["weights"], graph[2].weights["weights"])
    write_weights(converted, tmp_path / "w.weights")
    assert_same_outputs(outputs(to_torch(reload(graph, tmp_path / "w.weights"))), outputs(model))


@pytest.mark.shared
def test_real_yolov3_tiny_in_archive_layout(tmp_path: Path) -> None:
    need_tiny()
    graph = load_cfg(TINY_CFG, warn=quiet)
    header = read_weights(graph, TINY_WEIGHTS)
    torch.save(archive_checkpoint(_prefixed(archive_state_dict(graph))), tmp_path / "best.pt")
    converted = load_checkpoint(tmp_path / "best.pt", TINY_CFG, warn=quiet)
    write_weights(converted, tmp_path / "best.weights", header)
    assert (tmp_path / "best.weights").read_bytes() == TINY_WEIGHTS.read_bytes()
    REPORT["3b yolov3-tiny in archive layout → .weights"] = "byte-identical to the official file"


# -- errors: one line, naming what is wrong ------------------------------------------------------------------
def _save_archive(tmp_path: Path, edit) -> tuple[Path, Path]:
    graph, _, raw_w = archive_model()
    state = archive_state_dict(graph, raw_w)
    edit(state)
    checkpoint, cfg = tmp_path / "last.pt", tmp_path / "archive.cfg"
    torch.save(archive_checkpoint(state), checkpoint)
    cfg.write_text(ARCHIVE_CFG)
    return checkpoint, cfg


def _error(checkpoint: Path, cfg: Path | None) -> str:
    with pytest.raises(UsageError) as error:
        load_checkpoint(checkpoint, cfg, warn=quiet)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_a_wrong_shape_names_key_and_shapes(tmp_path: Path) -> None:
    def shrink(state: dict) -> None:
        state["module_list.2.Conv2d.weight"] = state["module_list.2.Conv2d.weight"][:12]

    message = _error(*_save_archive(tmp_path, shrink))
    assert "'module_list.2.Conv2d.weight' has shape (12, 8, 3, 3)" in message
    assert "needs (16, 8, 3, 3)" in message


def test_missing_and_unexpected_keys_are_listed(tmp_path: Path) -> None:
    def edit(state: dict) -> None:
        del state["module_list.3.BatchNorm2d.running_var"]
        state["module_list.99.Conv2d.weight"] = torch.zeros(1)

    message = _error(*_save_archive(tmp_path, edit))
    assert "1 missing key (module_list.3.BatchNorm2d.running_var)" in message
    assert "1 unexpected key (module_list.99.Conv2d.weight)" in message


def test_an_archive_checkpoint_needs_a_cfg(tmp_path: Path) -> None:
    checkpoint, _ = _save_archive(tmp_path, lambda state: None)
    assert "carries no cfg: name it with `cfg_path`" in _error(checkpoint, None)


def test_an_unknown_dict_is_refused(tmp_path: Path) -> None:
    torch.save({"net": {"backbone.0.weight": torch.zeros(2)}}, tmp_path / "other.pt")
    assert "not a checkpoint this tool knows" in _error(tmp_path / "other.pt", None)


def test_a_file_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"\x00" * 64)
    assert "cannot read as a PyTorch checkpoint" in _error(tmp_path / "model.pt", None)


SPRUNG: list[str] = []


def _spring(text: str) -> str:
    SPRUNG.append(text)
    return text


class Trap:
    """Unpickling this runs code (``_spring``): exactly what weights_only=True must refuse."""

    def __reduce__(self) -> tuple:
        return (_spring, ("unpickled!",))


class TrainedModel(torch.nn.Module):  # what some trainers store as ckpt["model"]: the module object itself
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)


@pytest.mark.parametrize(
    "payload", [{"model": Trap()}, {"epoch": 3, "model": TrainedModel()}], ids=["reduce", "module"]
)
def test_pickled_objects_are_refused_without_running_code(payload: dict, tmp_path: Path) -> None:
    torch.save(payload, tmp_path / "last.pt")
    message = _error(tmp_path / "last.pt", None)
    assert "cannot be loaded safely with weights_only=True" in message
    assert "never unpickles" in message and "state_dict()" in message
    assert "test_convert." in message  # names the objects found
    assert SPRUNG == []


def test_the_trap_runs_code_when_unpickled_plainly() -> None:
    """Sanity check of the trap itself: plain unpickling does run it."""
    pickle.loads(pickle.dumps(Trap()))
    assert SPRUNG.pop() == "unpickled!"


# -- CLI -----------------------------------------------------------------------------------------------------
def cli(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["convert", *map(str, args)])
    assert "Traceback" not in result.output
    return result.exit_code, result.output


@pytest.mark.shared
def test_cli_weights_to_pt_to_weights_is_byte_identical(tmp_path: Path) -> None:
    need_tiny()
    code, output = cli("--cfg", TINY_CFG, "--weights", TINY_WEIGHTS, "-o", tmp_path / "tiny.pt")
    assert code == 0, output
    code, output = cli("--checkpoint", tmp_path / "tiny.pt", "-o", tmp_path / "tiny.weights")
    assert code == 0, output
    assert (tmp_path / "tiny.weights").read_bytes() == TINY_WEIGHTS.read_bytes()
    REPORT["3b CLI yolov3-tiny .weights → .pt → .weights"] = "byte-identical"


def test_cli_round_trip_without_shared(tmp_path: Path) -> None:
    graph = randomize(load_graph("ops_a"))
    cfg, weights = tmp_path / "ops_a.cfg", tmp_path / "ops_a.weights"
    cfg.write_text(cfg_text(graph))
    write_weights(graph, weights, WeightsHeader(0, 2, 5, 777))
    assert cli("--cfg", cfg, "--weights", weights, "-o", tmp_path / "m.pt")[0] == 0
    assert cli("--checkpoint", tmp_path / "m.pt", "-o", tmp_path / "back.weights")[0] == 0
    assert (tmp_path / "back.weights").read_bytes() == weights.read_bytes()


def test_cli_archive_checkpoint(tmp_path: Path) -> None:
    checkpoint, cfg = _save_archive(tmp_path, lambda state: None)
    code, output = cli("--cfg", cfg, "--checkpoint", checkpoint, "-o", tmp_path / "last.weights")
    assert code == 0, output
    assert "wrote" in output
    code, output = cli("--checkpoint", checkpoint, "-o", tmp_path / "x.weights")
    assert code == 1 and "name it with --cfg" in output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-o", "x.weights"], "give exactly one input"),
        (["--weights", "a.weights", "--checkpoint", "a.pt", "-o", "x.weights"], "give exactly one input"),
        (["--weights", "a.weights", "-o", "x.weights"], "--weights needs --cfg"),
        (["--checkpoint", "a.pt", "-o", "x.onnx"], "should end in .pt"),
        (["--checkpoint", "missing.pt", "-o", "x.weights"], "no such checkpoint file"),
    ],
    ids=["no-input", "two-inputs", "weights-without-cfg", "bad-suffix", "missing-file"],
)
def test_cli_usage_errors(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.weights").write_bytes(b"")
    code, output = cli(*args)
    assert code == 1
    assert message in output
    assert len(output.strip().splitlines()) == 1


def test_cli_refuses_to_overwrite_an_input(tmp_path: Path) -> None:
    graph = randomize(load_graph("ops_b"))
    save_checkpoint(graph, tmp_path / "m.pt")
    before = (tmp_path / "m.pt").read_bytes()
    code, output = cli("--checkpoint", tmp_path / "m.pt", "-o", tmp_path / "m.pt")
    assert code == 1 and "refusing to overwrite" in output
    assert (tmp_path / "m.pt").read_bytes() == before


def test_cli_pickled_object_is_one_clear_line(tmp_path: Path) -> None:
    torch.save({"epoch": 1, "model": TrainedModel()}, tmp_path / "last.pt")
    code, output = cli(
        "--cfg", tmp_path / "x.cfg", "--checkpoint", tmp_path / "last.pt", "-o", tmp_path / "x.weights"
    )
    assert code == 1
    assert len(output.strip().splitlines()) == 1
    assert "weights_only=True" in output and "never unpickles" in output
    assert not (tmp_path / "x.weights").exists()


def test_cli_help_explains_the_formats() -> None:
    result = CliRunner().invoke(main, ["convert", "--help"])
    assert result.exit_code == 0
    for word in (".weights", ".pt", "module_list.N.Conv2d.weight", "weights_only=True", "state_dict"):
        assert word in result.output
