"""Prune-aware training: the channels a plan removes (``Planner.removed_channels``) and their BN γ faded to
exactly 0 by the trainer (``TrainConfig.fade``), so that the plan's prune afterwards changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import nano_config
from test_plan import PLANNED
from test_prune import model, outputs, random_input, rel_error

from cfgsurgeon.errors import UsageError
from cfgsurgeon.ir import load_cfg
from cfgsurgeon.surgery.plan import Planner, plan_channels, prune_units
from cfgsurgeon.train.trainer import train


def test_removed_channels_are_each_units_smallest_gammas():
    graph = model(*PLANNED)
    removed = Planner(graph).removed_channels({"1": 0.5, "4": 0.3})
    smallest = {
        index: sorted(np.argsort(np.abs(graph.layers[index].weights["scales"]))[:count].tolist())
        for index, count in ((1, 6), (4, 3))  # round(0.5 · 12), round(0.3 · 10)
    }
    assert removed == smallest
    plan = {"rates": {"1": 0.5, "4": 0.3}, "criterion": "l1", "round_to": 4, "normalize": "none"}
    l1 = {
        index: np.abs(graph.layers[index].weights["weights"]).reshape(width, -1).sum(1)
        for index, width in ((1, 12), (4, 10))
    }
    assert plan_channels(graph, plan) == {
        1: sorted(np.argsort(l1[1])[:4].tolist()),
        4: sorted(np.argsort(l1[4])[:2].tolist()),
    }


def test_a_plan_pruning_faded_channels_changes_no_output():
    graph = model(*PLANNED)
    rates = {"1": 0.5, "4": 0.3}
    for index, chosen in Planner(graph).removed_channels(rates).items():
        graph.layers[index].weights["scales"][chosen] = 0.0  # what a finished fade leaves
    pruned = prune_units(graph, rates).pruned
    assert [layer.out_shape[0] for layer in pruned.layers[:7]] == [16, 6, 16, 16, 7, 13, 8]
    x = random_input(graph)
    assert rel_error(outputs(pruned, x), outputs(graph, x)) < 1e-5


def test_fade_leaves_exact_zeros(nano, tmp_path):
    graph = load_cfg(nano[0], warn=lambda message: None)
    fade = {0: [0, 2, 5], 2: [1, 3]}
    lines: list[str] = []
    trained = train(nano_config(nano, tmp_path / "run", fade=fade, seed=3), log=lines.append).graph
    assert any(line.startswith("fade: the γ of 5 BN channels in 2 layers") for line in lines)
    for index, chosen in fade.items():
        scales = trained.layers[index].weights["scales"]
        assert np.all(scales[chosen] == 0.0)
        others = np.delete(scales, chosen)
        assert np.all(others != 0.0)
    assert len(graph.layers) == len(trained.layers)


def test_fade_refuses_a_layer_without_batch_norm(nano, tmp_path):
    graph = load_cfg(nano[0], warn=lambda message: None)
    plain = next(layer.index for layer in graph.layers if not getattr(layer, "batch_normalize", 1))
    with pytest.raises(UsageError, match=f"fade: layer {plain} has no batch-normalised channels"):
        train(nano_config(nano, tmp_path / "run", fade={plain: [0]}), log=lambda line: None)


def _output_times_gradient(graph, data, images: int) -> dict[int, np.ndarray]:
    """Σ over pixels and images of (output − its constant part) · ∂L/∂output per channel, from hooks on each
    convolution's BN (or conv) output: the chain-rule form of γ·∂L/∂γ and of Σ w·∂L/∂w."""
    import torch

    from cfgsurgeon.emit.torch import DarknetModel
    from cfgsurgeon.train.dataset import DetectionDataset, collate
    from cfgsurgeon.train.loss import YoloLoss

    model = DarknetModel(graph).eval()
    found: dict[int, torch.Tensor] = {}

    def keep(index, constant):
        def hook(module, args, output):
            output.register_hook(lambda grad: found.__setitem__(index, grad * (output - constant())))

        return hook

    for layer in graph.layers:
        if layer.kind == "convolutional":
            block = model.blocks[layer.index]
            module = getattr(block, "bn", None) or block.conv
            bias = module.bias if layer.batch_normalize else block.conv.bias
            module.register_forward_hook(keep(layer.index, lambda b=bias: b.detach().view(1, -1, 1, 1)))
    dataset = DetectionDataset.from_data(data, "train", graph, augment=False)
    pictures, targets, _ = collate([dataset[k] for k in range(images)])
    loss = YoloLoss(graph)
    loss(model(pictures, keep=loss.sources), targets).total.backward()
    return {index: grad.sum((0, 2, 3)).double().numpy() for index, grad in found.items()}


