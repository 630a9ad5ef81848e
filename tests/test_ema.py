"""The moving average of the weights (``train --ema``): its recurrence, that it is what a run evaluates and
writes while training continues from the live weights, and that a resumed run continues it exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import nano_config

from cfgsurgeon.cli import main
from cfgsurgeon.errors import UsageError
from cfgsurgeon.ir import load_cfg
from cfgsurgeon.train.average import WeightAverage
from cfgsurgeon.train.trainer import train
from cfgsurgeon.weights import read_weights


def quiet(message: str) -> None:
    pass


def test_the_average_follows_the_documented_recurrence():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    average = WeightAverage(model, decay=0.9)
    expected = model[0].weight.detach().double().numpy().copy()
    rng = np.random.default_rng(0)
    for t in range(30):
        new = rng.normal(size=(2, 3))
        with torch.no_grad():
            model[0].weight.copy_(torch.from_numpy(new))
            model[1].num_batches_tracked.fill_(t + 7)
        kept = min(0.9, (1 + t) / (10 + t))  # 0.1, 0.18, ... then 0.9 from t = 80 / 9 on
        expected = kept * expected + (1 - kept) * new
        average.update(model)
    np.testing.assert_allclose(average.model[0].weight.double().numpy(), expected, rtol=1e-5)
    assert int(average.model[1].num_batches_tracked) == 36  # integer buffers are copied
    assert not any(p.requires_grad for p in average.model.parameters())


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5])
def test_a_decay_outside_the_open_interval_is_refused(decay):
    with pytest.raises(UsageError, match="`ema`"):
        WeightAverage(torch.nn.Linear(2, 2), decay)


def test_a_run_writes_and_evaluates_the_average_and_trains_the_live_weights(nano, tmp_path):
    result = train(nano_config(nano, tmp_path / "ema", ema=0.5, eval_every=1), log=quiet)
    plain = train(nano_config(nano, tmp_path / "plain", eval_every=1), log=quiet)
    assert result.step_losses == plain.step_losses  # the average never feeds back into training
    saved = torch.load(tmp_path / "ema" / "last.pt", weights_only=True)
    live, averaged = saved["train"]["live"], saved["state_dict"]
    assert saved["train"]["ema_updates"] == len(result.step_losses)
    written = load_cfg(nano[0], warn=quiet)
    read_weights(written, tmp_path / "ema" / f"{nano[0].stem}.weights")
    unaveraged = load_cfg(nano[0], warn=quiet)
    read_weights(unaveraged, tmp_path / "plain" / f"{nano[0].stem}.weights")
    conv = next(layer for layer in written.layers if layer.kind == "convolutional")
    key = f"blocks.{conv.index}.conv.weight"
    np.testing.assert_array_equal(written.layers[conv.index].weights["weights"], averaged[key].numpy())
    np.testing.assert_array_equal(unaveraged.layers[conv.index].weights["weights"], live[key].numpy())
    assert not np.array_equal(averaged[key].numpy(), live[key].numpy())


def test_a_resumed_run_continues_the_average_exactly(nano, tmp_path):
    whole = train(nano_config(nano, tmp_path / "whole", epochs=3, ema=0.6), log=quiet)
    train(nano_config(nano, tmp_path / "part", epochs=2, ema=0.6), log=quiet)
    resumed = train(
        nano_config(nano, tmp_path / "part2", epochs=3, ema=0.6, resume=tmp_path / "part" / "last.pt"),
        log=quiet,
    )
    assert resumed.step_losses == pytest.approx(whole.step_losses, rel=1e-6)
    for a, b in zip(whole.graph.layers, resumed.graph.layers, strict=True):
        for name, value in (a.weights or {}).items():
            np.testing.assert_allclose(b.weights[name], value, rtol=1e-5, atol=1e-6)


def test_ema_with_fading_channels_is_refused(nano, tmp_path):
    with pytest.raises(UsageError, match="`ema` cannot be combined with `fade`"):
        train(nano_config(nano, tmp_path / "x", ema=0.9, fade={0: [0]}), log=quiet)


def test_the_command_line_refuses_a_decay_of_one_in_one_line(nano, tmp_path):
    cfg, data = nano
    result = CliRunner().invoke(
        main, ["train", "--cfg", str(cfg), "--data", str(data), "--ema", "1", "-o", str(tmp_path / "x")]
    )
    assert result.exit_code != 0 and "--ema" in result.output and "Traceback" not in result.output
