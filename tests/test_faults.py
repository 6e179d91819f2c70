"""Faults and bad input: failed writes say why and keep the old file, stale partial
files go, restore swaps a complete folder in, the CSV reader is strict, 05 keeps to its kind of
data, settings (key=value) are refused by name; and the claims that deliberate bugs once slipped past
(best.pt by validation score, the clamp, pairing by name, why resuming needs no RNG state).
The last test runs benchmarks/fault_drill.py in its quick mode."""
import dataclasses
import errno
import json
import os
import random
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import helpers  # noqa: E402
from builders import (files_under, imwrite_rgb, notebook_model, notebook_run, pair_dirs,  # noqa: E402
                      uniform)
from descan import checkpoints, engine, files, inference, models, optim, recipes, submit  # noqa: E402
from descan.checkpoints import CheckpointError  # noqa: E402
from helpers import DataError  # noqa: E402

TINY = {"width": 8, "depth": 3}
PARTIAL = re.compile(r"\..+\.[0-9a-f]{8}\.partial")


def tiny_best(score=1.0, data_kind="demo"):
    """A best.pt state of a tiny DnCNN built from notebook 03's model cell (its code included)."""
    spec = notebook_run("dncnn")["model"]
    return {"kind": "best", "model_name": spec["name"], "model_kwargs": TINY, "model_code": spec["code"],
            "model": notebook_model("dncnn", **TINY).state_dict(), "data_kind": data_kind, "epoch": 1,
            "step": 1, "config": {}, "val": {"score": score}}


