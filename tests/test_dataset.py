"""Darknet-format datasets: the label path rule, ``.data`` parsing and its errors, letterbox targets and
augmentation checked against the pixels they describe, determinism, and the synthetic dataset generator.

Expected label paths are written by hand from darknet's ``replace_image_to_label``; geometric checks find the
object in the output pixels (a colour mask), independently of the target arithmetic under test.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import REPO_CFG_DIR, REPORT
from PIL import Image

from cfgsurgeon.errors import UsageError
from cfgsurgeon.train.dataset import (
    Augment,
    DetectionDataset,
    collate,
    find_label,
    label_path,
    make_loader,
    read_data_file,
    read_labels,
)
from cfgsurgeon.train.synthetic import make_synthetic_dataset

RED = (230, 20, 20)


def _image(path: Path, size: tuple[int, int], box: tuple[int, int, int, int] | None = None) -> Path:
    """A grey ``size`` (w, h) PNG with a red rectangle covering pixels ``box`` (left, top, right, bottom
    exclusive), and its darknet label beside it."""
    pixels = np.full((size[1], size[0], 3), 120, dtype=np.uint8)
    lines = ""
    if box is not None:
        left, top, right, bottom = box
        pixels[top:bottom, left:right] = RED
        w, h = size
        cx, cy = (left + right) / 2 / w, (top + bottom) / 2 / h
        lines = f"0 {cx} {cy} {(right - left) / w} {(bottom - top) / h}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    path.with_suffix(".txt").write_text(lines)
    return path


def _red_box(img: np.ndarray) -> tuple[float, float, float, float] | None:
    """Pixel extent (left, top, right, bottom exclusive) of the red pixels of a C×H×W [0, 1] image."""
    r, g, b = img
    ys, xs = np.nonzero((r > 0.6) & (g < 0.4) & (b < 0.4))
    if len(xs) == 0:
        return None
    return (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def _target_pixels(target: np.ndarray, net: tuple[int, int]) -> np.ndarray:
    _, cx, cy, w, h = target
    return np.array(
        [(cx - w / 2) * net[0], (cy - h / 2) * net[1], (cx + w / 2) * net[0], (cy + h / 2) * net[1]]
    )


# -- label paths ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "label"),
    [
        ("data/obj/img1.jpg", "data/obj/img1.txt"),
        ("coco/images/train2014/COCO_1.jpg", "coco/labels/train2014/COCO_1.txt"),
        ("coco/images/val2017/0001.png", "coco/labels/val2017/0001.txt"),
        ("VOCdevkit/VOC2007/JPEGImages/000005.JPEG", "VOCdevkit/VOC2007/labels/000005.txt"),
        ("set/images/a.png", "set/images/a.txt"),  # AlexeyAB no longer renames a plain images/ folder
        ("my.data/photo.bmp", "my.data/photo.txt"),
    ],
)
def test_label_path_follows_darknet(image, label):
    assert label_path(image) == Path(label)


def test_find_label_falls_back_to_a_labels_folder(tmp_path):
    image = _image(tmp_path / "set" / "images" / "a.png", (32, 32))
    image.with_suffix(".txt").unlink()
    assert find_label(image) is None  # no label file: an image without objects
    (tmp_path / "set" / "labels").mkdir()
    (tmp_path / "set" / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    assert find_label(image) == tmp_path / "set" / "labels" / "a.txt"
    image.with_suffix(".txt").write_text("")
    assert find_label(image) == image.with_suffix(".txt")  # darknet's own rule first


def test_labels_read_and_errors(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("1 0.5 0.5 0.2 0.4\n\n0 0.95 0.1 0.2 0.1\n")
    labels = read_labels(path, classes=2)
    np.testing.assert_allclose(labels, [[1, 0.5, 0.5, 0.2, 0.4], [0, 0.925, 0.1, 0.15, 0.1]], atol=1e-6)
    for text, line, words in [
        ("0 0.5 0.5 0.2 0.2\n2 0.5 0.5 0.1 0.1\n", 2, "class 2 is outside 0..1"),
        ("0 0.5 0.5 0.2\n", 1, "expected"),
        ("0 0.5 0.5 0.2 0\n", 1, "positive width"),
        ("0 0.5 nan 0.2 0.1\n", 1, "finite"),
    ]:
        path.write_text(text)
        with pytest.raises(UsageError) as err:
            read_labels(path, classes=2)
        assert str(err.value).startswith(f"{path}:{line}: ") and words in str(err.value)


# -- the .data file ------------------------------------------------------------------------------------------


def _dataset_folder(root: Path) -> Path:
    """root/set: two images listed relative to the folder, names, and a .data naming them relatively."""
    folder = root / "set"
    _image(folder / "img" / "a.png", (40, 30), (5, 5, 15, 20))
    _image(folder / "img" / "b.png", (40, 30))
    (folder / "train.txt").write_text("img/a.png\nimg/b.png\n\n")
    (folder / "names").write_text("red\n")
    data = folder / "set.data"
    data.write_text("# a comment\nclasses = 1\ntrain  = train.txt\n; another\nnames=names\nbackup=backup/\n")
    return data


def test_data_file_paths_resolve_from_any_working_directory(tmp_path, monkeypatch):
    data = _dataset_folder(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    spec = read_data_file(data)
    assert (spec.classes, spec.names) == (1, ["red"])
    assert spec.valid == spec.train == data.parent / "train.txt"  # valid defaults to train, as darknet's
    assert spec.image_list("valid") == [data.parent / "img" / "a.png", data.parent / "img" / "b.png"]
    monkeypatch.chdir(data.parent)  # darknet's own rule: relative to the working directory
    assert read_data_file("set.data").image_list("train") == [Path("img/a.png"), Path("img/b.png")]


def test_data_file_prefers_the_working_directory_like_darknet(tmp_path, monkeypatch):
    data = _dataset_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "names").write_text("from-cwd\n")
    assert read_data_file(data).names == ["from-cwd"]


@pytest.mark.parametrize(
    ("edit", "file", "line", "words"),
    [
        (lambda d: d.with_name("names").unlink(), "set.data", 5, "no such names file 'names'"),
        (lambda d: d.write_text(d.read_text() + "valid\n"), "set.data", 7, "expected 'key=value'"),
        (lambda d: d.write_text(d.read_text().replace("= 1", "= x")), "set.data", 2, "classes must be"),
        (lambda d: d.with_name("train.txt").unlink(), "set.data", 3, "no such image list"),
        (lambda d: (d.parent / "img" / "b.png").unlink(), "train.txt", 2, "no such image file 'img/b.png'"),
    ],
)
def test_data_file_errors_name_the_file_and_line(tmp_path, monkeypatch, edit, file, line, words):
    data = _dataset_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    edit(data)
    with pytest.raises(UsageError) as err:
        read_data_file(data).image_list("train")
    message = str(err.value)
    assert message.startswith(f"{data.parent / file}:{line}: ") and words in message and "\n" not in message


def test_eval_reports_a_data_error_in_one_line(tmp_path):
    from cfgsurgeon.cli import main

    data = _dataset_folder(tmp_path)
    (data.parent / "img" / "b.png").unlink()
    cfg = REPO_CFG_DIR / "yolo-nano.cfg"
    weights = tmp_path / "nano.weights"
    assert CliRunner().invoke(main, ["init", "--cfg", str(cfg), "-o", str(weights)]).exit_code == 0
    data.write_text(data.read_text().replace("classes = 1", "classes = 3"))
    data.with_name("names").write_text("a\nb\nc\n")
    result = CliRunner().invoke(
        main, ["eval", "--cfg", str(cfg), "--weights", str(weights), "--data", str(data)]
    )
    assert result.exit_code != 0 and "Traceback" not in result.output
    # eval may say how it sizes images first; the error is its last line
    last = result.output.strip().splitlines()[-1]
    assert last == f"Error: {data.parent / 'train.txt'}:2: no such image file 'img/b.png'"


# -- letterbox and resize: targets on the drawn pixels -------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "box", "letterbox"),
    [
        ((200, 100), (30, 20, 90, 70), True),  # wide photo: grey bands above and below
        ((90, 160), (10, 100, 60, 150), True),  # tall photo: bands left and right
        ((200, 100), (120, 10, 190, 40), False),  # plain resize (yolo-nano: letter_box=0)
    ],
)
def test_validation_targets_land_on_the_drawn_box(tmp_path, size, box, letterbox):
    image = _image(tmp_path / "a.png", size, box)
    net = (128, 128)
    dataset = DetectionDataset([image], net, classes=1, letterbox=letterbox)
    img, targets = dataset.sample(0)
    assert img.shape == (3, 128, 128) and targets.shape == (1, 5)
    drawn = np.array(_red_box(img))
    np.testing.assert_allclose(_target_pixels(targets[0], net), drawn, atol=1.5)
    if letterbox:  # the grey band is darknet's 0.5
        np.testing.assert_allclose(img[:, 0, 0], 0.5)


# -- augmentation keeps boxes on the object ------------------------------------------------------------------


@pytest.mark.parametrize("letterbox", [False, True])
def test_augmented_targets_follow_the_object(tmp_path, letterbox):
    image = _image(tmp_path / "a.png", (160, 120), (20, 40, 60, 90))  # left half: a flip moves it right
    augment = Augment(jitter=0.3, hue=0.0, saturation=1.5, exposure=1.3, flip=True)
    dataset = DetectionDataset([image], (128, 128), classes=1, letterbox=letterbox, augment=augment)
    sides, widths = set(), []
    for epoch in range(24):
        dataset.set_epoch(epoch)
        img, targets = dataset.sample(0)
        drawn = _red_box(img)
        if drawn is None:  # cropped away entirely: no target either
            assert len(targets) == 0
            continue
        assert len(targets) == 1
        box = _target_pixels(targets[0], (128, 128))
        np.testing.assert_allclose(box, drawn, atol=2.0, err_msg=f"epoch {epoch}")
        sides.add(box[0] + box[2] > 128)
        widths.append(box[2] - box[0])
    assert sides == {False, True}  # some flipped, some not
    assert max(widths) / min(widths) > 1.2  # the scale changed


def test_augment_settings_come_from_the_cfg():
    from cfgsurgeon.ir import load_cfg

    graph = load_cfg(REPO_CFG_DIR / "yolo-nano.cfg", warn=lambda _: None)
    assert Augment.from_graph(graph) == Augment(jitter=0.3, hue=0.1, saturation=1.5, exposure=1.5, flip=True)


def test_hsv_distortion_agrees_with_colorsys():
    """darknet's distort_image: hue shifted with wrap-around, saturation and value scaled, clipped."""
    import colorsys

    from cfgsurgeon.train.dataset import distort_hsv

    img = np.random.default_rng(0).random((3, 8, 8), dtype=np.float32)
    np.testing.assert_allclose(distort_hsv(img, 0.0, 1.0, 1.0), img, atol=1e-6)  # identity
    hue, sat, exp = 0.7, 1.4, 0.8
    expected = np.empty_like(img)
    for y in range(8):
        for x in range(8):
            h, s, v = colorsys.rgb_to_hsv(*img[:, y, x])
            rgb = colorsys.hsv_to_rgb((h + hue) % 1, s * sat, v * exp)
            expected[:, y, x] = np.clip(rgb, 0, 1)
    np.testing.assert_allclose(distort_hsv(img, hue, sat, exp), expected, atol=1e-5)
    red = np.zeros((3, 1, 1), dtype=np.float32)
    red[0] = 1.0
    np.testing.assert_allclose(distort_hsv(red, 1 / 3, 1.0, 1.0)[:, 0, 0], [0, 1, 0], atol=1e-6)  # → green
    out = distort_hsv(img, 0.3, 1.5, 1.5)
    assert out.min() >= 0 and out.max() <= 1


