"""The data layer: zips, the demo set, the dataset check (descan.zips, descan.demo, descan.data)."""
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import helpers  # noqa: E402
from descan import data, demo, submit, zips  # noqa: E402
from helpers import DataError
from builders import coord_image, files_under, imwrite_rgb, make_zip, pair_dirs, png_bytes, uniform  # noqa: E402
from descan import metrics


# ---------------------------------------------------------------- the dataset check

def test_check_pairs_unreadable_image(tmp_path):
    c, s = pair_dirs(tmp_path, ["a.png", "b.png"], ["a.png", "b.png"])
    (s / "b.png").write_bytes(b"\x00garbage" * 50)
    pairs = helpers.pair_files(c, s)
    with pytest.raises(DataError, match=r"scan.b\.png"):
        data.check_pairs(pairs, show_progress=False)


def test_check_pairs_size_mismatch_and_sizes(tmp_path):
    c, s = pair_dirs(tmp_path, ["a.png", "b.png"], ["a.png", "b.png"], size=(6, 7))
    assert data.check_pairs(helpers.pair_files(c, s), show_progress=False) == {"6x7": 2}
    imwrite_rgb(s / "b.png", uniform((4, 5, 6), 6, 8))
    with pytest.raises(DataError, match=r"\bb \(clean \(6, 7\), scan \(6, 8\)\)"):
        data.check_pairs(helpers.pair_files(c, s), show_progress=False)


def test_check_dataset_layout(tmp_path):
    for n in ("t.00001.01", "t.00001.02"):
        imwrite_rgb(tmp_path / "train/clean" / f"{n}.png", uniform((1, 2, 3)))
        imwrite_rgb(tmp_path / "train/scan" / f"{n}.png", uniform((3, 2, 1)))
    imwrite_rgb(tmp_path / "test/scan/t.00002.01.tif", uniform((3, 2, 1)))
    r = data.check_dataset(tmp_path, show_progress=False)
    assert r["train_pairs"] == 2 and r["test_scans"] == 1 and r["kind"] == "real"
    assert r["train_sizes"] == {"4x5": 2} and r["test_sizes"] == {"4x5": 1}
    assert r["extensions"] == [".png", ".tif"]
    (tmp_path / "test/scan/t.00002.01.tif").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"t\.00002\.01\.tif"):
        data.check_dataset(tmp_path, show_progress=False)


# ---------------------------------------------------------------- zips

A = png_bytes(coord_image(6, 7))
B = png_bytes(uniform((1, 2, 3)))
C = png_bytes(uniform((200, 100, 50)))


def test_unpack_flattens_nested_folders_and_skips_junk(tmp_path):
    z = make_zip(tmp_path / "x.zip", [
        ("train_clean/", b""),
        ("train_clean/sub/deeper/a.png", A),
        ("b.png", B),
        ("x/y/c.TIF", C),
        ("__MACOSX/train_clean/sub/deeper/._a.png", b"mac resource fork"),
        ("__MACOSX/e.png", B),
        ("train_clean/.hidden.png", B),
        (".git/objects/d.png", B),
        ("train_clean/.DS_Store", b"junk"),
        ("readme.txt", b"hello"),
        ("meta/info.json", b"{}"),
    ])
    zips.check_zip(z)  # complete: no error
    r = zips.unpack_zip(z, tmp_path / "out", show_progress=False)
    assert r == {"written": 3, "skipped": 0}
    assert files_under(tmp_path / "out") == ["a.png", "b.png", "c.TIF"]
    assert (tmp_path / "out" / "a.png").read_bytes() == A
    assert (tmp_path / "out" / "c.TIF").read_bytes() == C


def test_unpack_is_idempotent_and_repairs_wrong_sizes(tmp_path):
    z = make_zip(tmp_path / "x.zip", [("d/a.png", A), ("d/b.png", B), ("d/c.png", C)])
    out = tmp_path / "out"
    assert zips.unpack_zip(z, out, show_progress=False) == {"written": 3, "skipped": 0}
    assert zips.unpack_zip(z, out, show_progress=False) == {"written": 0, "skipped": 3}
    (out / "b.png").write_bytes(B[:10])  # a half-written file from an interrupted run
    assert zips.unpack_zip(z, out, show_progress=False) == {"written": 1, "skipped": 2}
    assert (out / "b.png").read_bytes() == B


@pytest.mark.parametrize("evil", ["../evil.png", "d/../../evil.png", "/abs/evil.png", "C:/evil.png",
                                  "..\\evil.png"])
def test_unpack_refuses_escaping_entries_writing_nothing(tmp_path, evil):
    z = make_zip(tmp_path / "x.zip", [("good/a.png", A), (evil, B), ("good/c.png", C)])
    out = tmp_path / "sub" / "out"
    with pytest.raises(DataError, match="outside"):
        zips.unpack_zip(z, out, show_progress=False)
    assert files_under(tmp_path) == ["x.zip"]  # nothing written anywhere, not even good/a.png


