"""Notebook 05's helpers: checkpoint choice, restore_folder, make_submission, the local leaderboard.

The CSV checks of tests/test_helpers.py (header, bad values, duplicate ids, atomic write_submission)
are not repeated here; these tests cover the path from scans on disk to the file uploaded to Kaggle.
Expected values are computed independently with plain OpenCV calls written in the tests.
"""
import csv
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import helpers  # noqa: E402
from helpers import CheckpointError  # noqa: E402

TINY = {"width": 8, "depth": 3}
SIZES = [(17, 23), (33, 9), (8, 8)]  # odd sizes on purpose


# ---------------------------------------------------------------- builders

def imwrite_rgb(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))
    return path


def opencv_mean_y(path):
    """The course's scorer, written out: cv2.imread (BGR), COLOR_BGR2YUV, mean of channel 0."""
    bgr = cv2.imread(str(path))
    return float(cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)[:, :, 0].mean())


def tiny_model(seed=0):
    torch.manual_seed(seed)
    model = helpers.build_model("dncnn", **TINY)
    with torch.no_grad():  # a visible, image-dependent change, so the PNGs differ from the scans
        model.body[-1].bias.copy_(torch.tensor([0.3, -0.2, 0.1]))
    return model.eval()


@pytest.fixture
def test_scans(tmp_path):
    rng = np.random.default_rng(0)
    names = ["Mag.00007.01", "Mag.00007.02", "Other.00012.01"]
    return [imwrite_rgb(tmp_path / "data/test/scan" / f"{n}.tif", rng.integers(0, 256, s + (3,), dtype=np.uint8))
            for n, s in zip(names, SIZES)]


@pytest.fixture
def val_pairs(tmp_path):
    rng = np.random.default_rng(1)
    pairs = []
    for i, s in enumerate(SIZES):
        clean = rng.integers(0, 256, s + (3,), dtype=np.uint8)
        scan = np.clip(clean.astype(int) + rng.integers(-40, 10, s + (3,)), 0, 255).astype(np.uint8)
        name = f"Val.{i:05d}.01"
        pairs.append(helpers.Pair(name, imwrite_rgb(tmp_path / "data/train/clean" / f"{name}.png", clean),
                                  imwrite_rgb(tmp_path / "data/train/scan" / f"{name}.png", scan)))
    return pairs


def save_run(workspace, run, score=None, model_name="dncnn"):
    state = {"kind": "best", "model_name": model_name, "model_kwargs": TINY,
             "model": helpers.build_model("dncnn", **TINY).state_dict(), "data_kind": "demo", "epoch": 1}
    if score is not None:
        state["val"] = {"score": score, "pixel_y_mae": 1.0, "psnr": 30.0}
    return helpers.save_checkpoint(state, Path(workspace) / "runs" / run / "best.pt")


# ---------------------------------------------------------------- restore_folder

def test_restore_folder_names_pngs_after_the_tifs_and_keeps_odd_sizes(tmp_path, test_scans):
    out = tmp_path / "restored"
    out.mkdir()
    (out / "stale.00001.01.png").write_bytes(b"left over from an earlier run")
    (out / "notes.txt").write_text("not ours to delete")
    written = helpers.restore_folder(helpers.Identity(), test_scans, out, batch_size=2, progress=False)
    assert written == [out / f"{p.stem}.png" for p in test_scans]
    assert sorted(p.name for p in out.iterdir()) == ["Mag.00007.01.png", "Mag.00007.02.png", "Other.00012.01.png",
                                                     "notes.txt"]  # stale PNG gone, nothing temporary left
    for tif, png in zip(test_scans, written):
        # "do nothing" through the whole path gives back every pixel of the scan, at its own size
        assert np.array_equal(cv2.imread(str(png)), cv2.imread(str(tif)))