# -- batches: collate, loaders, determinism ------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """The default synthetic dataset (timed: the brief asks for a few seconds)."""
    start = time.perf_counter()
    data = make_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "set")
    REPORT["synthetic dataset"] = (
        f"512 train + 128 valid images generated in {time.perf_counter() - start:.1f} s"
    )
    return data


def _batches(data: Path, seed: int, workers: int = 0, epoch: int = 0) -> list:
    from cfgsurgeon.ir import load_cfg

    graph = load_cfg(REPO_CFG_DIR / "yolo-nano.cfg", warn=lambda _: None)
    dataset = DetectionDataset.from_data(data, "train", graph, seed=seed)
    dataset.images, dataset.labels = dataset.images[:24], dataset.labels[:24]
    dataset.set_epoch(epoch)
    return list(make_loader(dataset, batch_size=8, shuffle=True, workers=workers, seed=seed))


def test_loader_batches_and_collate(synthetic):
    batches = _batches(synthetic, seed=0)
    assert len(batches) == 3
    images, targets, paths = batches[0]
    assert images.shape == (8, 3, 128, 128) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    assert targets.shape[1] == 6 and len(paths) == 8
    assert set(targets[:, 0].long().tolist()) <= set(range(8))
    assert ((targets[:, 1] >= 0) & (targets[:, 1] < 3)).all()
    assert ((targets[:, 2:4] >= 0) & (targets[:, 2:4] <= 1)).all() and (targets[:, 4:6] > 0).all()


