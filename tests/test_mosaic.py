"""Mosaic and multi-scale training (darknet's ``mosaic=1`` and ``random=1``).

Mosaic boxes are checked against the pixels: a drawn dataset whose every rectangle has its own hue (found in
the output with matplotlib's HSV conversion, not the code under test), so each box must enclose exactly the
pixels of its colour. Multi-scale sizes are checked against bounds worked out by hand from darknet's
``train_detector`` formula, and the batch resize against :func:`cfgsurgeon.detect.resize_image` (the numpy
transcription of darknet's ``resize_image``).
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cfgsurgeon.errors import CfgError
from cfgsurgeon.ir import loads_cfg
from cfgsurgeon.train.dataset import (
    MIN_BOX_PIXELS,
    Augment,
    DetectionDataset,
    MultiScale,
    make_loader,
    multiscale_settings,
    multiscale_size,
    resize_batch,
)

HUES = 12  # rectangle k is painted in hue k/12: 30° apart, so a pixel's colour names its rectangle

# (width, height) and rectangles (left, top, right, bottom exclusive) on black; some touch the photo's edge.
PHOTOS = [
    ((200, 150), [(10, 10, 70, 60), (120, 80, 190, 140)]),
    ((120, 160), [(0, 20, 50, 90), (60, 100, 120, 160)]),
    ((160, 160), [(30, 30, 90, 70), (100, 110, 150, 150)]),
    ((240, 120), [(5, 60, 100, 115), (150, 10, 230, 50)]),
    ((100, 100), [(20, 20, 45, 80), (60, 5, 95, 40)]),
    ((180, 140), [(70, 40, 160, 100), (10, 110, 40, 135)]),
]
NET = (128, 96)


def _rgb(hue_index: int) -> tuple[int, ...]:
    # saturation and value 0.6: the test's ×/÷1.5 scalings keep them inside [0, 1], so the hue survives
    return tuple(round(255 * c) for c in colorsys.hsv_to_rgb(hue_index / HUES, 0.6, 0.6))


def _paint(folder: Path, size: tuple[int, int], rects: list[tuple[int, ...]], first_hue: int) -> Path:
    """A black PNG with ``rects`` in hues ``first_hue, first_hue + 1, …`` and its label (class = hue)."""
    w, h = size
    pixels = np.zeros((h, w, 3), dtype=np.uint8)
    lines = []
    for k, (left, top, right, bottom) in enumerate(rects, first_hue):
        pixels[top:bottom, left:right] = _rgb(k)
        cx, cy = (left + right) / 2 / w, (top + bottom) / 2 / h
        lines.append(f"{k} {cx} {cy} {(right - left) / w} {(bottom - top) / h}")
    path = folder / f"{first_hue:02d}.png"
    Image.fromarray(pixels).save(path)
    path.with_suffix(".txt").write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("rectangles")
    paths, hue = [], 0
    for size, rects in PHOTOS:
        paths.append(_paint(folder, size, rects, hue))
        hue += len(rects)
    return paths


def _hue_map(img: np.ndarray) -> np.ndarray:
    """Per pixel, the index of the painted hue it shows, or -1 (black, grey fill, or too faint)."""
    from matplotlib.colors import rgb_to_hsv

    hsv = rgb_to_hsv(np.clip(img.transpose(1, 2, 0), 0, 1))
    coloured = (hsv[..., 1] > 0.25) & (hsv[..., 2] > 0.2)
    return np.where(coloured, np.round(hsv[..., 0] * HUES).astype(int) % HUES, -1)


def _pixel_box(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=float)


def _boxes_in_pixels(targets: np.ndarray) -> np.ndarray:
    _, cx, cy, w, h = targets.T.astype(np.float64)
    scale = np.array([NET[0], NET[1], NET[0], NET[1]])
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1) * scale


def _check_boxes_match_pixels(img: np.ndarray, targets: np.ndarray, where: str) -> set[int]:
    """Every box encloses exactly its rectangle's pixels; a colour without a box is a clipped-away sliver.
    Returns the photos whose rectangles show."""
    hues = _hue_map(img)
    boxes = _boxes_in_pixels(targets)
    assert (boxes >= -1e-3).all() and (boxes[:, [2, 3]] <= np.array(NET) + 1e-3).all(), where
    assert (boxes[:, 2:] - boxes[:, :2] > MIN_BOX_PIXELS - 1e-3).all(), where
    classes = targets[:, 0].astype(int).tolist()
    assert len(set(classes)) == len(classes), where  # each rectangle is in one photo, each photo used once
    for k, box in zip(classes, boxes, strict=True):
        mask = hues == k
        assert mask.any(), f"{where}: box of hue {k} on no pixel of that colour"
        np.testing.assert_allclose(_pixel_box(mask), box, atol=2.0, err_msg=f"{where}, hue {k}")
        left, top, right, bottom = np.round(box).astype(int)
        assert mask[top:bottom, left:right].mean() > 0.6, f"{where}: box of hue {k} is mostly another colour"
    for k in set(np.unique(hues)) - set(classes) - {-1}:
        extent = _pixel_box(hues == k)
        assert min(extent[2] - extent[0], extent[3] - extent[1]) <= MIN_BOX_PIXELS + 2, f"{where}: hue {k}"
    shown = np.unique(hues[hues >= 0])
    return {int(k) // 2 for k in shown if (hues == k).sum() >= 10}


@pytest.mark.parametrize("letterbox", [False, True])
def test_mosaic_boxes_match_the_pixels(photos, letterbox):
    augment = Augment(jitter=0.3, saturation=1.5, exposure=1.5, flip=True, mosaic=True)
    dataset = DetectionDataset(photos, NET, classes=HUES, letterbox=letterbox, augment=augment, seed=3)
    photos_shown = []
    for epoch in range(8):
        dataset.set_epoch(epoch)
        for index in range(len(photos)):
            img, targets = dataset.sample(index)
            assert img.shape == (3, NET[1], NET[0]) and img.dtype == np.float32
            assert targets.dtype == np.float32 and targets.shape[1] == 5
            photos_shown.append(_check_boxes_match_pixels(img, targets, f"epoch {epoch} index {index}"))
    several = sum(len(shown) >= 2 for shown in photos_shown) / len(photos_shown)
    assert 0.25 < several < 0.6  # about half are mosaics; some of those show one photo's rectangles only
    assert max(len(shown) for shown in photos_shown) >= 3


def test_mosaic_quadrants_around_a_centre_point(tmp_path):
    """Solid photos, no jitter: a mosaic is four solid quadrants of four different photos, the sample's
    among them, meeting at a point within darknet's 20–80 % of the canvas."""
    colours = [_rgb(k) for k in range(0, HUES, 2)]
    paths = []
    for k, colour in enumerate(colours):
        path = tmp_path / f"{k}.png"
        Image.fromarray(np.full((60 + 10 * k, 90 - 5 * k, 3), colour, dtype=np.uint8)).save(path)
        paths.append(path)
    augment = Augment(jitter=0.0, flip=False, mosaic=True)
    dataset = DetectionDataset(paths, NET, classes=1, augment=augment, seed=1)
    centres = []
    for epoch in range(10):
        dataset.set_epoch(epoch)
        for index in range(len(paths)):
            img, _ = dataset.sample(index)
            if np.allclose(img, img[:, :1, :1], atol=1e-6):
                continue  # not a mosaic this time
            cx = int(np.sum(np.all(np.isclose(img[:, 0, :], img[:, :1, 0]), axis=0)))
            cy = int(np.sum(np.all(np.isclose(img[:, :, 0], img[:, :1, 0]), axis=0)))
            quadrants = [img[:, :cy, :cx], img[:, :cy, cx:], img[:, cy:, :cx], img[:, cy:, cx:]]
            seen = set()
            for part in quadrants:
                assert np.allclose(part, part[:, :1, :1], atol=1e-6)
                seen.add(tuple(np.round(part[:, 0, 0] * 255).astype(int)))
            assert len(seen) == 4 and colours[index] in seen
            centres.append((cx, cy))
    assert len(centres) >= 15
    xs, ys = np.array(centres).T
    assert xs.min() >= 25 and xs.max() <= 102 and ys.min() >= 19 and ys.max() <= 76  # int(0.2·128) …
    assert xs.min() < 45 and xs.max() > 83 and ys.min() < 34 and ys.max() > 62  # … spread over the range