def python(code, *args, timeout=120):
    """Run ``code`` in a fresh Python with the repository on its path; returns the CompletedProcess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DESCAN")}
    return subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r})\n" +
                           textwrap.dedent(code), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout)


# ---------------------------------------------------------------- failed writes

@pytest.mark.parametrize("code, word", [(errno.ENOSPC, "disk full"), (errno.EDQUOT, "disk full"),
                                        (errno.EROFS, "read-only"), (errno.EACCES, "read-only")])
def test_a_failed_write_says_why_and_where_and_keeps_the_old_file(tmp_path, code, word):
    target = tmp_path / "submission.csv"
    target.write_text("old")
    with pytest.raises(OSError) as e:
        with files.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise OSError(code, os.strerror(code))
    assert e.value.errno == code and word in str(e.value) and str(target) in str(e.value)
    assert target.read_text() == "old" and files_under(tmp_path) == ["submission.csv"]


@pytest.mark.parametrize("error", [OSError("23590 requested and 8192 written"),  # numpy's tofile
                                   RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos")])
def test_writes_without_an_errno_on_a_full_disk_say_disk_full(tmp_path, monkeypatch, error):
    """numpy's short write and torch's zip writer give no errno: the free space tells."""
    import shutil
    target = tmp_path / "x.png"
    target.write_bytes(b"old")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(100, 100, 0))
    with pytest.raises(OSError, match=rf"disk full: could not write {re.escape(str(target))}"):
        with files.atomic_path(target):
            raise error
    assert target.read_bytes() == b"old" and files_under(tmp_path) == ["x.png"]


def test_other_errors_pass_through_unchanged(tmp_path):
    with pytest.raises(RuntimeError, match="^boom$"):
        with files.atomic_path(tmp_path / "a.txt"):
            raise RuntimeError("boom")
    with pytest.raises(OSError, match="Bad file descriptor"):
        with files.atomic_path(tmp_path / "b.txt"):
            raise OSError(errno.EBADF, "Bad file descriptor")


def test_a_read_only_folder_is_named(tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "best.pt").write_bytes(b"old")
    real_open = os.open

    def refuse(path, *a, **k):  # what a read-only mount answers (a chmod does not stop root)
        if str(path).startswith(str(folder)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *a, **k)
    monkeypatch.setattr(os, "open", refuse)
    state = tiny_best()
    with pytest.raises(OSError, match=rf"read-only: could not write {re.escape(str(folder / 'best.pt'))}"):
        checkpoints.save_checkpoint(state, folder / "best.pt")
    monkeypatch.setattr(os, "open", real_open)
    assert (folder / "best.pt").read_bytes() == b"old"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder anyway")
def test_a_really_read_only_folder_is_named(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OSError, match=rf"read-only: could not write {re.escape(str(folder / 'a.csv'))}"):
            submit.write_submission([("a", 1.0)], folder / "a.csv", ["a"])
    finally:
        folder.chmod(0o755)


def test_stale_partials_of_the_target_go_and_nothing_else(tmp_path):
    keep = [".a.csv.0123abcd.partial.txt", ".a.csv.0123abcde.partial", ".a.csv.0123ABCD.partial",
            ".b.csv.0123abcd.partial", "a.csv.0123abcd.partial", ".xa.csv.0123abcd.partial", "notes.txt"]
    stale = [".a.csv.0123abcd.partial", ".a.csv.ffffffff.partial"]
    for name in keep + stale:
        (tmp_path / name).write_bytes(b"x" * 10)
    submit.write_submission([("a", 1.0)], tmp_path / "a.csv", ["a"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep + ["a.csv"])


def test_a_killed_write_leaves_a_partial_that_the_next_write_removes(tmp_path):
    target = tmp_path / "last.pt"
    target.write_bytes(b"old checkpoint")
    r = python("""
        import os
        from descan import files
        with files.atomic_path(sys.argv[1]) as tmp:
            tmp.write_bytes(b"half a checkpoint")
            os._exit(9)  # killed mid-write: no finally runs
        """, target)
    assert r.returncode == 9, r.stderr
    left = [p.name for p in tmp_path.iterdir() if PARTIAL.fullmatch(p.name)]
    assert len(left) == 1 and target.read_bytes() == b"old checkpoint"
    r = python("""
        from descan import files
        with files.atomic_path(sys.argv[1]) as tmp:
            tmp.write_bytes(b"new checkpoint")
        """, target)
    assert r.returncode == 0, r.stderr
    assert files_under(tmp_path) == ["last.pt"] and target.read_bytes() == b"new checkpoint"


def test_a_live_writers_partial_is_not_taken_for_stale(tmp_path):
    """Another process still writing the same file holds a lock on its partial file: it stays."""
    target = tmp_path / "history.csv"
    proc = subprocess.Popen([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
                             "from descan import files\n"
                             "with files.atomic_path(sys.argv[1]) as tmp:\n"
                             "    tmp.write_text('theirs')\n"
                             "    print('writing', flush=True)\n"
                             "    sys.stdin.read()\n", str(target)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        theirs = [p for p in tmp_path.iterdir() if PARTIAL.fullmatch(p.name)]
        with files.atomic_path(target) as tmp:
            tmp.write_text("ours")
        assert all(p.exists() for p in theirs) and len(theirs) == 1
    finally:
        proc.communicate("", timeout=60)
    assert proc.returncode == 0 and target.read_text() == "theirs" and files_under(tmp_path) == ["history.csv"]


# ---------------------------------------------------------------- restore_folder swaps a whole folder in

class FailOn(torch.nn.Module):
    """Identity that fails on its n-th forward pass (1-based)."""

    def __init__(self, n, error=RuntimeError("the GPU fell over")):
        super().__init__()
        self.n, self.calls, self.error = n, 0, error

    def forward(self, x):
        self.calls += 1
        if self.calls == self.n:
            raise self.error
        return x


@pytest.fixture
def scans(tmp_path):
    rng = np.random.default_rng(0)
    return [imwrite_rgb(tmp_path / "test/scan" / f"s{i}.tif", rng.integers(0, 256, (9, 7, 3), dtype=np.uint8))
            for i in range(4)]


def folder_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}


def test_an_interrupted_restore_leaves_the_previous_complete_folder(tmp_path, scans):
    out = tmp_path / "restored"
    submit.restore_folder(models.Identity(), scans, out, show_progress=False)
    before = folder_bytes(out)
    with pytest.raises(RuntimeError, match="fell over"):
        submit.restore_folder(FailOn(3), scans, out, images_per_pass=1, chunk=1, show_progress=False)
    assert folder_bytes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["restored", "test"]  # no .restored.new left
    full = folder_bytes(out)
    assert len(full) == 4


def test_a_full_disk_during_restore_says_so_and_keeps_the_previous_folder(tmp_path, scans, monkeypatch):
    out = tmp_path / "restored"
    submit.restore_folder(models.Identity(), scans, out, show_progress=False)
    before = folder_bytes(out)
    import shutil
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(100, 100, 0))
    written = []

    def write_image(path, rgb):  # the second PNG meets a full disk: numpy's short write, no errno
        with files.atomic_path(path) as tmp:
            written.append(path)
            tmp.write_bytes(b"part of a PNG")
            if len(written) == 2:
                raise OSError("23590 requested and 8192 written")
    monkeypatch.setattr(submit, "write_image", write_image)
    with pytest.raises(OSError, match=r"disk full: could not write .*s1\.png"):
        submit.restore_folder(models.Identity(), scans, out, show_progress=False)
    assert folder_bytes(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["restored", "test"]


def test_a_kill_between_the_two_renames_is_undone_by_the_next_run(tmp_path, scans):
    out = tmp_path / "restored"
    submit.restore_folder(models.Identity(), scans[:2], out, show_progress=False)
    before = folder_bytes(out)
    out.rename(tmp_path / ".restored.old")           # the state a kill between the renames leaves
    (tmp_path / ".restored.new").mkdir()
    (tmp_path / ".restored.new" / "s0.png").write_bytes(b"half")
    with pytest.raises(RuntimeError):                # the next run fails too: the old folder is back
        submit.restore_folder(FailOn(1), scans, out, show_progress=False)
    assert folder_bytes(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["restored", "test"]
    written = submit.restore_folder(models.Identity(), scans, out, show_progress=False)
    assert [p.name for p in written] == ["s0.png", "s1.png", "s2.png", "s3.png"] == sorted(folder_bytes(out))


def test_restore_refuses_a_folder_with_subfolders_and_names_an_empty_scan_list(tmp_path, scans):
    ws = tmp_path / "workspace"
    (ws / "runs/dncnn").mkdir(parents=True)
    (ws / "manifest.csv").write_text("x")
    with pytest.raises(DataError, match=r"holds folders \(runs\).*nothing was changed"):
        submit.restore_folder(models.Identity(), scans, ws, show_progress=False)
    assert files_under(ws) == ["manifest.csv"] and (ws / "runs/dncnn").is_dir()
    with pytest.raises(DataError, match=f"no scans to restore into {re.escape(str(tmp_path / 'r'))}"):
        submit.restore_folder(models.Identity(), [], tmp_path / "r", show_progress=False)


# ---------------------------------------------------------------- the CSV reader and validator

def write_text(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


HEADER = "Image File,Y Channel Value\n"


def test_the_writer_sorts_and_the_reader_refuses_unsorted_ids_with_the_first_example(tmp_path):
    path = submit.write_submission([("c", 3.0), ("a", 1.0), ("b", 2.0)], tmp_path / "s.csv", ["a", "b", "c"])
    assert [r[0] for r in submit.read_submission(path)] == ["a", "b", "c"]
    write_text(path, HEADER + "a,1.0\nc,3.0\nb,2.0\nd,4.0\n")
    with pytest.raises(ValueError, match=r"not in sorted order \(1 rows out of order; first: row 4 'b' comes "
                                         r"after row 3 'c'\)"):
        submit.read_submission(path)


@pytest.mark.parametrize("value", ["1_0", "1_0.5", "1e1_0"])
def test_numbers_with_underscores_are_refused(tmp_path, value):
    path = write_text(tmp_path / "s.csv", HEADER + f"a,{value}\n")
    with pytest.raises(ValueError, match=rf"s\.csv: .*values not finite numbers .*\(no underscores\): a={value}$"):
        submit.read_submission(path)
    with pytest.raises(ValueError, match="values not finite numbers"):
        submit.validate_submission([("a", value)], ["a"])


def test_a_non_utf8_file_is_refused_by_name_and_a_bom_is_fine(tmp_path):
    path = write_text(tmp_path / "s.csv", HEADER + "Café,1.0\n", "latin-1")
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))} is not UTF-8 text"):
        submit.read_submission(path)
    write_text(path, "\ufeff" + HEADER + "Café,1.0\n")
    assert submit.read_submission(path) == [("Café", 1.0)]


def test_trailing_blank_lines_are_ignored_but_not_blank_lines_inside(tmp_path):
    path = write_text(tmp_path / "s.csv", HEADER + "a,1.0\nb,2.0\n\n")
    assert submit.read_submission(path, ["a", "b"]) == [("a", 1.0), ("b", 2.0)]
    write_text(path, HEADER + "a,1.0\r\nb,2.0\r\n\r\n  \r\n")
    assert submit.read_submission(path, ["a", "b"]) == [("a", 1.0), ("b", 2.0)]
    write_text(path, HEADER + "a,1.0\n\nb,2.0\n")
    with pytest.raises(ValueError, match=r"row 3 has 0 fields, expected 2 \(a blank line inside the file\)"):
        submit.read_submission(path)


# ---------------------------------------------------------------- 05 keeps to the kind of its data

def save_run(workspace, run, score, data_kind):
    return checkpoints.save_checkpoint(tiny_best(score, data_kind), checkpoints.best_path(workspace, run))


def test_choose_checkpoint_keeps_to_the_kind_of_data(tmp_path):
    save_run(tmp_path, "demo_run", 1.0, "demo")  # the better score, but on the demo data
    real = save_run(tmp_path, "real_run", 5.0, "real")
    chosen = checkpoints.choose_checkpoint(tmp_path, None, data_kind="real")
    assert chosen["path"] == real and "trained on real data" in chosen["reason"]
    assert checkpoints.choose_checkpoint(tmp_path, "")["run"] == "demo_run"  # without a kind: all of them
    assert [e["run"] for e in checkpoints.find_checkpoints(tmp_path, data_kind="demo")] == ["demo_run"]
    # an explicit choice wins over the kind
    assert checkpoints.choose_checkpoint(tmp_path, "demo_run", data_kind="real")["run"] == "demo_run"


def test_choose_checkpoint_stops_when_no_checkpoint_has_the_kind_of_data(tmp_path):
    save_run(tmp_path, "dncnn", 1.0, "demo")
    save_run(tmp_path, "attention", 2.0, "demo")
    with pytest.raises(CheckpointError, match=r"no checkpoint under .* was trained on real data.*found: "
                                              r"dncnn \(demo data\), attention \(demo data\).*DESCAN_CHECKPOINT"):
        checkpoints.choose_checkpoint(tmp_path, None, data_kind="real")


# ---------------------------------------------------------------- settings refused by name

@pytest.mark.parametrize("setting, message", [
    ("batch_size=abc", "batch_size='abc': must be an integer"),
    ("epochs=1_0", "epochs='1_0': must be an integer"),
    ("epochs=1.5", "epochs='1.5': must be an integer"),
    ("lr=nan", "bad training settings: lr=nan: must be from 1e-08 to 1.0"),
    ("lr=inf", "bad training settings: lr=inf: must be from 1e-08 to 1.0"),
    ("colour_jitter=1.5", "bad training settings: colour_jitter=1.5: must be from 0.0 to 1.0"),
    ("budget_minutes=-1", "bad training settings: budget_minutes=-1.0: must be at least 0.0"),
    ("patch=7", "bad training settings: patch=7: must be at least 8"),
    ("batch_size=12", "bad training settings: batch_size=12 must be a multiple of crops_per_image=8"),
    ("amp=fp8", "bad training settings: amp='fp8': use one of auto, bf16, fp16, off"),
    ("augment=maybe", "augment='maybe': use one of True, False"),
    ("loss=huber", "'loss=huber' is not a setting: write key=value, the key one of epochs, "),
    ("lr", "'lr' is not a setting: write key=value"),
])
def test_a_bad_setting_names_the_key_the_value_and_what_is_allowed(setting, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        recipes.parse_overrides([setting], recipes.TrainConfig())


def test_good_settings_pass():
    cfg = recipes.parse_overrides(["lr=3e-4", "epochs=20", "amp=off", "compile=true", "augment=0"],
                                  recipes.TrainConfig())
    assert (cfg.lr, cfg.epochs, cfg.amp, cfg.compile, cfg.augment) == (3e-4, 20, "off", True, False)


NUMERIC = [f.name for f in dataclasses.fields(recipes.TrainConfig) if type(f.default) in (int, float)]


@pytest.mark.parametrize("key", NUMERIC)
def test_every_numeric_setting_has_a_range_and_refuses_bad_values_by_name(key):
    integer = type(getattr(recipes.TrainConfig(), key)) is int
    for raw in ["abc", "nan", "inf", "-5", *(["1_0", "2.5"] if integer else [])]:
        with pytest.raises(ValueError, match=rf"(^|: |; ){key}="):
            recipes.parse_overrides([f"{key}={raw}"], recipes.TrainConfig())


def test_the_budget_variable_is_refused_by_name(monkeypatch):
    for raw in ("-1", "abc", "nan"):
        monkeypatch.setenv("DESCAN_TRAIN_MINUTES", raw)
        with pytest.raises(ValueError, match=rf"^DESCAN_TRAIN_MINUTES='{raw}' is not a number of minutes"):
            recipes.with_env(recipes.TrainConfig())


@pytest.mark.parametrize("settings, words", [
    (["patch=7", "epochs=0", "batch_size=12", "budget_minutes=-1"],
     ["patch=7", "epochs=0", "batch_size=12 must be a multiple", "budget_minutes=-1.0"]),
    (["batch_size=abc"], ["batch_size='abc': must be an integer"]),
    (["width=2"], ["'width=2' is not a setting"]),  # a model argument: notebook 03's model cell
])
def test_bad_settings_on_the_command_line_stop_the_run_before_it_starts(tmp_path, settings, words):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DESCAN")}
    r = subprocess.run([sys.executable, "-m", "descan", "train", "--recipe", "dncnn", *settings,
                        "--data", str(tmp_path / "data"), "--workspace", str(tmp_path / "ws")],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 1 and r.stderr.startswith("error: "), r.stdout[-2000:] + r.stderr[-2000:]
    assert all(w in r.stderr for w in words) and "Traceback" not in r.stderr, r.stderr
    assert files_under(tmp_path) == []  # no data fetched, no run folder


def test_a_split_of_one_source_page_is_refused_by_name(tmp_path):
    from descan import data
    c, s = pair_dirs(tmp_path / "d/train", ["Mag.00001.01.png", "Mag.00001.02.png"],
                     ["Mag.00001.01.png", "Mag.00001.02.png"])
    c.rename(tmp_path / "d/train/clean"), s.rename(tmp_path / "d/train/scan")
    for fraction in (0.1, 0.9):  # 0.9 would put the only page in validation, 0.1 in training
        with pytest.raises(DataError, match=r"from 1 source page \(Mag\.00001\).*val_fraction.*two pages"):
            data.make_manifest(tmp_path / "d", val_fraction=fraction)


# ---------------------------------------------------------------- claims that deliberate bugs slipped past

SIZES = dict(epochs=3, crops_per_epoch=16, batch_size=8, patch=32, crops_per_image=4, workers=0,
             checkpoint_minutes=0.0)


def tiny_run(**kw):
    """Notebook 03's recipe (smoke mode, CPU) at toy sizes, with a tiny DnCNN."""
    return notebook_run("dncnn", model_kwargs=TINY, **{**SIZES, **kw})