def test_same_seed_same_batches_and_workers_do_not_matter(synthetic):
    first, again = _batches(synthetic, seed=5), _batches(synthetic, seed=5, workers=2)
    for (a_img, a_t, a_p), (b_img, b_t, b_p) in zip(first, again, strict=True):
        assert a_p == b_p and torch.equal(a_img, b_img) and torch.equal(a_t, b_t)
    other = _batches(synthetic, seed=6)
    assert not torch.equal(first[0][0], other[0][0])
    next_epoch = _batches(synthetic, seed=5, epoch=1)
    assert not torch.equal(first[0][0], next_epoch[0][0])


def test_collate_of_images_without_objects():
    empty = torch.zeros((0, 5))
    images, targets, paths = collate([(torch.zeros(3, 4, 4), empty, "a"), (torch.ones(3, 4, 4), empty, "b")])
    assert images.shape == (2, 3, 4, 4) and targets.shape == (0, 6) and paths == ["a", "b"]


def test_missing_label_files_are_counted_as_empty(tmp_path):
    image = _image(tmp_path / "a.png", (32, 32), (1, 1, 9, 9))
    image.with_suffix(".txt").unlink()
    dataset = DetectionDataset([image], (32, 32), classes=1)
    assert dataset.missing_labels == 1 and dataset[0][1].shape == (0, 5)