def test_taylor_importance_is_the_squared_first_order_loss_change(nano):
    from cfgsurgeon.randinit import random_weights
    from cfgsurgeon.train.importance import taylor_importance

    cfg, data = nano
    graph = load_cfg(cfg, warn=lambda message: None)
    random_weights(graph, seed=1)
    scores = taylor_importance(graph, data, images=4, batch=4)
    expected = _output_times_gradient(graph, data, images=4)
    plain = [
        layer.index for layer in graph.layers if layer.kind == "convolutional" and not layer.batch_normalize
    ]
    assert plain and set(scores) == set(expected)
    for index, change in expected.items():
        np.testing.assert_allclose(scores[index], change**2, rtol=1e-3, atol=1e-9 * change.max() ** 2)
    assert taylor_importance(graph, data, images=4, batch=4)[plain[0]].tobytes() == scores[plain[0]].tobytes()


def test_taylor_criterion_prunes_the_least_important_channels_and_needs_them_measured():
    from cfgsurgeon.surgery.criteria import attach_importance, importance_of

    graph = model(*PLANNED)
    with pytest.raises(UsageError, match="criterion 'taylor' needs importance measured"):
        prune_units(graph, {"1": 0.5}, criterion="taylor")
    rng = np.random.default_rng(5)
    importance = {
        layer.index: rng.random(layer.out_shape[0]) for layer in graph.layers if layer.kind == "convolutional"
    }
    graph = attach_importance(graph, importance)
    assert importance_of(graph) == {str(k): v.tolist() for k, v in importance.items()}
    removed = Planner(graph, "taylor").removed_channels({"1": 0.5, "6": 0.25})
    assert removed == {
        1: sorted(np.argsort(importance[1])[:6].tolist()),
        6: sorted(np.argsort(importance[6])[:2].tolist()),
    }


def test_prune_by_taylor_needs_data_and_gives_the_api_result(nano, tmp_path):
    from click.testing import CliRunner

    from cfgsurgeon import Model
    from cfgsurgeon.cli import main
    from cfgsurgeon.randinit import random_weights
    from cfgsurgeon.weights import write_weights

    cfg, data = nano
    graph = load_cfg(cfg, warn=lambda message: None)
    random_weights(graph, seed=2)
    weights = tmp_path / "nano.weights"
    write_weights(graph, weights)
    args = ["prune", "--cfg", cfg, "--weights", weights, "--method", "slim", "--percent", "0.3"]
    args += ["--criterion", "taylor", "--no-verify"]
    refused = CliRunner().invoke(main, [str(a) for a in [*args, "-o", tmp_path / "x"]])
    assert refused.exit_code == 1 and "give --data" in refused.output and "Traceback" not in refused.output
    done = CliRunner().invoke(
        main, [str(a) for a in [*args, "--data", data, "--importance-images", 4, "-o", tmp_path / "cli"]]
    )
    assert done.exit_code == 0, done.output
    pruned = Model.load(cfg, weights).prune(
        "slim", percent=0.3, criterion="taylor", data=data, importance_images=4, verify=False
    )
    assert (
        done.stdout
        == str(pruned.save(tmp_path / "api")).replace(str(tmp_path / "api"), str(tmp_path / "cli")) + "\n"
    )
    assert (tmp_path / "cli" / "pruned.weights").read_bytes() == (
        tmp_path / "api" / "pruned.weights"
    ).read_bytes()


def test_a_taylor_analysis_records_importance_that_its_plan_and_prune_reuse(nano, tmp_path):
    from cfgsurgeon import Model
    from cfgsurgeon.randinit import random_weights
    from cfgsurgeon.train.importance import taylor_importance
    from cfgsurgeon.weights import write_weights

    cfg, data = nano
    graph = load_cfg(cfg, warn=lambda message: None)
    random_weights(graph, seed=4)
    write_weights(graph, tmp_path / "nano.weights")
    model = Model.load(cfg, tmp_path / "nano.weights")
    analysis = model.sensitivity(
        data, tmp_path / "sens", rates=(0.5,), criterion="taylor", images=4, proxy=True
    )
    measured = taylor_importance(graph, data, images=64)
    assert analysis.data["importance"] == {str(k): v.tolist() for k, v in measured.items()}
    plan = model.plan(analysis, target_bflops=0.8)
    assert plan.data["importance"] == analysis.data["importance"] and plan.data["criterion"] == "taylor"
    pruned = model.prune(plan=plan.data, verify=False)  # no data: the plan carries the importance
    by_data = model.prune(
        plan={"rates": plan.rates, "criterion": "taylor"}, data=data, importance_images=64, verify=False
    )
    assert pruned.model.graph.signature() == by_data.model.graph.signature()
    assert pruned.model.bflops <= 0.8 * model.bflops


def test_taylor_importance_is_zero_for_a_convolution_no_head_reads(nano, tmp_path):
    from cfgsurgeon.randinit import random_weights
    from cfgsurgeon.train.importance import taylor_importance

    cfg, data = nano
    dangling = tmp_path / "dangling.cfg"
    extra = "\n[convolutional]\nbatch_normalize=1\nfilters=4\nsize=1\nstride=1\npad=1\nactivation=leaky\n"
    dangling.write_text(cfg.read_text() + extra)
    graph = load_cfg(dangling, warn=lambda message: None)
    random_weights(graph, seed=1)
    scores = taylor_importance(graph, data, images=4, batch=4)
    last = len(graph.layers) - 1
    assert scores[last].tolist() == [0.0] * 4
    assert all(scores[index].any() for index in scores if index != last)