def test_best_pt_is_the_best_validation_score_not_the_lowest_training_loss(demo_pairs, tmp_path, monkeypatch):
    """As in a smoke run once reported: the last epoch has the lowest training loss but a worse
    validation score than epoch 2; best.pt must hold epoch 2's weights and score."""
    train, val = demo_pairs
    scores = iter([9.0, 6.0, 5.48, 6.85])  # step 0 (the starting point), then three epochs
    losses, snapshots = iter([0.09] * 2 + [0.058] * 2 + [0.029] * 2), []
    t = engine.Trainer(tiny_run(), train, val, tmp_path, "cpu")
    real_step = t.train_step

    def step(*a):
        real_step(*a)
        return torch.tensor(next(losses))

    def validate(model=None):
        if model is not None:  # the do-nothing figures, before training
            return {"score": 99.0, "pixel_y_mae": 1.0, "psnr": 30.0}
        snapshots.append({k: v.clone() for k, v in t.model.state_dict().items()})
        return {"score": next(scores), "pixel_y_mae": 1.0, "psnr": 30.0}
    monkeypatch.setattr(t, "train_step", step)
    monkeypatch.setattr(t, "validate", validate)
    t.fit()
    assert [round(r["train_loss"], 3) for r in t.history[1:]] == [0.09, 0.058, 0.029]  # after step 0
    best = checkpoints.load_checkpoint(tmp_path / "best.pt", kind="best")
    assert best["val"]["score"] == 5.48 and best["epoch"] == 2
    for k, v in snapshots[2].items():
        assert torch.equal(best["model"][k], v), k
    assert not torch.equal(best["model"]["body.0.weight"], snapshots[3]["body.0.weight"])


