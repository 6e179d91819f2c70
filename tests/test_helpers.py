"""Unit tests of helpers.py, the notebooks' face: the metric, reading and pairing, crops and the
split, atomic writes, environment switches.

Every expected number is computed by hand (or by an independent OpenCV call in the test), so a
wrong implementation fails. No network, no GPU.
"""
import math
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import helpers  # noqa: E402
from descan import submit  # noqa: E402
from helpers import DataError
from builders import coord_image, files_under, imwrite_rgb, pair_dirs, uniform  # noqa: E402
from descan import data, files, metrics, notebook


# ---------------------------------------------------------------- the metric

def test_mean_y_of_uniform_colour_is_hand_computed():
    # Y = 0.299*10 + 0.587*200 + 0.114*30 = 2.99 + 117.4 + 3.42 = 123.81 -> 124 (uint8)
    assert helpers.mean_y(uniform((10, 200, 30))) == 124.0
    assert helpers.mean_y(uniform((255, 255, 255))) == 255.0
    assert helpers.mean_y(uniform((0, 0, 0))) == 0.0
    # Pure channels: 0.299*255 = 76.245 -> 76; 0.587*255 = 149.685 -> 150; 0.114*255 = 29.07 -> 29
    assert helpers.mean_y(uniform((255, 0, 0))) == 76.0
    assert helpers.mean_y(uniform((0, 255, 0))) == 150.0
    assert helpers.mean_y(uniform((0, 0, 255))) == 29.0


def test_mean_y_is_rgb_not_bgr():
    # (10, 200, 30) read as BGR would give 0.299*30 + 0.587*200 + 0.114*10 = 127.81 -> 128
    assert helpers.mean_y(uniform((10, 200, 30))) != 128.0
    assert helpers.y_channel(uniform((10, 200, 30), 2, 3)).tolist() == [[124] * 3] * 2


def test_mean_y_averages_rounded_pixels():
    img = np.zeros((2, 2, 3), np.uint8)
    img[0, 0] = (10, 200, 30)   # 124
    img[0, 1] = (255, 255, 255)  # 255
    img[1, 0] = (0, 0, 0)        # 0
    img[1, 1] = (0, 255, 0)      # 150
    assert helpers.mean_y(img) == pytest.approx((124 + 255 + 0 + 150) / 4, abs=1e-12)


def test_competition_score_two_images_by_hand():
    restored = [uniform((10, 200, 30)), uniform((100, 100, 100))]  # mean Y 124, 100
    clean = [uniform((0, 0, 0)), uniform((255, 255, 255))]          # mean Y 0, 255
    # (|124 - 0| + |100 - 255|) / 2 = (124 + 155) / 2 = 139.5
    assert helpers.competition_score(restored, clean) == 139.5
    assert helpers.competition_score(clean, clean) == 0.0
    # floats are taken as mean-Y values already
    assert helpers.competition_score([1.0, 10.0], [2.5, 4.0]) == pytest.approx((1.5 + 6.0) / 2)


def test_competition_score_rejects_unequal_or_empty():
    with pytest.raises(ValueError):
        helpers.competition_score([uniform((1, 2, 3))], [])
    with pytest.raises(ValueError):
        helpers.competition_score([], [])


def test_mean_y_matches_independent_opencv_computation(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(5):
        rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
        path = imwrite_rgb(tmp_path / f"img{i}.png", rgb)
        bgr = cv2.imread(str(path))
        expected = float(cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)[:, :, 0].mean())
        assert helpers.mean_y(rgb) == expected
        assert submit.csv_mean_y(path) == expected
        # and it is the BT.601 luma, rounded per pixel (OpenCV's fixed-point arithmetic may
        # round a value within 0.01 of x.5 the other way)
        exact = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
        assert np.abs(helpers.y_channel(rgb).astype(float) - exact).max() <= 0.51


def test_metric_functions_do_not_mutate_inputs():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    a0, b0 = a.copy(), b.copy()
    helpers.mean_y(a)
    helpers.y_channel(a)
    helpers.competition_score([a], [b])
    metrics.pixel_y_mae(a, b)
    metrics.psnr(a, b)
    metrics.image_metrics(a, b)
    helpers.random_crop_pair(a, b, 8, np.random.default_rng(0))
    assert np.array_equal(a, a0) and np.array_equal(b, b0)