def test_mosaic_tile_placement_follows_darknet():
    """Hand-computed from ``load_data_detection``: a 200×100 photo, a 100×50 network, centre (40, 20).
    darknet's window is pleft/ptop/pright/pbot pixels in from each side (negative: fill)."""
    from cfgsurgeon.train.dataset import _fill, _tile_offset, _to_corner

    photo, net, centre = (200, 100), (100, 50), (40, 20)
    window = (-20, 10, 180, 110)  # pleft −20, ptop 10, pright 20, pbot −10: the photo's size, shifted
    # left_shift = −pleft·w/ow = 10, bot_shift = −pbot·h/oh = 5; a flip swaps pleft and pright first
    assert _fill(window, photo, net, flip=False) == (10, 0, 0, 5)
    assert _fill(window, photo, net, flip=True) == (0, 0, 10, 5)
    # quadrant 0 copies from x = w − cut_x − right_shift, y = h − cut_y − bot_shift; 1 from x = left_shift;
    # 2 from y = top_shift; the offset is where the tile's corner lands
    fill = (10, 0, 0, 5)
    offsets = [_tile_offset(q, centre, net, fill) for q in range(4)]
    assert offsets == [(-60, -25), (30, -25), (-60, 20), (30, 20)]
    assert _tile_offset(0, centre, net, (0, 0, 70, 0)) == (0, -30)  # right_shift capped at w − cut_x = 60
    # "move each 2nd image to the corner": pleft −30, ptop 10, pright 10, pbot −30
    window = (-30, 10, 190, 130)
    assert _to_corner(window, photo, 0, flip=False) == (0, 0, 220, 120)  # pright += pleft, pleft = 0, …
    assert _to_corner(window, photo, 1, flip=False) == (-20, 0, 200, 120)  # pleft += pright, pright = 0
    assert _to_corner(window, photo, 2, flip=True) == (-20, -20, 200, 100)
    assert _to_corner(window, photo, 3, flip=True) == (0, -20, 220, 100)