def test_restored_pixels_above_1_are_clamped_not_wrapped():
    """A trained model puts pixels at 255.5 and above; uint8 would wrap them to 0 (and mean Y by 2-3)."""
    batch = torch.tensor([-0.5, -0.001, 0.0, 0.5, 1.0, 1.0019, 1.002, 1.5, 7.0]).reshape(1, 1, 1, 9).repeat(1, 3, 1, 1)
    out = inference.tensor_to_images(batch)[0][0, :, 0]
    assert out.tolist() == [0, 0, 0, 128, 255, 255, 255, 255, 255]
    assert out.tolist() == helpers.to_uint8(batch[0, 0, 0].numpy()).tolist()

    class Brighter(torch.nn.Module):
        def forward(self, x):
            return x * 1.2 + 0.01
    img = uniform((250, 240, 10), 6, 6)
    restored = inference.restore(Brighter(), [img])[0]
    assert restored[..., 0].min() == 255 and restored[..., 1].min() == 255  # saturated, never wrapped to 0
    assert helpers.mean_y(restored) > helpers.mean_y(img)


def test_pairs_are_made_by_name_not_by_sorted_position(tmp_path):
    """Sorted by file name, p.png/p.q.png and p.q.tif/p.tif are in opposite orders: pairing by
    position (with the names checked as sets) would pair p with p.q.tif."""
    c, s = pair_dirs(tmp_path, ["p.png", "p.q.png"], ["p.q.tif", "p.tif"])
    assert sorted(x.name for x in c.iterdir()) == ["p.png", "p.q.png"]
    assert sorted(x.name for x in s.iterdir()) == ["p.q.tif", "p.tif"]
    pairs = helpers.pair_files(c, s)
    assert [(p.name, p.clean.name, p.scan.name) for p in pairs] == [("p", "p.png", "p.tif"),
                                                                    ("p.q", "p.q.png", "p.q.tif")]


