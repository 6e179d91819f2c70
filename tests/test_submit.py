"""descan.submit and descan.checkpoints' choice: the CSV format, restore_folder, make_submission,
checkpoint choice, the local leaderboard and the `score` command line.

These tests cover the path from scans on disk to the file uploaded to Kaggle. Expected values are
computed independently with plain OpenCV calls written in the tests.
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
from descan import checkpoints, cli, inference, models, submit  # noqa: E402
from descan.checkpoints import CheckpointError  # noqa: E402
from helpers import DataError
from builders import files_under, imwrite_rgb, notebook_model, uniform  # noqa: E402

TINY = {"width": 8, "depth": 3}
SIZES = [(17, 23), (33, 9), (8, 8)]  # odd sizes on purpose


# ---------------------------------------------------------------- builders

def opencv_mean_y(path):
    """The course's scorer, written out: cv2.imread (BGR), COLOR_BGR2YUV, mean of channel 0."""
    bgr = cv2.imread(str(path))
    return float(cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)[:, :, 0].mean())


def tiny_model(seed=0):
    torch.manual_seed(seed)
    model = notebook_model("dncnn", **TINY)
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
             "model_code": None,
             "model": notebook_model("dncnn", **TINY).state_dict(), "data_kind": "demo", "epoch": 1,
             "step": 1, "config": {}, "val": None}
    if score is not None:
        state["val"] = {"score": score, "pixel_y_mae": 1.0, "psnr": 30.0}
    return checkpoints.save_checkpoint(state, checkpoints.best_path(workspace, run))


# ---------------------------------------------------------------- restore_folder