def test_mosaic_is_a_function_of_seed_epoch_and_index(photos):
    def samples(seed: int, epoch: int) -> list[tuple[np.ndarray, np.ndarray]]:
        augment = Augment(jitter=0.3, hue=0.1, saturation=1.5, exposure=1.5, mosaic=True)
        dataset = DetectionDataset(photos, NET, classes=HUES, augment=augment, seed=seed)
        dataset.set_epoch(epoch)
        return [dataset.sample(i) for i in range(len(photos))]

    first, again = samples(4, 2), samples(4, 2)
    for (img_a, t_a), (img_b, t_b) in zip(first, again, strict=True):
        assert np.array_equal(img_a, img_b) and np.array_equal(t_a, t_b)
    for other in (samples(4, 3), samples(5, 2)):
        assert all(not np.array_equal(a[0], b[0]) for a, b in zip(first, other, strict=True))


def test_mosaic_batches_do_not_depend_on_workers(photos):
    augment = Augment(jitter=0.3, mosaic=True)
    dataset = DetectionDataset(photos, NET, classes=HUES, augment=augment, seed=2)
    batches = [list(make_loader(dataset, 3, shuffle=True, workers=w, seed=2)) for w in (0, 2)]
    for (img_a, t_a, p_a), (img_b, t_b, p_b) in zip(*batches, strict=True):
        assert p_a == p_b and torch.equal(img_a, img_b) and torch.equal(t_a, t_b)


@pytest.mark.parametrize("count", [1, 2])
def test_mosaic_of_a_tiny_dataset_reuses_images(photos, count):
    dataset = DetectionDataset(photos[:count], NET, classes=HUES, augment=Augment(mosaic=True), seed=0)
    for epoch in range(6):
        dataset.set_epoch(epoch)
        img, targets = dataset.sample(0)
        boxes = _boxes_in_pixels(targets)
        assert img.shape == (3, NET[1], NET[0])
        assert (boxes >= -1e-3).all() and (boxes[:, [2, 3]] <= np.array(NET) + 1e-3).all()


# -- cfg settings --------------------------------------------------------------------------------------------


def _cfg(net: str = "", first: str = "", last: str = "") -> str:
    """Two [yolo] heads on a tiny network; ``net``/``first``/``last`` are extra option lines."""
    head = "[convolutional]\nfilters=18\nsize=1\nactivation=linear\n\n[yolo]\nmask=0,1,2\nnum=3\nclasses=1\n"
    return (
        f"[net]\nwidth=64\nheight=64\nchannels=3\n{net}\n"
        f"[convolutional]\nfilters=4\nsize=3\nactivation=leaky\n\n{head}{first}\n"
        f"[route]\nlayers=-3\n\n{head}{last}\n"
    )


def _graph(text: str):
    return loads_cfg(text, "t.cfg", warn=lambda _: None)


def test_mosaic_and_jitter_come_from_the_cfg():
    assert Augment.from_graph(_graph(_cfg())).mosaic is False  # darknet's default
    augment = Augment.from_graph(_graph(_cfg(net="mosaic=1\nflip=0", first="jitter=.1", last="jitter=.25")))
    assert augment == Augment(jitter=0.25, flip=False, mosaic=True)  # darknet reads the last head's jitter
    with pytest.raises(CfgError) as err:
        Augment.from_graph(_graph(_cfg(net="mosaic=yes")))
    assert str(err.value).startswith("t.cfg:5: ") and "mosaic" in str(err.value)