class Crash(Exception):
    pass


def crash_at(n):
    def on_step(step):
        if step == n:
            raise Crash()
    return on_step


def scramble_rngs(seed=12345):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def test_resume_restores_the_global_rng_states(demo_pairs, tmp_path):
    train, val = demo_pairs
    with pytest.raises(Crash):
        engine.Trainer(tiny_run(), train, val, tmp_path, "cpu").fit(on_step=crash_at(3))
    saved = checkpoints.load_checkpoint(tmp_path / "last.pt", kind="last")["rng"]
    t = engine.Trainer(tiny_run(), train, val, tmp_path, "cpu")
    scramble_rngs()
    assert t.resume()
    assert torch.equal(torch.get_rng_state(), saved["torch"])
    assert np.array_equal(np.random.get_state()[1], saved["numpy"][1].numpy().astype(np.uint32))
    random_now = random.getstate()
    assert random_now[1] == tuple(saved["python"][1])


def test_why_resuming_needs_no_rng_state_every_crop_has_its_own_seed(demo_pairs, tmp_path, monkeypatch):
    """The RNG states in last.pt matter only to code that draws from the global generators. The
    crops are seeded by (seed, epoch, index) and nothing else draws, so a run resumed with
    scrambled global generators and *without* restoring them ends with bit-identical weights."""
    train, val = demo_pairs
    full = engine.Trainer(tiny_run(), train, val, tmp_path / "full", "cpu")
    full.fit()
    with pytest.raises(Crash):
        engine.Trainer(tiny_run(), train, val, tmp_path / "cut", "cpu").fit(on_step=crash_at(3))
    monkeypatch.setattr(optim, "set_rng_state", lambda state: None)
    resumed = engine.Trainer(tiny_run(), train, val, tmp_path / "cut", "cpu")
    scramble_rngs()
    resumed.fit()
    assert resumed.step == full.step == 6
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k