# -- the synthetic dataset -----------------------------------------------------------------------------------


def test_synthetic_dataset_is_byte_identical_for_a_seed(tmp_path):
    def files(folder: Path) -> dict[str, bytes]:
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    first = files(make_synthetic_dataset(tmp_path / "a", train=12, valid=4, seed=7).parent)
    second = files(make_synthetic_dataset(tmp_path / "b", train=12, valid=4, seed=7).parent)
    assert first == second and len(first) == 2 * 16 + 4
    other = files(make_synthetic_dataset(tmp_path / "c", train=12, valid=4, seed=8).parent)
    assert other["train/000000.png"] != first["train/000000.png"]
    make_synthetic_dataset(tmp_path / "a", train=3, valid=1, seed=7)  # an earlier synthetic set is replaced
    assert len(files(tmp_path / "a")) == 2 * 4 + 4


def test_synthetic_dataset_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(UsageError, match="not empty"):
        make_synthetic_dataset(tmp_path, train=2, valid=1)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_synthetic_dataset_content(synthetic):
    spec = read_data_file(synthetic)
    assert (spec.classes, spec.names) == (3, ["circle", "square", "triangle"])
    train, valid = spec.image_list("train"), spec.image_list("valid")
    assert (len(train), len(valid)) == (512, 128)
    labels = np.concatenate([read_labels(p.with_suffix(".txt"), 3) for p in train])
    sides = np.maximum(labels[:, 3], labels[:, 4]) * 128
    assert sides.min() >= 14 and sides.max() <= 61  # 15–60 pixels, give or take the painting
    counts = np.bincount(labels[:, 0].astype(int), minlength=3)
    assert counts.min() > 0.25 * counts.sum()  # classes roughly balanced


def test_synthetic_labels_are_the_painted_objects(synthetic):
    """In one-object images, the bright saturated pixels (the background is dull) span the label."""
    checked = 0
    for image in read_data_file(synthetic).image_list("valid"):
        labels = read_labels(image.with_suffix(".txt"), 3)
        if len(labels) != 1:
            continue
        rgb = np.asarray(Image.open(image).convert("RGB"), dtype=np.float64) / 255
        value, low = rgb.max(axis=2), rgb.min(axis=2)
        ys, xs = np.nonzero((value > 0.62) & ((value - low) / np.maximum(value, 1e-9) > 0.45))
        painted = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        np.testing.assert_allclose(
            _target_pixels(labels[0], (128, 128)), painted, atol=1.0, err_msg=str(image)
        )
        checked += 1
    assert checked >= 20


def test_synth_command(tmp_path):
    from cfgsurgeon.cli import main

    result = CliRunner().invoke(main, ["synth", "-o", str(tmp_path / "s"), "--train", "4", "--valid", "2"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s" / "synthetic.data").is_file() and len(
        list((tmp_path / "s" / "train").glob("*.png"))
    ) == 4