@pytest.mark.parametrize("bad", [
    np.full((4, 4, 3), 0.5, np.float32),
    np.full((4, 4, 3), 0.5, np.float64),
    np.zeros((4, 4), np.uint8),
    np.zeros((4, 4, 4), np.uint8),
    np.zeros((4, 4, 3), np.uint16),
])
def test_metric_rejects_non_rgb_uint8(bad):
    good = uniform((1, 2, 3), 4, 4)
    for call in (lambda: helpers.mean_y(bad), lambda: helpers.y_channel(bad),
                 lambda: metrics.psnr(bad, good), lambda: metrics.pixel_y_mae(bad, good),
                 lambda: helpers.competition_score([bad], [good])):
        with pytest.raises(TypeError):
            call()


def test_to_uint8_clips_scales_and_rounds():
    x = np.array([-0.5, 0.0, 0.3 / 255, 0.7 / 255, 128 / 255, 254.4 / 255, 254.6 / 255, 1.0, 1.2])
    assert helpers.to_uint8(x).tolist() == [0, 0, 0, 1, 128, 254, 255, 255, 255]
    assert helpers.to_uint8(x).dtype == np.uint8
    src = np.full((2, 2, 3), 0.5, np.float32)
    out = helpers.to_uint8(src)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert src.dtype == np.float32 and np.all(src == 0.5)  # input untouched


def test_pixel_y_mae_known_values():
    clean = uniform((10, 200, 30), 4, 4)  # Y 124
    assert metrics.pixel_y_mae(clean, clean) == 0.0
    assert metrics.pixel_y_mae(uniform((0, 0, 0), 4, 4), clean) == 124.0
    half = clean.copy()
    half[:2] = 0  # half the pixels off by 124, half exact
    assert metrics.pixel_y_mae(half, clean) == 62.0
    # no uint8 wrap-around: 0 - 124 must count as 124, not 132
    assert metrics.pixel_y_mae(clean, uniform((0, 0, 0), 4, 4)) == 124.0


def test_psnr_known_values():
    rng = np.random.default_rng(3)
    clean = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)  # max 254, so +1 never wraps
    assert metrics.psnr(clean, clean) == math.inf
    assert metrics.psnr(clean + 1, clean) == pytest.approx(10 * math.log10(255 ** 2), abs=1e-9)
    assert metrics.psnr(clean + 1, clean) == pytest.approx(48.1308036, abs=1e-6)
    # an offset of 10 on one channel only: MSE = 100/3
    clean2 = clean.copy()
    clean2[..., 1] = np.minimum(clean2[..., 1], 245)
    off2 = clean2.copy()
    off2[..., 1] += 10
    assert metrics.psnr(off2, clean2) == pytest.approx(10 * math.log10(255 ** 2 / (100 / 3)), abs=1e-9)


def test_image_metrics_fields():
    m = metrics.image_metrics(uniform((0, 0, 0)), uniform((10, 200, 30)))
    assert m["mean_y"] == 0.0 and m["mean_y_clean"] == 124.0 and m["abs_mean_y_err"] == 124.0
    assert m["pixel_y_mae"] == 124.0


# ---------------------------------------------------------------- reading and pairing

def test_read_rgb_converts_grey_rgba_16bit_and_tif(tmp_path):
    grey = np.full((3, 4), 77, np.uint8)
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    out = helpers.read_rgb(tmp_path / "grey.png")
    assert out.dtype == np.uint8 and out.shape == (3, 4, 3) and np.all(out == 77)

    bgra = np.zeros((3, 4, 4), np.uint8)
    bgra[:] = (10, 20, 30, 0)  # B, G, R, alpha fully transparent
    cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
    out = helpers.read_rgb(tmp_path / "rgba.png")
    assert out.shape == (3, 4, 3) and out[0, 0].tolist() == [30, 20, 10]

    # v * 255 / 65535, rounded: 200 -> 0.78 -> 1; 32896 -> 128.0; 65300 -> 254.09 -> 254
    g16 = np.array([[0, 200, 257 * 100, 65535, 32896, 65300]], np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), g16)
    out = helpers.read_rgb(tmp_path / "g16.png")
    assert out.dtype == np.uint8 and out[0, :, 0].tolist() == [0, 1, 100, 255, 128, 254]
    assert np.array_equal(out[..., 0], out[..., 2])

    c16 = np.zeros((2, 2, 3), np.uint16)
    c16[:] = (257 * 3, 257 * 2, 257 * 1)  # BGR on disk
    cv2.imwrite(str(tmp_path / "c16.png"), c16)
    assert helpers.read_rgb(tmp_path / "c16.png")[1, 1].tolist() == [1, 2, 3]

    rgb = coord_image(9, 11)
    imwrite_rgb(tmp_path / "x.tif", rgb)
    assert np.array_equal(helpers.read_rgb(tmp_path / "x.tif"), rgb)