# ---------------------------------------------------------------- the drill, fast part

def test_the_fault_drill_quick_mode_finds_nothing_silent_or_lost():
    env = {k: v for k, v in os.environ.items() if not k.startswith("DESCAN")}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks/fault_drill.py"), "--quick"], capture_output=True,
                       text=True, cwd=ROOT, env=env, timeout=300)
    last = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    m = re.fullmatch(r"(\d+) cases: (\d+) clear, 0 silent, 0 traceback, 0 lost", last)
    assert m and m.group(1) == m.group(2) and int(m.group(1)) >= 30, r.stdout[-4000:] + r.stderr[-3000:]
    assert r.returncode == 0



# ---------------------------------------------------------------- divergence is an error

def test_a_loss_that_is_not_finite_stops_training_before_anything_of_it_is_saved(demo_pairs, tmp_path,
                                                                                  monkeypatch):
    """From step 2 on the weights and the loss turn to nan, as a far too high lr makes them: the
    run stops with what happened and what to do, and last.pt and best.pt keep epoch 1's finite
    weights (without the check, epoch 2's end saves the nan weights and the run ends with exit 0)."""
    train, val = demo_pairs
    t = engine.Trainer(tiny_run(), train, val, tmp_path, "cpu")
    real_step = t.train_step

    def step(*a):
        loss = real_step(*a)
        if t.step >= 2:
            with torch.no_grad():
                next(t.model.parameters()).fill_(float("nan"))
            return loss * float("nan")
        return loss
    monkeypatch.setattr(t, "train_step", step)
    with pytest.raises(DataError, match=r"training diverged: the loss is nan by step \d+\. .*lr=.*amp="):
        t.fit()
    for name in (checkpoints.LAST, checkpoints.BEST):
        state = checkpoints.load_checkpoint(tmp_path / name)
        assert state["epoch"] <= 1 and checkpoints.unknown_model(state, name) is None, name
    assert [row["step"] for row in t.history] == [0, 2]  # the start and epoch 1, both finite