@pytest.mark.parametrize(
    ("net", "first", "last", "expected"),
    [
        ("", "", "", None),
        ("", "", "random=0", None),
        ("", "random=1", "random=0", None),  # darknet reads the last head only
        ("", "", "random=1", MultiScale(1.4, 32)),
        ("resize_step=64", "", "random=1.5", MultiScale(1.5, 64)),
        ("", "", "random=0.5", MultiScale(2.0, 32)),  # rand_scale(0.5) draws from [0.5, 2] too
    ],
)
def test_multiscale_settings(net, first, last, expected):
    assert multiscale_settings(_graph(_cfg(net, first, last))) == expected


def test_multiscale_settings_reject_a_negative_random():
    with pytest.raises(CfgError, match="random"):
        multiscale_settings(_graph(_cfg(last="random=-1")))


@pytest.mark.shared
def test_real_cfgs_ask_for_mosaic_and_multiscale():
    from conftest import CFG_DIR, cached_graph

    yolov4 = cached_graph(CFG_DIR / "yolov4.cfg")  # mosaic=1, random=1 in every [yolo]
    assert Augment.from_graph(yolov4).mosaic and multiscale_settings(yolov4) == MultiScale(1.4, 32)
    tiny = cached_graph(CFG_DIR / "yolov3-tiny.cfg")  # random=1, no mosaic
    assert not Augment.from_graph(tiny).mosaic and multiscale_settings(tiny) == MultiScale(1.4, 32)
    csp = cached_graph(CFG_DIR / "yolov4-csp.cfg")  # mosaic with letter_box, which darknet refuses to train
    assert Augment.from_graph(csp).mosaic and csp.net.letter_box == 1


# -- multi-scale sizes ---------------------------------------------------------------------------------------


def test_multiscale_sizes_follow_darknet():
    """416 with factor 1.4: round(s·13 + 1)·32 for s in [1/1.4, 1.4] gives 10…19 steps of 32 (320…608),
    a scale below 1 never above 416; the first window is the largest size."""
    sizes = [multiscale_size((416, 416), step, seed=0) for step in range(0, 4000)]
    assert sizes[:10] == [(608, 608)] * 10
    for window in range(400):
        assert len(set(sizes[window * 10 : window * 10 + 10])) == 1
    widths = {w for w, h in sizes}
    assert widths == set(range(320, 609, 32)) and all(w == h for w, h in sizes)
    larger = sum(sizes[window * 10][0] > 416 for window in range(1, 400)) / 399
    assert 0.4 < larger < 0.6  # rand_scale enlarges half of the time


def test_multiscale_sizes_are_seeded_and_keep_the_aspect():
    first = [multiscale_size((416, 256), step, seed=7, every=5) for step in range(0, 1000, 5)]
    assert first == [multiscale_size((416, 256), step, seed=7, every=5) for step in range(0, 1000, 5)]
    assert first != [multiscale_size((416, 256), step, seed=8, every=5) for step in range(0, 1000, 5)]
    widths, heights = ({size[i] for size in first} for i in (0, 1))
    assert min(widths) == 320 and max(widths) == 608
    assert min(heights) == 224 and max(heights) == 384  # round(8/1.4 + 1) = 7, round(8·1.4 + 1) = 12 steps
    assert all((w > 416) == (h > 256) for w, h in first)  # one scale for both sides


def test_multiscale_ends_at_the_largest_size():
    total = 1000
    sizes = [multiscale_size((320, 320), step, seed=1, total_steps=total) for step in range(total)]
    assert set(sizes[910:]) == {(480, 480)}  # windows starting after step 900; round(1.4·10 + 1) = 15 steps
    assert len(set(sizes[10:900])) > 3
    big = multiscale_size((320, 320), 500, seed=1, factor=2.0, resize_step=64)
    assert big[0] % 64 == 0 and 192 <= big[0] <= 704


def test_resize_batch_is_darknets_bilinear():
    from cfgsurgeon.images import resize_image

    images = torch.from_numpy(np.random.default_rng(0).random((2, 3, 96, 128), dtype=np.float32))
    assert resize_batch(images, (128, 96)) is images
    for wh in [(160, 128), (96, 64)]:
        resized = resize_batch(images, wh)
        assert resized.shape == (2, 3, wh[1], wh[0])
        for image, expected in zip(resized.numpy(), images.numpy(), strict=True):
            np.testing.assert_allclose(image, resize_image(expected, *wh), atol=1e-5)