def test_restore_folder_writes_what_restore_returns_in_chunks(tmp_path, test_scans):
    model = tiny_model()
    scans = [helpers.read_rgb(p) for p in test_scans]
    for ensemble in (False, True):
        out = tmp_path / f"out{int(ensemble)}"
        helpers.restore_folder(model, test_scans, out, batch_size=2, ensemble=ensemble, progress=False, chunk=2)
        expected = helpers.restore(model, scans, batch_size=2, ensemble=ensemble)
        for p, exp in zip(test_scans, expected):
            got = cv2.imread(str(out / f"{p.stem}.png"))[..., ::-1]
            assert got.shape[:2] == exp.shape[:2] and np.array_equal(got, exp)
            assert not np.array_equal(got, helpers.read_rgb(p))  # the model did change it


def test_restore_folder_refuses_to_write_over_the_scans(tmp_path):
    scan = imwrite_rgb(tmp_path / "scans" / "a.00001.01.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(helpers.DataError, match="holds the scans"):
        helpers.restore_folder(helpers.Identity(), [scan], tmp_path / "scans", progress=False)
    assert scan.is_file()


# ---------------------------------------------------------------- make_submission

def read_csv_plain(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], {name: float(value) for name, value in rows[1:]}, [r[0] for r in rows[1:]]


def test_csv_values_equal_an_independent_opencv_computation(tmp_path, test_scans):
    restored = tmp_path / "restored"
    helpers.restore_folder(tiny_model(), test_scans, restored, batch_size=2, progress=False)
    df = helpers.make_submission(restored, tmp_path / "data/test/scan", tmp_path / "submission.csv")
    header, values, order = read_csv_plain(tmp_path / "submission.csv")
    assert header == ["Image File", "Y Channel Value"]
    assert order == sorted(p.stem for p in test_scans)
    for name, value in values.items():
        assert value == opencv_mean_y(restored / f"{name}.png")  # exact: the saved uint8 PNG, as the scorer
    assert list(df.columns) == ["Image File", "Y Channel Value"]
    assert list(df["Image File"]) == order and list(df["Y Channel Value"]) == [values[n] for n in order]


def test_make_submission_refuses_missing_and_extra_images(tmp_path, test_scans):
    restored, path = tmp_path / "restored", tmp_path / "submission.csv"
    helpers.restore_folder(helpers.Identity(), test_scans, restored, progress=False)
    helpers.make_submission(restored, tmp_path / "data/test/scan", path)
    before = path.read_bytes()

    (restored / "Mag.00007.02.png").unlink()  # e.g. a restore interrupted half way
    with pytest.raises(ValueError, match=r"1 test images have no row: Mag\.00007\.02"):
        helpers.make_submission(restored, tmp_path / "data/test/scan", path)
    assert path.read_bytes() == before

    helpers.restore_folder(helpers.Identity(), test_scans, restored, progress=False)
    imwrite_rgb(restored / "Val.00001.01.png", np.zeros((4, 4, 3), np.uint8))  # not a test image
    with pytest.raises(ValueError, match=r"rows are not test images: Val\.00001\.01"):
        helpers.make_submission(restored, tmp_path / "data/test/scan", path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "restored", "submission.csv"]


def test_interrupted_csv_write_leaves_the_previous_csv(tmp_path, test_scans, monkeypatch):
    restored, path = tmp_path / "restored", tmp_path / "submission.csv"
    helpers.restore_folder(helpers.Identity(), test_scans, restored, progress=False)
    helpers.make_submission(restored, tmp_path / "data/test/scan", path)
    before = path.read_bytes()
    helpers.restore_folder(tiny_model(), test_scans, restored, progress=False)  # new results to write

    real_writer = csv.writer

    def writer_stopped_after_two_rows(f, *args, **kwargs):
        inner, written = real_writer(f, *args, **kwargs), []

        class Writer:
            def writerow(self, row):
                if len(written) == 2:
                    f.flush()  # the header and a row really are on disk when the stop comes
                    raise KeyboardInterrupt  # the user presses stop, or the runtime dies
                written.append(row)
                return inner.writerow(row)
        return Writer()

    monkeypatch.setattr(helpers.csv, "writer", writer_stopped_after_two_rows)
    with pytest.raises(KeyboardInterrupt):
        helpers.make_submission(restored, tmp_path / "data/test/scan", path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "restored", "submission.csv"]
    df = helpers.make_submission(restored, tmp_path / "data/test/scan", path)
    assert path.read_bytes() != before and len(df) == len(test_scans)


# ---------------------------------------------------------------- choosing the checkpoint

def test_missing_checkpoints_say_which_notebook_to_run(tmp_path):
    with pytest.raises(CheckpointError, match=r"no usable checkpoint under .*runs.*notebook 03.*04"):
        helpers.choose_checkpoint(tmp_path)
    assert helpers.find_checkpoints(tmp_path) == []
    with pytest.raises(CheckpointError, match=r"no checkpoint at .*gone\.pt.*notebook 03"):
        helpers.choose_checkpoint(tmp_path, str(tmp_path / "gone.pt"))
    save_run(tmp_path, "dncnn", 2.0)
    with pytest.raises(CheckpointError, match=r"no checkpoint named 'unet'.*dncnn \(dncnn\).*notebook 03"):
        helpers.choose_checkpoint(tmp_path, "unet")


def test_choose_checkpoint_picks_the_lowest_recorded_score(tmp_path):
    save_run(tmp_path, "a", 3.0)
    save_run(tmp_path, "b", 1.5)
    save_run(tmp_path, "c", None)  # no validation score recorded: last
    assert [e["run"] for e in helpers.find_checkpoints(tmp_path)] == ["b", "a", "c"]
    chosen = helpers.choose_checkpoint(tmp_path)
    assert chosen["run"] == "b" and chosen["val_score"] == 1.5 and chosen["path"] == tmp_path / "runs/b/best.pt"
    assert chosen["model_name"] == "dncnn" and chosen["data_kind"] == "demo" and "lowest" in chosen["reason"]
    assert helpers.choose_checkpoint(tmp_path, "")["run"] == "b"  # an empty DESCAN_CHECKPOINT = default


def test_choose_checkpoint_honours_a_path_and_a_name(tmp_path):
    save_run(tmp_path, "a", 3.0)
    save_run(tmp_path, "b", 1.5)
    elsewhere = save_run(tmp_path / "elsewhere", "mine", 9.0)
    assert helpers.choose_checkpoint(tmp_path, str(tmp_path / "runs/a/best.pt"))["run"] == "a"
    assert helpers.choose_checkpoint(tmp_path, str(tmp_path / "runs/a"))["path"] == tmp_path / "runs/a/best.pt"
    got = helpers.choose_checkpoint(tmp_path, str(elsewhere))
    assert got["path"] == elsewhere and got["val_score"] == 9.0 and "path" in got["reason"]
    assert helpers.choose_checkpoint(tmp_path, "a")["run"] == "a"  # a run folder, though b scores better
    by_model = helpers.choose_checkpoint(tmp_path, "dncnn")  # no run of that name: the model name, best score
    assert by_model["run"] == "b" and "model name" in by_model["reason"]
    save_run(tmp_path, "dncnn", 5.0)  # now a run folder has that name: it wins over the model name
    assert helpers.choose_checkpoint(tmp_path, "dncnn")["run"] == "dncnn"
    model = helpers.model_from_checkpoint(got["path"])
    assert isinstance(model, helpers.DnCNN) and not model.training


def test_unknown_model_and_broken_files_are_never_chosen_silently(tmp_path):
    save_run(tmp_path, "dncnn", 4.0)
    save_run(tmp_path, "vitgan", 0.5, model_name="vitgan")  # better score, but not a model we can build
    broken = tmp_path / "runs/broken/best.pt"
    broken.parent.mkdir()
    broken.write_bytes(b"not a checkpoint")
    found = {e["run"]: e for e in helpers.find_checkpoints(tmp_path)}
    assert found["dncnn"]["error"] is None
    assert "'vitgan'" in found["vitgan"]["error"] and "broken" in found["broken"]["error"]
    assert helpers.choose_checkpoint(tmp_path)["run"] == "dncnn"
    with pytest.raises(CheckpointError, match=r"'vitgan', which this version of helpers.py does not know"):
        helpers.choose_checkpoint(tmp_path, "vitgan")
    with pytest.raises(CheckpointError, match=r"broken.best\.pt is corrupt"):
        helpers.choose_checkpoint(tmp_path, "broken")
    (tmp_path / "runs/dncnn/best.pt").unlink()
    with pytest.raises(CheckpointError, match=r"no usable checkpoint.*'vitgan'.*notebook 03"):
        helpers.choose_checkpoint(tmp_path)


# ---------------------------------------------------------------- the local leaderboard

def run_score_cli(pred_dir, clean_dir):
    r = subprocess.run([sys.executable, str(ROOT / "helpers.py"), "score", str(pred_dir), str(clean_dir)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return re.search(r"over \d+ images: ([\d.]+)", r.stdout).group(1)


def test_local_leaderboard_scores_the_saved_pngs_and_agrees_with_the_cli(tmp_path, val_pairs):
    board = helpers.local_leaderboard({"do nothing": helpers.Identity(), "tiny": tiny_model()}, val_pairs,
                                      tmp_path / "restored_val", batch_size=2, ensembles=(False, True),
                                      progress=False)
    assert sorted(zip(board["entry"], board["ensemble"])) == [("do nothing", False), ("tiny", False), ("tiny", True)]
    assert list(board["score"]) == sorted(board["score"]) and (board["images"] == len(val_pairs)).all()
    assert sorted(p.name for p in (tmp_path / "restored_val").iterdir()) == ["do_nothing", "tiny", "tiny_x8"]
    clean_dir = tmp_path / "data/train/clean"
    for row in board.itertuples():
        folder = row.folder
        assert sorted(p.name for p in folder.iterdir()) == sorted(f"{p.name}.png" for p in val_pairs)
        independent = np.mean([abs(opencv_mean_y(folder / f"{p.name}.png") - opencv_mean_y(p.clean))
                               for p in val_pairs])
        assert row.score == pytest.approx(independent, abs=1e-12)
    # "do nothing" is the scans' own score
    nothing = board.loc[board["entry"] == "do nothing", "score"].item()
    assert nothing == pytest.approx(np.mean([abs(opencv_mean_y(p.scan) - opencv_mean_y(p.clean)) for p in val_pairs]))
    for folder in (tmp_path / "restored_val/do_nothing", tmp_path / "restored_val/tiny_x8"):
        score = board.loc[board["folder"] == folder, "score"].item()
        assert run_score_cli(folder, clean_dir) == f"{score:.4f}"


def test_score_restored_needs_one_png_per_pair(tmp_path, val_pairs):
    out = tmp_path / "restored_val"
    helpers.restore_folder(helpers.Identity(), [p.scan for p in val_pairs], out, progress=False)
    r = helpers.score_restored(out, val_pairs)
    assert r["images"] == 3 and r["psnr"] > 0 and r["pixel_y_mae"] > 0
    (out / f"{val_pairs[0].name}.png").unlink()
    with pytest.raises(ValueError, match=val_pairs[0].name):
        helpers.score_restored(out, val_pairs)


def test_env_flag(monkeypatch):
    for value, expected in (("1", True), ("yes", True), ("0", False), ("off", False), ("", True)):
        monkeypatch.setenv("DESCAN_X", value)
        assert helpers.env_flag("DESCAN_X", True) is expected
    monkeypatch.delenv("DESCAN_X")
    assert helpers.env_flag("DESCAN_X", False) is False
    monkeypatch.setenv("DESCAN_X", "maybe")
    with pytest.raises(ValueError, match="DESCAN_X"):
        helpers.env_flag("DESCAN_X", True)