def test_a_checkpoint_with_weights_that_are_not_finite_is_never_submitted(tmp_path):
    good, bad = tiny_best(score=2.0), tiny_best(score=1.0)  # the broken one records the better score
    next(iter(bad["model"].values())).fill_(float("nan"))
    checkpoints.save_checkpoint(good, checkpoints.best_path(tmp_path, "good"))
    checkpoints.save_checkpoint(bad, checkpoints.best_path(tmp_path, "diverged"))
    found = {e["run"]: e["error"] for e in checkpoints.find_checkpoints(tmp_path)}
    assert found["good"] is None and "not finite (nan or inf): its training diverged" in found["diverged"]
    assert checkpoints.choose_checkpoint(tmp_path)["run"] == "good"
    with pytest.raises(CheckpointError, match="not finite"):
        checkpoints.model_from_checkpoint(checkpoints.best_path(tmp_path, "diverged"))


class Constant(torch.nn.Module):
    """A model whose output does not depend on its input, as after a collapse."""
    def __init__(self):
        super().__init__()
        self.level = torch.nn.Parameter(torch.full((1, 3, 1, 1), 0.4))

    def forward(self, x):
        return self.level.expand_as(x).clone()


def test_a_model_whose_output_is_constant_writes_no_csv(tmp_path, scans):
    restored, csv = tmp_path / "restored", tmp_path / "submission.csv"
    submit.restore_folder(models.Identity(), scans, restored, show_progress=False)
    submit.make_submission(restored, scans, csv)
    before = csv.read_bytes()
    submit.restore_folder(Constant(), scans, restored, show_progress=False)
    with pytest.raises(DataError, match=r"the same mean Y.*does not depend on its input.*No CSV"):
        submit.make_submission(restored, scans, csv)
    assert csv.read_bytes() == before
    assert submit.score_restored(restored, tmp_path / "test/scan")["images"] == 4  # still scored


def test_a_manifest_without_validation_rows_is_named_with_what_to_do(tmp_path):
    from descan import data
    names = ["Mag.00001.01.png", "Mag.00002.01.png", "Mag.00003.01.png"]
    folder = pair_dirs(tmp_path / "data/train", names, names)[0].parents[1]
    manifest = data.make_manifest(folder)
    manifest["split"] = "train"  # e.g. edited by hand, or val_fraction too small for the pages
    data.write_manifest(manifest, tmp_path / "ws")
    with pytest.raises(DataError, match=r"manifest.csv has 3 training and 0 validation rows.*notebook 01"):
        data.load_split(folder, tmp_path / "ws")