def test_write_image_round_trip(tmp_path):
    rgb = coord_image(13, 17)
    files.write_image(tmp_path / "a" / "x.png", rgb)
    assert np.array_equal(helpers.read_rgb(tmp_path / "a" / "x.png"), rgb)
    assert files_under(tmp_path / "a") == ["x.png"]  # no temporary file left
    with pytest.raises(TypeError):
        files.write_image(tmp_path / "y.png", rgb.astype(np.float32))
    assert not (tmp_path / "y.png").exists()


def test_read_rgb_garbage_and_empty_raise_dataerror(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"this is not an image at all" * 10)
    (tmp_path / "empty.png").write_bytes(b"")
    for name in ("bad.png", "empty.png", "missing.png"):
        with pytest.raises(DataError, match=name):
            helpers.read_rgb(tmp_path / name)


def test_pair_files_pairs_by_stem_sorted_ignoring_extension_and_other_files(tmp_path):
    c, s = pair_dirs(tmp_path, ["b.02.png", "a.01.png", "c.tif"], ["c.png", "a.01.tif", "b.02.png"])
    (c / "notes.txt").write_text("x")
    (c / ".hidden.png").write_bytes(b"x")
    pairs = helpers.pair_files(c, s)
    assert [p.name for p in pairs] == ["a.01", "b.02", "c"]
    assert pairs[0].clean == c / "a.01.png" and pairs[0].scan == s / "a.01.tif"
    assert pairs[2].clean == c / "c.tif" and pairs[2].scan == s / "c.png"


def test_pair_files_missing_folder(tmp_path):
    (tmp_path / "scan").mkdir()
    with pytest.raises(DataError, match="nowhere"):
        helpers.pair_files(tmp_path / "nowhere", tmp_path / "scan")


def test_pair_files_empty_folder(tmp_path):
    c, s = pair_dirs(tmp_path, ["a.png"], [])
    with pytest.raises(DataError, match=r"no images .* in .*scan"):
        helpers.pair_files(c, s)


def test_pair_files_clean_without_scan(tmp_path):
    c, s = pair_dirs(tmp_path, ["a.png", "lonely.png"], ["a.png"])
    with pytest.raises(DataError, match=r"lonely\.png"):
        helpers.pair_files(c, s)


def test_pair_files_scan_without_clean(tmp_path):
    c, s = pair_dirs(tmp_path, ["a.png"], ["a.png", "orphan.tif"])
    with pytest.raises(DataError, match=r"orphan\.tif"):
        helpers.pair_files(c, s)


def test_pair_files_duplicate_stem(tmp_path):
    c, s = pair_dirs(tmp_path, ["a.png", "a.tif"], ["a.png"])
    with pytest.raises(DataError) as e:
        helpers.pair_files(c, s)
    assert "a.png" in str(e.value) and "a.tif" in str(e.value)


# ---------------------------------------------------------------- crops and split

def test_random_crop_pair_takes_the_same_window():
    clean = coord_image(100, 120)
    scan = clean + 1  # values <= 251, no wrap
    tops, lefts = set(), set()
    for seed in range(30):
        cc, sc = helpers.random_crop_pair(clean, scan, 32, np.random.default_rng(seed))
        assert cc.shape == sc.shape == (32, 32, 3) and cc.dtype == np.uint8
        assert np.array_equal(sc.astype(int), cc.astype(int) + 1)  # same window in both
        top, left = int(cc[0, 0, 0]), int(cc[0, 0, 1])  # the pixel encodes its position
        assert np.array_equal(cc, clean[top:top + 32, left:left + 32])
        tops.add(top), lefts.add(left)
    assert len(tops) > 5 and len(lefts) > 5  # really random, not always the corner
    assert max(tops) <= 100 - 32 and max(lefts) <= 120 - 32


def test_random_crop_pair_is_a_copy_and_seeded():
    clean, scan = coord_image(40, 40), coord_image(40, 40) + 1
    a = helpers.random_crop_pair(clean, scan, 16, np.random.default_rng(7))
    b = helpers.random_crop_pair(clean, scan, 16, np.random.default_rng(7))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    a[0][:] = 0
    assert clean.max() > 0 and np.array_equal(clean, coord_image(40, 40))


