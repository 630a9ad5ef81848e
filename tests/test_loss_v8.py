"""The YOLOv8 loss (cfgsurgeon/train/loss_v8.py) against ultralytics' own ``v8DetectionLoss`` on the same
batch and predictions: each term within 1e-4 (relative), and the gradients with respect to the predictions."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from ultralytics_oracle import ultralytics_or_skip  # noqa: E402

from cfgsurgeon.train.loss_v8 import TERMS, V8DetectionLoss  # noqa: E402

CLASSES = 5
REG_MAX = 16
STRIDES = (8, 16, 32)
HEIGHT, WIDTH = 96, 128  # not square: rows and columns must not be swapped anywhere
TOLERANCE = 1e-4


class _DetectStandIn(torch.nn.Module):
    """What v8DetectionLoss.__init__ reads of a DetectionModel: a parameter (its device), ``args`` (the gains)
    and ``model[-1]`` (the Detect head's nc, no, reg_max and strides)."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.args = SimpleNamespace(box=7.5, cls=0.5, dfl=1.5)
        head = SimpleNamespace(
            nc=CLASSES,
            reg_max=REG_MAX,
            no=CLASSES + 4 * REG_MAX,
            stride=torch.tensor(STRIDES, dtype=torch.float32),
        )
        self.model = [head]


def _reference_loss(maps: list, targets):
    """ultralytics' loss of ``maps`` (per level ``[B, 4·reg_max + nc, H, W]``): its 3 terms × batch size."""
    ultralytics_or_skip()
    from ultralytics.utils.loss import v8DetectionLoss

    loss = v8DetectionLoss(_DetectStandIn())
    images = maps[0].shape[0]
    preds = {
        "boxes": torch.cat([m[:, : 4 * REG_MAX].reshape(images, 4 * REG_MAX, -1) for m in maps], dim=-1),
        "scores": torch.cat([m[:, 4 * REG_MAX :].reshape(images, CLASSES, -1) for m in maps], dim=-1),
        "feats": maps,
    }
    batch = {"batch_idx": targets[:, 0], "cls": targets[:, 1], "bboxes": targets[:, 2:6]}
    terms, _ = loss.loss(preds, batch)
    return terms


def _targets(generator, per_image: list[int]):
    """``[image, class, cx, cy, w, h]`` rows, normalised, with a truth smaller than a stride and truths at the
    image's edges among them."""
    rows = []
    for image, count in enumerate(per_image):
        for _ in range(count):
            w, h = (torch.rand(2, generator=generator) * 0.5 + 0.05).tolist()
            cx = float(torch.rand(1, generator=generator)) * (1 - w) + w / 2
            cy = float(torch.rand(1, generator=generator)) * (1 - h) + h / 2
            label = int(torch.randint(CLASSES, (1,), generator=generator))
            rows.append([image, label, cx, cy, w, h])
    if len(rows) > 1:
        rows[0][4:6] = [3 / WIDTH, 5 / HEIGHT]  # narrower than every stride: widened to find its candidates
        rows[-1][2:6] = [0.9, 0.85, 0.2, 0.3]  # touching the bottom-right corner
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 6)


def _maps(generator, images: int, spread: float) -> list:
    """Random head maps; ``spread`` scales the box logits (large: peaked distributions, varied boxes)."""
    maps = []
    for stride in STRIDES:
        raw = torch.randn(
            images, 4 * REG_MAX + CLASSES, HEIGHT // stride, WIDTH // stride, generator=generator
        )
        raw[:, : 4 * REG_MAX] *= spread
        maps.append(raw.requires_grad_(True))
    return maps


def _compare(maps: list, targets) -> None:
    ours_maps = [m.detach().clone().requires_grad_(True) for m in maps]
    total, terms = V8DetectionLoss(CLASSES, STRIDES, REG_MAX)(ours_maps, targets.clone())
    reference = _reference_loss(maps, targets.clone())
    for k, name in enumerate(TERMS):
        expected, found = float(reference[k].detach()), float(terms[name].detach())
        assert abs(found - expected) <= TOLERANCE * abs(expected) + 1e-7, (name, found, expected)
    total.backward()
    reference.sum().backward()
    for ours, theirs in zip(ours_maps, maps, strict=True):
        scale = float(theirs.grad.abs().max())
        assert scale > 0
        assert float((ours.grad - theirs.grad).abs().max()) <= TOLERANCE * scale


@pytest.mark.parametrize(("seed", "spread"), [(0, 1.0), (1, 4.0), (2, 8.0)])
def test_terms_and_gradients_equal_ultralytics(seed: int, spread: float):
    """Four images with 3, 0, 1 and 6 truths."""
    ultralytics_or_skip()
    generator = torch.Generator().manual_seed(seed)
    targets = _targets(generator, [3, 0, 1, 6])
    _compare(_maps(generator, 4, spread), targets)