def test_a_file_where_a_folder_belongs_is_named(tmp_path, monkeypatch):
    from descan import data
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    with pytest.raises(DataError, match=r"data folder \(DESCAN_DATA\) .*notes.txt is a file"):
        data.ensure_data(a_file, tmp_path / "ws")
    with pytest.raises(DataError, match=r"workspace \(DESCAN_WORKSPACE\) .*notes.txt is a file"):
        data.ensure_data(tmp_path / "data", a_file)
    monkeypatch.setenv("DESCAN_WORKSPACE", str(a_file))
    with pytest.raises(DataError, match=r"workspace .*notes.txt is a file; DESCAN_WORKSPACE"):
        helpers.workspace_dir()
    (tmp_path / "submission.csv").mkdir()
    with pytest.raises(IsADirectoryError, match=r"submission.csv is a folder.*Move the folder aside"):
        submit.write_submission([("a", 1.0)], tmp_path / "submission.csv", ["a"])
    assert (tmp_path / "submission.csv").is_dir() and a_file.read_text() == "x"


def test_a_test_list_that_cannot_be_read_is_named(tmp_path, monkeypatch):
    from descan import data
    monkeypatch.setenv("DESCAN_ZIP_CACHE", str(tmp_path / "no zips"))
    imwrite_rgb(tmp_path / "data/test/scan/a.png", np.zeros((4, 4, 3), np.uint8))
    assert [p.stem for p in data.test_scans(tmp_path / "data", tmp_path / "ws")] == ["a"]
    (tmp_path / "ws" / data.TEST_LIST).write_text('{"data": "/cut sh')
    with pytest.raises(DataError, match=r"test_scans.json cannot be read.*Delete it"):
        data.test_scans(tmp_path / "data", tmp_path / "ws")


def test_an_empty_test_folder_is_refused_and_its_scans_taken_once_put_there(tmp_path, monkeypatch):
    from descan import data
    monkeypatch.setenv("DESCAN_ZIP_CACHE", str(tmp_path / "no zips"))
    (tmp_path / "data/test/scan").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no test scans in .*test/scan"):
        data.test_scans(tmp_path / "data", tmp_path / "ws")
    imwrite_rgb(tmp_path / "data/test/scan/a.png", np.zeros((4, 4, 3), np.uint8))
    assert [p.stem for p in data.test_scans(tmp_path / "data", tmp_path / "ws")] == ["a"]


@pytest.mark.parametrize("text", ['{"fingerprint": "cut sh', '["not", "a record"]'])
def test_a_data_check_record_cut_short_is_made_again(tmp_path, monkeypatch, text):
    """data_check.json only saves time: cut short (or not a record), the check runs again."""
    from descan import data
    monkeypatch.setenv("DESCAN_ZIP_CACHE", str(tmp_path / "no zips"))
    for name in ("train/clean/a.png", "train/scan/a.png", "test/scan/t.png"):
        imwrite_rgb(tmp_path / "data" / name, np.zeros((4, 4, 3), np.uint8))
    first = data.check_dataset(tmp_path / "data", tmp_path / "ws", show_progress=False)
    (tmp_path / "ws/data_check.json").write_text(text)
    again = data.check_dataset(tmp_path / "data", tmp_path / "ws", show_progress=False)
    assert again["train_pairs"] == first["train_pairs"] == 1 and again["test_scans"] == 1
    assert json.loads((tmp_path / "ws/data_check.json").read_text())["summary"] == again


def test_the_command_line_says_disk_full_without_a_traceback(tmp_path, monkeypatch, capsys):
    from descan import cli, download

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, f"disk full: could not write {tmp_path / 'x.png'}. 0.0 MB are free")

    monkeypatch.setattr(download, "make_demo_dataset", full)
    assert cli.main(["download", "--demo", str(tmp_path / "demo")]) == 1
    assert "error: [Errno 28] disk full: could not write" in capsys.readouterr().err
    monkeypatch.setattr(download, "make_demo_dataset", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        cli.main(["download", "--demo", str(tmp_path / "demo2")])


def test_a_full_disk_says_the_space_it_needed_and_the_space_free(tmp_path):
    target = tmp_path / "best.pt"
    with pytest.raises(OSError, match=r"disk full: could not write .*best\.pt\. It needs more than the "
                                      r"2\.9 MB it had written; [\d,.]+ MB are free there"):
        with files.atomic_path(target) as tmp:
            tmp.write_bytes(b"x" * 3_000_000)
            raise OSError(errno.ENOSPC, "No space left on device")
    assert files_under(tmp_path) == []  # the partial file is gone