def test_restore_folder_names_pngs_after_the_tifs_and_keeps_odd_sizes(tmp_path, test_scans):
    out = tmp_path / "restored"
    out.mkdir()
    (out / "stale.00001.01.png").write_bytes(b"left over from an earlier run")
    (out / "notes.txt").write_text("left over too")
    written = submit.restore_folder(models.Identity(), test_scans, out, images_per_pass=2, show_progress=False)
    assert written == [out / f"{p.stem}.png" for p in test_scans]
    # exactly the restored PNGs: the stale PNG and the other file gone, nothing temporary left
    assert sorted(p.name for p in out.iterdir()) == ["Mag.00007.01.png", "Mag.00007.02.png", "Other.00012.01.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "restored"]
    for tif, png in zip(test_scans, written):
        # "do nothing" through the whole path gives back every pixel of the scan, at its own size
        assert np.array_equal(cv2.imread(str(png)), cv2.imread(str(tif)))


def test_restore_folder_writes_what_restore_returns_in_chunks(tmp_path, test_scans):
    model = tiny_model()
    scans = [helpers.read_rgb(p) for p in test_scans]
    for ensemble in (False, True):
        out = tmp_path / f"out{int(ensemble)}"
        submit.restore_folder(model, test_scans, out, images_per_pass=2, ensemble=ensemble, show_progress=False, chunk=2)
        expected = inference.restore(model, scans, images_per_pass=2, ensemble=ensemble)
        for p, exp in zip(test_scans, expected):
            got = cv2.imread(str(out / f"{p.stem}.png"))[..., ::-1]
            assert got.shape[:2] == exp.shape[:2] and np.array_equal(got, exp)
            assert not np.array_equal(got, helpers.read_rgb(p))  # the model did change it


def test_restore_folder_refuses_to_write_over_the_scans(tmp_path):
    scan = imwrite_rgb(tmp_path / "scans" / "a.00001.01.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(helpers.DataError, match="holds the scans"):
        submit.restore_folder(models.Identity(), [scan], tmp_path / "scans", show_progress=False)
    assert scan.is_file()


# ---------------------------------------------------------------- make_submission

def read_csv_plain(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], {name: float(value) for name, value in rows[1:]}, [r[0] for r in rows[1:]]


def test_csv_values_equal_an_independent_opencv_computation(tmp_path, test_scans):
    restored = tmp_path / "restored"
    submit.restore_folder(tiny_model(), test_scans, restored, images_per_pass=2, show_progress=False)
    df = submit.make_submission(restored, test_scans, tmp_path / "submission.csv")
    header, values, order = read_csv_plain(tmp_path / "submission.csv")
    assert header == ["Image File", "Y Channel Value"]
    assert order == sorted(p.stem for p in test_scans)
    for name, value in values.items():
        assert value == opencv_mean_y(restored / f"{name}.png")  # exact: the saved uint8 PNG, as the scorer
    assert list(df.columns) == ["Image File", "Y Channel Value"]
    assert list(df["Image File"]) == order and list(df["Y Channel Value"]) == [values[n] for n in order]


def test_make_submission_refuses_missing_and_extra_images(tmp_path, test_scans):
    restored, path = tmp_path / "restored", tmp_path / "submission.csv"
    submit.restore_folder(models.Identity(), test_scans, restored, show_progress=False)
    submit.make_submission(restored, test_scans, path)
    before = path.read_bytes()

    (restored / "Mag.00007.02.png").unlink()  # e.g. a restore interrupted half way
    with pytest.raises(ValueError, match=r"1 test images have no row: Mag\.00007\.02"):
        submit.make_submission(restored, test_scans, path)
    assert path.read_bytes() == before

    submit.restore_folder(models.Identity(), test_scans, restored, show_progress=False)
    imwrite_rgb(restored / "Val.00001.01.png", np.zeros((4, 4, 3), np.uint8))  # not a test image
    with pytest.raises(ValueError, match=r"rows are not test images: Val\.00001\.01"):
        submit.make_submission(restored, test_scans, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "restored", "submission.csv"]


def test_interrupted_csv_write_leaves_the_previous_csv(tmp_path, test_scans, monkeypatch):
    restored, path = tmp_path / "restored", tmp_path / "submission.csv"
    submit.restore_folder(models.Identity(), test_scans, restored, show_progress=False)
    submit.make_submission(restored, test_scans, path)
    before = path.read_bytes()
    submit.restore_folder(tiny_model(), test_scans, restored, show_progress=False)  # new results to write

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

    monkeypatch.setattr(submit.csv, "writer", writer_stopped_after_two_rows)
    with pytest.raises(KeyboardInterrupt):
        submit.make_submission(restored, test_scans, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "restored", "submission.csv"]
    df = submit.make_submission(restored, test_scans, path)
    assert path.read_bytes() != before and len(df) == len(test_scans)


# ---------------------------------------------------------------- choosing the checkpoint

def test_missing_checkpoints_say_which_notebook_to_run(tmp_path):
    with pytest.raises(CheckpointError, match=r"no usable checkpoint under .*runs.*notebook 03.*04"):
        checkpoints.choose_checkpoint(tmp_path)
    assert checkpoints.find_checkpoints(tmp_path) == []
    with pytest.raises(CheckpointError, match=r"no checkpoint at .*gone\.pt.*notebook 03"):
        checkpoints.choose_checkpoint(tmp_path, str(tmp_path / "gone.pt"))
    save_run(tmp_path, "dncnn", 2.0)
    with pytest.raises(CheckpointError, match=r"no checkpoint named 'unet'.*dncnn \(dncnn\).*notebook 03"):
        checkpoints.choose_checkpoint(tmp_path, "unet")


def test_choose_checkpoint_picks_the_lowest_recorded_score(tmp_path):
    save_run(tmp_path, "a", 3.0)
    save_run(tmp_path, "b", 1.5)
    save_run(tmp_path, "c", None)  # no validation score recorded: last
    assert [e["run"] for e in checkpoints.find_checkpoints(tmp_path)] == ["b", "a", "c"]
    chosen = checkpoints.choose_checkpoint(tmp_path)
    assert chosen["run"] == "b" and chosen["val_score"] == 1.5 and chosen["path"] == tmp_path / "runs/b/best.pt"
    assert chosen["model_name"] == "dncnn" and chosen["data_kind"] == "demo" and "lowest" in chosen["reason"]
    assert checkpoints.choose_checkpoint(tmp_path, "")["run"] == "b"  # an empty DESCAN_CHECKPOINT = default


def test_choose_checkpoint_honours_a_path_and_a_name(tmp_path):
    save_run(tmp_path, "a", 3.0)
    save_run(tmp_path, "b", 1.5)
    elsewhere = save_run(tmp_path / "elsewhere", "mine", 9.0)
    assert checkpoints.choose_checkpoint(tmp_path, str(tmp_path / "runs/a/best.pt"))["run"] == "a"
    assert checkpoints.choose_checkpoint(tmp_path, str(tmp_path / "runs/a"))["path"] == tmp_path / "runs/a/best.pt"
    got = checkpoints.choose_checkpoint(tmp_path, str(elsewhere))
    assert got["path"] == elsewhere and got["val_score"] == 9.0 and "path" in got["reason"]
    assert checkpoints.choose_checkpoint(tmp_path, "a")["run"] == "a"  # a run folder, though b scores better
    with pytest.raises(CheckpointError, match=r"no checkpoint named 'dncnn'.*b \(dncnn\), a \(dncnn\)"):
        checkpoints.choose_checkpoint(tmp_path, "dncnn")  # a model name is not a run
    save_run(tmp_path, "dncnn", 5.0)
    assert "run folder" in checkpoints.choose_checkpoint(tmp_path, "dncnn")["reason"]
    model = checkpoints.model_from_checkpoint(got["path"])
    assert type(model).__name__ == "DnCNN" and not model.training


def test_unknown_model_and_broken_files_are_never_chosen_silently(tmp_path):
    save_run(tmp_path, "dncnn", 4.0)
    save_run(tmp_path, "vitgan", 0.5, model_name="vitgan")  # better score, but not a model we can build
    broken = tmp_path / "runs/broken/best.pt"
    broken.parent.mkdir()
    broken.write_bytes(b"not a checkpoint")
    found = {e["run"]: e for e in checkpoints.find_checkpoints(tmp_path)}
    assert found["dncnn"]["error"] is None
    assert "'vitgan'" in found["vitgan"]["error"] and "broken" in found["broken"]["error"]
    assert checkpoints.choose_checkpoint(tmp_path)["run"] == "dncnn"
    with pytest.raises(CheckpointError, match=r"names model 'vitgan' but holds no code for it.*notebook 03 or 04"):
        checkpoints.choose_checkpoint(tmp_path, "vitgan")
    with pytest.raises(CheckpointError, match=r"broken.best\.pt is corrupt"):
        checkpoints.choose_checkpoint(tmp_path, "broken")
    (tmp_path / "runs/dncnn/best.pt").unlink()
    with pytest.raises(CheckpointError, match=r"no usable checkpoint.*'vitgan'.*notebook 03"):
        checkpoints.choose_checkpoint(tmp_path)


# ---------------------------------------------------------------- the local leaderboard

def run_score_cli(pred_dir, clean_dir):
    r = subprocess.run([sys.executable, "-m", "descan", "score", str(pred_dir), str(clean_dir)],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return re.search(r"over \d+ images: ([\d.]+)", r.stdout).group(1)


def test_local_leaderboard_scores_the_saved_pngs_and_agrees_with_the_cli(tmp_path, val_pairs):
    board = submit.local_leaderboard({"do nothing": models.Identity(), "tiny": tiny_model()}, val_pairs,
                                      tmp_path / "restored_val", images_per_pass=2, x8=["tiny"],
                                      show_progress=False)
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
    submit.restore_folder(models.Identity(), [p.scan for p in val_pairs], out, show_progress=False)
    r = submit.score_restored(out, val_pairs)
    assert r["images"] == 3 and r["psnr"] > 0 and r["pixel_y_mae"] > 0
    (out / f"{val_pairs[0].name}.png").unlink()
    with pytest.raises(ValueError, match=val_pairs[0].name):
        submit.score_restored(out, val_pairs)


def test_env_flag(monkeypatch):
    for value, expected in (("1", True), ("yes", True), ("0", False), ("off", False), ("", True)):
        monkeypatch.setenv("DESCAN_SMOKE", value)
        assert helpers.env_flag("DESCAN_SMOKE", True) is expected
    monkeypatch.delenv("DESCAN_SMOKE")
    assert helpers.env_flag("DESCAN_SMOKE", False) is False
    monkeypatch.setenv("DESCAN_SMOKE", "maybe")
    with pytest.raises(ValueError, match="DESCAN_SMOKE"):
        helpers.env_flag("DESCAN_SMOKE", True)


# ---------------------------------------------------------------- submission CSV

IDS = ["b.00001.01", "a.00002.02", "c.00003.01"]


def test_submission_round_trip_exact(tmp_path):
    rows = [("b.00001.01", 1 / 3), ("a.00002.02", 255.0), ("c.00003.01", 123.45678901234567)]
    path = submit.write_submission(rows, tmp_path / "sub.csv", IDS)
    text = path.read_text()
    lines = text.splitlines()
    assert lines[0] == "Image File,Y Channel Value"
    assert [ln.split(",")[0] for ln in lines[1:]] == sorted(IDS)  # sorted by file name
    back = submit.read_submission(path, IDS)
    assert back == sorted(rows)  # floats round-trip bit for bit
    assert files_under(tmp_path) == ["sub.csv"]


def test_submission_rows_from_pngs(tmp_path):
    imwrite_rgb(tmp_path / "r" / "x.00001.01.png", uniform((10, 200, 30)))
    imwrite_rgb(tmp_path / "r" / "a.00001.01.png", uniform((255, 255, 255)))
    (tmp_path / "r" / "ignored.tif").write_bytes(b"x")
    assert submit.submission_rows(tmp_path / "r") == [("a.00001.01", 255.0), ("x.00001.01", 124.0)]
    with pytest.raises(DataError):
        submit.submission_rows(tmp_path / "nothing_here")


@pytest.mark.parametrize("rows, match", [
    ([("b.00001.01", 1.0), ("a.00002.02", 2.0)], "c.00003.01"),                       # missing id
    ([("b.00001.01", 1.0), ("a.00002.02", 2.0), ("c.00003.01", 3.0), ("zz", 4.0)], "zz"),  # extra
    ([("b.00001.01", 1.0), ("b.00001.01", 1.0), ("a.00002.02", 2.0), ("c.00003.01", 3.0)],
     "duplicate"),
    ([("b.00001.01", float("nan")), ("a.00002.02", 2.0), ("c.00003.01", 3.0)], "nan"),
    ([("b.00001.01", float("inf")), ("a.00002.02", 2.0), ("c.00003.01", 3.0)], "inf"),
    ([("b.00001.01", -0.5), ("a.00002.02", 2.0), ("c.00003.01", 3.0)], "-0.5"),
    ([("b.00001.01", 255.5), ("a.00002.02", 2.0), ("c.00003.01", 3.0)], "255.5"),
    ([("b.00001.01", "abc"), ("a.00002.02", 2.0), ("c.00003.01", 3.0)], "abc"),
    ([], "3 test images have no row"),
])
def test_write_submission_rejects_bad_rows(tmp_path, rows, match):
    with pytest.raises(ValueError, match=match):
        submit.write_submission(rows, tmp_path / "sub.csv", IDS)
    assert files_under(tmp_path) == []  # nothing written, no temporary file left


def test_validate_submission_wrong_row_count():
    submit.validate_submission([("a", 1.0), ("b", 2.0)], ["a", "b"])
    with pytest.raises(ValueError):
        submit.validate_submission([("a", 1.0)], ["a", "b"])
    with pytest.raises(ValueError):
        submit.validate_submission([("a", 1.0), ("b", 2.0), ("a", 1.0)], ["a", "b"])


@pytest.mark.parametrize("content, match", [
    ("Image,Y Channel Value\na,1.0\n", "header"),
    ("Image File;Y Channel Value\na;1.0\n", "header"),
    ("", "header"),
    ("Image File,Y Channel Value\na,1.0,2.0\n", "3 fields"),
    ("Image File,Y Channel Value\na,one\n", "one"),
])
def test_read_submission_rejects_malformed(tmp_path, content, match):
    (tmp_path / "s.csv").write_text(content)
    with pytest.raises(ValueError, match=match):
        submit.read_submission(tmp_path / "s.csv")


def test_read_submission_checks_ids_when_given(tmp_path):
    (tmp_path / "s.csv").write_text("Image File,Y Channel Value\na,1.0\nb,2.5\n")
    assert submit.read_submission(tmp_path / "s.csv") == [("a", 1.0), ("b", 2.5)]
    assert submit.read_submission(tmp_path / "s.csv", ["a", "b"]) == [("a", 1.0), ("b", 2.5)]
    with pytest.raises(ValueError, match="c"):
        submit.read_submission(tmp_path / "s.csv", ["a", "b", "c"])


def test_write_submission_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "sub.csv"
    submit.write_submission([(i, 100.0) for i in IDS], path, IDS)
    before = path.read_bytes()

    # 1. rows that fail validation: the old file stays
    with pytest.raises(ValueError):
        submit.write_submission([(IDS[0], float("nan"))], path, IDS)
    assert path.read_bytes() == before

    # 2. a failure in the middle of writing (after the header): the old file stays
    real_writer = csv.writer

    def failing_writer(f, *args, **kwargs):
        inner = real_writer(f, *args, **kwargs)

        class Writer:
            calls = 0

            def writerow(self, row):
                Writer.calls += 1
                if Writer.calls > 1:
                    raise OSError("disk full (simulated)")
                return inner.writerow(row)

            def writerows(self, rows):
                for r in rows:
                    self.writerow(r)

        return Writer()

    monkeypatch.setattr(submit.csv, "writer", failing_writer)
    with pytest.raises(OSError, match="simulated"):
        submit.write_submission([(i, 7.0) for i in IDS], path, IDS)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert files_under(tmp_path) == ["sub.csv"]  # the partial file is gone too

    # 3. and a good write does replace it
    submit.write_submission([(i, 7.0) for i in IDS], path, IDS)
    assert submit.read_submission(path, IDS) == [(i, 7.0) for i in sorted(IDS)]


# ---------------------------------------------------------------- command line

def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "descan", *map(str, args)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_cli_score_prints_the_score(tmp_path, capsys):
    imwrite_rgb(tmp_path / "pred/a.00001.01.png", uniform((10, 200, 30)))    # 124
    imwrite_rgb(tmp_path / "pred/b.00001.01.png", uniform((100, 100, 100)))  # 100
    imwrite_rgb(tmp_path / "clean/a.00001.01.png", uniform((0, 0, 0)))       # 0
    imwrite_rgb(tmp_path / "clean/b.00001.01.tif", uniform((255, 255, 255)))  # 255
    imwrite_rgb(tmp_path / "clean/extra.00009.01.png", uniform((9, 9, 9)))   # ignored
    r = run_cli("score", tmp_path / "pred", tmp_path / "clean")
    assert r.returncode == 0, r.stderr
    assert "over 2 images: 139.5000" in r.stdout

    # the error path, in-process (a subprocess costs seconds): exit status 1, names the file
    imwrite_rgb(tmp_path / "pred/nomatch.00001.01.png", uniform((1, 1, 1)))
    assert cli.main(["score", str(tmp_path / "pred"), str(tmp_path / "clean")]) == 1
    assert "nomatch.00001.01" in capsys.readouterr().err



def _board(rows):
    import pandas as pd
    return pd.DataFrame([{"entry": e, "ensemble": x, "score": s} for e, x, s in rows])


@pytest.mark.parametrize("x8, ensemble, use", [
    (4.80, "auto", True),    # x8 helps by 0.20 > 0.05: used
    (4.99, "auto", False),   # helps by 0.01, within the noise: single pass
    (5.30, "auto", False),   # hurts
    (None, "auto", False),   # not measured (e.g. on a CPU)
    (5.30, True, True),      # forced
    (4.80, False, False),    # forced off
])
def test_the_ensemble_decision_follows_the_measured_gain_and_threshold(x8, ensemble, use):
    rows = [("do nothing", False, 8.0), ("dncnn", False, 5.0)] + ([("dncnn", True, x8)] if x8 else [])
    decided, why = submit.decide_ensemble(_board(rows), "dncnn", ensemble, min_gain=0.05)
    assert decided is use
    assert "as asked" in why if ensemble != "auto" else ("0.05" in why or "not measured" in why)


def test_the_ensemble_setting_refuses_other_values():
    with pytest.raises(ValueError, match="'auto', True or False"):
        submit.decide_ensemble(_board([("dncnn", False, 5.0)]), "dncnn", "1")


def test_leaderboard_figure_shows_gains_and_the_submitted_entry():
    from descan import plots
    board = _board([("do nothing", False, 8.0), ("dncnn", False, 5.0), ("dncnn", True, 4.9), ("unet", False, 8.5)])
    fig = plots.plot_leaderboard(board, submitted=("dncnn", True))
    ax = fig.axes[0]
    widths = sorted(round(p.get_width(), 6) for p in ax.patches)
    assert widths == [-0.5, 3.0, 3.1]  # gains over doing nothing, one worse than it
    assert [p.get_linewidth() for p in ax.patches].count(2.5) == 1  # the submitted bar is outlined
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"single pass", "x8 self-ensemble", "submitted"}


def test_best_models_loads_the_runs_that_exist_on_the_asked_device(tmp_path):
    save_run(tmp_path, "dncnn", 3.0)
    got = checkpoints.best_models(tmp_path, {"DnCNN": "dncnn", "colour map": "colour_map"}, "cpu")
    assert list(got) == ["DnCNN"] and not got["DnCNN"].training
    assert next(got["DnCNN"].parameters()).device.type == "cpu"


def test_leaderboard_notes_name_a_better_entry():
    board = _board([("attention_unet", False, 5.10), ("colour_map", False, 5.11), ("dncnn", False, 5.82),
                    ("do nothing", False, 12.07)])
    notes = submit.leaderboard_notes(board, "attention_unet")
    assert notes == ["validation estimate of attention_unet: 5.1000 (single pass)   do nothing: 12.0700"]
    notes = submit.leaderboard_notes(board, "dncnn")
    assert len(notes) == 2 and "attention_unet scores better (5.1000)" in notes[1]
    assert "DESCAN_CHECKPOINT=attention_unet" in notes[1]
    nothing_wins = _board([("do nothing", False, 4.0), ("dncnn", False, 5.0)])
    with pytest.raises(DataError, match=r"dncnn scores 5\.0000 .* worse than doing nothing \(4\.0000"
                       r"\).*DESCAN_CHECKPOINT=dncnn to submit it anyway"):
        submit.leaderboard_notes(nothing_wins, "dncnn")  # e.g. a run that diverged, losses finite
    notes = submit.leaderboard_notes(nothing_wins, "dncnn", asked=True)
    assert "no checkpoint beats doing nothing" in notes[1]