def test_a_batch_without_truths_equals_ultralytics():
    """No truth anywhere: box and dfl are 0, every class target is 0."""
    ultralytics_or_skip()
    generator = torch.Generator().manual_seed(3)
    _compare(_maps(generator, 2, 1.0), torch.zeros((0, 6)))


def test_positives_from_near_boxes_equal_ultralytics():
    """Predictions close to the truths: many candidates align above 0, so the top ten are truly chosen; a
    truth as large as the image, matched on the finest level's first column, has its right side more than
    ``reg_max − 1`` cells away from its positives (their distribution targets are clamped)."""
    ultralytics_or_skip()
    generator = torch.Generator().manual_seed(4)
    large = torch.tensor([[2, 1, 0.5, 0.5, 0.97, 0.96]])
    targets = torch.cat([_targets(generator, [5, 2, 3]), large])
    maps = [m.detach() for m in _maps(generator, 3, 1.0)]
    for m, stride in zip(maps, STRIDES, strict=True):
        _pull_towards(m, targets if stride == STRIDES[0] else targets[:-1], stride)
    maps[0][2, 4 * REG_MAX + 1, :, 0] += 8.0  # the first column scores the large truth's class best
    _compare([m.requires_grad_(True) for m in maps], targets)


def _pull_towards(raw, targets, stride: int) -> None:
    """Box logits of the cells inside each truth peaked at the bin nearest its side's distance."""
    _, _, rows, cols = raw.shape
    for image, _, cx, cy, w, h in targets.tolist():
        left, top = (cx - w / 2) * WIDTH / stride, (cy - h / 2) * HEIGHT / stride
        right, bottom = (cx + w / 2) * WIDTH / stride, (cy + h / 2) * HEIGHT / stride
        for row in range(int(top), min(rows, int(bottom) + 1)):
            for col in range(int(left), min(cols, int(right) + 1)):
                x, y = col + 0.5, row + 0.5
                for side, distance in enumerate((x - left, y - top, right - x, bottom - y)):
                    bin_ = min(REG_MAX - 1, max(0, round(distance)))
                    raw[int(image), side * REG_MAX + bin_, row, col] += 6.0


# -- training a model whose head is [anchor_free] ------------------------------------------------------------
def _level_head(features: int, classes: int) -> str:
    """ultralytics' Detect branches for one level (7 layers), as the importer writes them: box and class
    convolutions, then a route of both (box first)."""
    branch = "[convolutional]\nbatch_normalize=1\nfilters=8\nsize=3\npad=1\nactivation=swish\n\n"
    last = "[convolutional]\nfilters={}\nsize=1\nactivation=linear\n\n"
    route = f"[route]\nlayers={features}\n\n"
    box = route + branch + last.format(4 * REG_MAX)
    cls = route + branch + last.format(classes)
    return box + cls + "[route]\nlayers=-4,-1\n\n"


def _tiny_v8_cfg(classes: int = 3) -> str:
    """64×64 input, a backbone of strided convolutions to strides 8, 16 and 32, a v8 head on each."""
    conv = "[convolutional]\nbatch_normalize=1\nfilters={}\nsize=3\nstride=2\npad=1\nactivation=swish\n\n"
    text = "[net]\nwidth=64\nheight=64\nchannels=3\n\n" + "".join(conv.format(f) for f in (8, 16, 16, 32, 32))
    levels = []
    for features in (2, 3, 4):  # the backbone's layers at strides 8, 16, 32
        text += _level_head(features, classes)
        levels.append(5 + 7 * len(levels) + 6)
    layers = ",".join(map(str, levels))
    return text + f"[anchor_free]\nlayers={layers}\nclasses={classes}\nreg_max={REG_MAX}\nstrides=8,16,32\n"


@pytest.fixture(scope="module")
def tiny_v8(tmp_path_factory):
    from cfgsurgeon.train.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("tiny_v8")
    cfg = root / "tiny-v8.cfg"
    cfg.write_text(_tiny_v8_cfg())
    return cfg, make_synthetic_dataset(root / "data", train=4, valid=2, size=64, seed=0)


def _train_tiny(tiny_v8, out, **overrides):
    from cfgsurgeon.train.trainer import TrainConfig, train

    cfg, data = tiny_v8
    settings = dict(
        cfg=cfg, data=data, output=out, epochs=2, batch=4, warmup=0, lr=0.05, lr_policy="constant"
    )
    settings.update(progress=False, gamma_plots=False, **overrides)
    lines: list[str] = []
    return train(TrainConfig(**settings), log=lines.append), lines