def test_truncated_or_corrupt_zip_refused(tmp_path):
    good = make_zip(tmp_path / "good.zip", [("a.png", A), ("b.png", B), ("c.png", C)])
    data = good.read_bytes()
    cut = tmp_path / "cut.zip"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.zip"):
        zips.check_zip(cut)
    with pytest.raises(DataError, match="not a complete zip"):
        zips.unpack_zip(cut, tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()

    # a flipped byte inside a stored image: the CRC check catches it
    i = data.index(C) + len(C) // 2
    flipped = tmp_path / "flipped.zip"
    flipped.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])
    with pytest.raises(DataError, match="c.png"):
        zips.check_zip(flipped)

    html = tmp_path / "page.zip"
    html.write_text("<!DOCTYPE html><html><body>Google Drive - Too many users</body></html>")
    with pytest.raises(DataError, match="web page"):
        zips.check_zip(html)
    with pytest.raises(DataError, match="does not exist"):
        zips.check_zip(tmp_path / "none.zip")


def test_unpack_refuses_zip_without_images_and_name_clashes(tmp_path):
    z = make_zip(tmp_path / "x.zip", [("readme.txt", b"x")])
    with pytest.raises(DataError, match="no images"):
        zips.unpack_zip(z, tmp_path / "out", show_progress=False)
    z = make_zip(tmp_path / "y.zip", [("p/a.png", A), ("q/a.png", B)])
    with pytest.raises(DataError, match="a.png"):
        zips.unpack_zip(z, tmp_path / "out2", show_progress=False)
    assert not (tmp_path / "out2").exists()


# ---------------------------------------------------------------- demo data

def _demo(root, seed=0):
    return demo.make_demo_dataset(root, train_pages=3, test_pages=1, crops_per_page=2, crop=64,
                                  seed=seed, show_progress=False, unseen_pages=2)


def test_the_demo_refuses_a_setting_it_does_not_know(tmp_path):
    with pytest.raises(TypeError, match=r"unknown demo settings: \['test_page'\]"):
        demo.make_demo_dataset(tmp_path, test_page=4)
    assert not list(tmp_path.iterdir())  # nothing written


def _file_bytes(root):
    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_demo_dataset_layout_and_determinism(tmp_path):
    r = _demo(tmp_path / "a")
    assert r["train_pairs"] == 10 and r["unseen_pairs"] == 4 and r["test_scans"] == 3
    a = _file_bytes(tmp_path / "a")
    assert "DEMO_DATA.txt" in a
    assert sum(k.startswith("train/clean/") and k.endswith(".png") for k in a) == 10
    assert sum(k.startswith("train/scan/") and k.endswith(".png") for k in a) == 10
    assert sum(k.startswith("test/scan/") and k.endswith(".tif") for k in a) == 3
    assert "train/clean/DemoMaking.00000.01.png" in a and "train/clean/scanner03_000.png" in a
    assert "test/scan/scanner01_000.tif" in a
    assert helpers.dataset_kind(tmp_path / "a") == "demo"
    assert data.data_label(tmp_path / "a").startswith("DEMO DATA")
    summary = data.check_dataset(tmp_path / "a", show_progress=False)
    assert summary["train_sizes"] == {"64x64": 10} and summary["test_sizes"] == {"64x64": 3}

    _demo(tmp_path / "b")
    assert _file_bytes(tmp_path / "b") == a  # byte-identical for the same seed

    _demo(tmp_path / "c", seed=1)
    c = _file_bytes(tmp_path / "c")
    assert set(c) == set(a)
    changed = [k for k in a if k.endswith((".png", ".tif")) and a[k] != c[k]]
    assert len(changed) == 23  # every image differs for another seed


def test_demo_scans_are_aligned_and_degraded(tmp_path):
    _demo(tmp_path)
    r = submit.score_restored(tmp_path / "train/scan", tmp_path / "train/clean")
    assert r["images"] == 10 and r["unseen_images"] == 4  # the seen scanners' figures: 6 images
    assert r["score"] > 3 and r["unseen_score"] > 3  # "do nothing" is clearly not a perfect score
    for pair in helpers.pair_files(tmp_path / "train/clean", tmp_path / "train/scan"):
        c, s = helpers.read_rgb(pair.clean), helpers.read_rgb(pair.scan)
        aligned = metrics.pixel_y_mae(s, c)
        shifted = metrics.pixel_y_mae(s[8:, 8:].copy(), c[:-8, :-8].copy())
        assert 0 < aligned < shifted  # the scan is of the same window of the same page


def test_simulate_scan_does_not_mutate_and_is_seeded():
    page = demo.make_page(np.random.default_rng(0), 48, 48)
    page0 = page.copy()
    a = demo.simulate_scan(page, np.random.default_rng(1))
    b = demo.simulate_scan(page, np.random.default_rng(1))
    assert np.array_equal(page, page0) and np.array_equal(a, b)
    assert a.dtype == np.uint8 and a.shape == page.shape and not np.array_equal(a, page)