def test_random_crop_pair_smaller_than_patch():
    clean = coord_image(20, 30)
    scan = clean + 1
    cc, sc = helpers.random_crop_pair(clean, scan, 32, np.random.default_rng(0))
    assert cc.shape == sc.shape == (32, 32, 3)
    assert np.array_equal(cc[:20, :30], clean)  # original at the top-left, padding after
    assert np.array_equal(sc.astype(int), cc.astype(int) + 1)
    # one dimension too small only
    cc, sc = helpers.random_crop_pair(coord_image(10, 50), coord_image(10, 50) + 1, 16,
                                      np.random.default_rng(1))
    assert cc.shape == (16, 16, 3) and np.array_equal(sc.astype(int), cc.astype(int) + 1)
    # a single-pixel image still works
    cc, sc = helpers.random_crop_pair(uniform((5, 6, 7), 1, 1), uniform((8, 9, 10), 1, 1), 4,
                                      np.random.default_rng(0))
    assert cc.shape == (4, 4, 3) and np.all(cc == (5, 6, 7)) and np.all(sc == (8, 9, 10))


def test_random_crop_pair_rejects_size_mismatch():
    with pytest.raises(ValueError):
        helpers.random_crop_pair(coord_image(10, 10), coord_image(10, 11), 4, np.random.default_rng(0))


def test_page_id():
    assert data.page_id("BookOfMaking.00012.02") == "BookOfMaking.00012"
    assert data.page_id("BookOfMaking.00012.02.tif") == "BookOfMaking.00012"
    assert data.page_id("plain") == "plain"


def _crop_names(n_pages=20, crops=3):
    return [f"Mag{p % 3}.{p:05d}.{c:02d}" for p in range(n_pages) for c in range(1, crops + 1)]


def test_split_names_groups_pages_and_respects_fraction():
    names = _crop_names(20, 3)
    split = data.split_names(names, val_fraction=0.2, seed=0)
    assert set(split) == set(names) and set(split.values()) == {"train", "val"}
    side = {}
    for n, s in split.items():
        assert side.setdefault(data.page_id(n), s) == s  # all crops of a page on one side
    assert sum(s == "val" for s in side.values()) == 4  # round(0.2 * 20) pages
    assert sum(s == "val" for s in split.values()) == 12


def test_split_names_deterministic_order_independent_seeded():
    names = _crop_names(30, 2)
    a = data.split_names(names, 0.1, seed=0)
    shuffled = list(names)
    np.random.default_rng(5).shuffle(shuffled)
    assert data.split_names(shuffled, 0.1, seed=0) == a
    assert data.split_names(list(reversed(names)), 0.1, seed=0) == a
    assert data.split_names(names, 0.1, seed=0) == a
    others = [data.split_names(names, 0.1, seed=s) for s in (1, 2, 3)]
    assert any(o != a for o in others)


def test_split_names_small_cases():
    two = data.split_names(["a.00001.01", "a.00002.01"], val_fraction=0.01)
    assert sorted(two.values()) == ["train", "val"]
    two = data.split_names(["a.00001.01", "a.00002.01"], val_fraction=0.99)
    assert sorted(two.values()) == ["train", "val"]
    assert data.split_names(["a.00001.01", "a.00001.02"]) == {"a.00001.01": "train",
                                                                 "a.00001.02": "train"}


# ---------------------------------------------------------------- atomic writes

def test_atomic_path_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with files.atomic_path(target) as tmp:
            tmp.write_text("new, half written")
            raise RuntimeError("boom")
    assert target.read_text() == "old" and files_under(tmp_path) == ["f.txt"]


# ---------------------------------------------------------------- environment switches

def test_data_and_workspace_dirs_follow_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DESCAN_DATA", str(tmp_path / "d"))
    monkeypatch.setenv("DESCAN_WORKSPACE", str(tmp_path / "w"))
    assert helpers.data_dir() == tmp_path / "d"
    assert helpers.workspace_dir() == tmp_path / "w" and (tmp_path / "w").is_dir()
    monkeypatch.delenv("DESCAN_DATA")
    monkeypatch.setenv("DESCAN_SMOKE", "1")
    assert helpers.smoke_mode() and helpers.data_dir() == helpers.ROOT / "data" / "demo"
    monkeypatch.setenv("DESCAN_SMOKE", "0")
    assert not helpers.smoke_mode()
    assert helpers.data_dir() == helpers.ROOT / "data" / "real"  # not Colab here


def test_seed_everything_repeats_all_generators():
    import random

    import torch
    notebook.seed_everything(123)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    notebook.seed_everything(123)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