def test_a_v8_head_trains_with_the_v8_loss(tiny_v8, tmp_path):
    """The trainer picks the v8 loss for an [anchor_free] head: 2 steps (the whole set each) lower it, and the
    epoch lines name its terms."""
    result, lines = _train_tiny(tiny_v8, tmp_path / "plain")
    first, second = result.step_losses
    assert 0 < second < first, result.step_losses
    record = result.epochs[-1]
    assert record.obj == 0 and record.dfl > 0 and record.box > 0 and record.cls > 0
    assert any(
        " (box " in line and " cls " in line and " dfl " in line and " obj " not in line for line in lines
    )


def test_sparse_training_runs_on_a_v8_head(tiny_v8, tmp_path):
    result, _ = _train_tiny(tiny_v8, tmp_path / "sparse", sparsity=0.01)
    assert len(result.step_losses) == 2 and all(0 < loss < 1e4 for loss in result.step_losses)
    assert result.epochs[-1].safe_ratio is not None
    assert (tmp_path / "sparse" / "tiny-v8.weights").is_file()


def test_distillation_of_a_v8_head_is_refused_in_one_line(tiny_v8, tmp_path):
    from cfgsurgeon.errors import UsageError

    cfg, _ = tiny_v8
    with pytest.raises(UsageError, match=r"distillation \(`teacher_weights`\) supports models with \[yolo\]"):
        _train_tiny(tiny_v8, tmp_path / "kd", teacher_cfg=cfg, teacher_weights=tmp_path / "teacher.weights")


def test_a_model_with_two_kinds_of_head_is_refused_in_one_line(tmp_path):
    from cfgsurgeon.errors import UsageError
    from cfgsurgeon.ir import load_cfg
    from cfgsurgeon.train.trainer import loss_for

    conv = "[route]\nlayers=4\n\n[convolutional]\nfilters=24\nsize=1\nactivation=linear\n\n"
    yolo = "[yolo]\nmask=0,1,2\nanchors=4,5, 8,9, 12,13\nclasses=3\nnum=3\n"
    cfg = tmp_path / "both.cfg"
    cfg.write_text(_tiny_v8_cfg() + "\n" + conv + yolo)
    with pytest.raises(UsageError, match=r"has \[\w+\] and \[\w+\] heads: training supports one kind"):
        loss_for(load_cfg(cfg, warn=lambda m: None))


# -- end to end: ultralytics' own model and loss against the imported checkpoint and the trainer's loss -----
@pytest.mark.slow
def test_imported_yolov8n_trains_on_ultralytics_loss(tmp_path):
    """yolov8n built and saved by ultralytics (seeded random weights): its own forward and v8DetectionLoss on
    a batch vs our import of the checkpoint, run by our torch backend, with the loss the trainer picks —
    each term within 1e-4 and the gradient with respect to the input images too (measured 1.2e-6 and
    4.9e-6)."""
    ultralytics = ultralytics_or_skip()
    from test_import_yolov8 import SIZE, build_checkpoint, our_graph
    from ultralytics.utils.loss import v8DetectionLoss

    from cfgsurgeon.emit.torch import DarknetModel
    from cfgsurgeon.train.loss_v8 import AnchorFreeLoss
    from cfgsurgeon.train.trainer import loss_for

    checkpoint = build_checkpoint(ultralytics, "yolov8n.yaml", tmp_path / "yolov8n.pt")
    generator = torch.Generator().manual_seed(7)
    images = torch.rand(3, 3, SIZE, SIZE, generator=generator)
    targets = _targets(generator, [4, 0, 7])
    targets[:, 1] = torch.randint(80, (len(targets),), generator=generator)

    model = ultralytics.YOLO(checkpoint).model.float().eval()
    model.args = SimpleNamespace(box=7.5, cls=0.5, dfl=1.5)
    theirs = images.clone().requires_grad_(True)
    batch = {"batch_idx": targets[:, 0], "cls": targets[:, 1], "bboxes": targets[:, 2:6]}
    reference, _ = v8DetectionLoss(model)(model(theirs), batch)
    reference.sum().backward()

    graph = our_graph(checkpoint)
    loss = loss_for(graph)
    assert isinstance(loss, AnchorFreeLoss)
    ours = images.clone().requires_grad_(True)
    terms = loss(DarknetModel(graph).eval()(ours, keep=loss.sources), targets)
    (terms.total * len(images)).backward()  # the trainer's terms are ultralytics' before its × batch size
    for k, name in enumerate(TERMS):
        expected, found = float(reference[k].detach()), float(getattr(terms, name).detach()) * len(images)
        assert abs(found - expected) <= TOLERANCE * abs(expected), (name, found, expected)
    assert float((ours.grad - theirs.grad).abs().max()) <= TOLERANCE * float(theirs.grad.abs().max())
